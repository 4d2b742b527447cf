"""Streaming LiteRT models: 32 ms of audio per call, the state passed in and out.

`write_stream_models` writes `model_stream.tflite` (float32) and
`model_stream_int8.tflite` (the network int8, the front end float, as
`model_int8.tflite`) beside the other exports. Signature `serving_default`:

    inputs   frame          float32 [1, 512]        the next 32 ms (4 STFT hops)
             tail           float32 [1, 128]        state: the last hop heard
             features       float32 [1, 124, F]     state: the last 124 front-end frames
    outputs  probabilities  float32 [1, labels]     scores of the last second of audio
             next_tail, next_features                the state for the next call

The state holds what the clip model would recompute every call: the STFT and log-mel
(F = 32 mel bands for `kws`, 129 |STFT| bins for `tutorial`) of the 120 frames
already heard, so each call computes 4 new frames. The network runs on the whole
second every call: its 'same'-padded convolutions treat the window's first and last
frames as edges, so their outputs cannot be carried from one window to the next
without changing the model. Each call's probabilities are the clip model's on the last
16000 samples, audio before the start counting as silence: `StreamingModel.reset`
starts from the state after one second of zeros (31 calls of a zero frame), which is
also how to start on a device.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from pipelines import contract
from trainer import litert

FLOAT_FILE = "model_stream.tflite"
INT8_FILE = "model_stream_int8.tflite"
FRAME = "frame"
TAIL = "tail"
FEATURES = "features"
NEXT = "next_"
STREAM_HOPS = 4
FRAME_SAMPLES = STREAM_HOPS * contract.FRAME_STEP  # 512 samples, 32 ms
WARMUP_CALLS = -(-contract.NUM_FRAMES // STREAM_HOPS)  # calls that refill every frame


def stream_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """One streaming step of the serving model, weights frozen (see the module doc)."""
    front, network = litert.split_front_end(model)
    width = contract.NUM_BINS  # features per frame after the front end
    for layer in front:
        width = int(layer.compute_output_shape((1, contract.NUM_FRAMES, width))[-1])

    @tf.function(input_signature=[
        tf.TensorSpec([1, FRAME_SAMPLES], tf.float32, name=FRAME),
        tf.TensorSpec([1, contract.FRAME_STEP], tf.float32, name=TAIL),
        tf.TensorSpec([1, contract.NUM_FRAMES, width], tf.float32, name=FEATURES)])
    def step(frame, tail, features):
        with tf.name_scope(litert.FRONT_END):
            hops = tf.reshape(tf.concat([tail, frame], axis=1),
                              [1, STREAM_HOPS + 1, contract.FRAME_STEP])
            new = litert.apply_front_end(front, litert.hops_magnitude(hops))
            window = tf.concat([features, new], axis=1)[:, STREAM_HOPS:]
        return {litert.OUTPUT: tf.nn.softmax(network(window, training=False), axis=-1),
                NEXT + TAIL: frame[:, -contract.FRAME_STEP:], NEXT + FEATURES: window}

    return litert.frozen(step)


def calibration_inputs(model: keras.Model, clips: np.ndarray) -> list[dict]:
    """Streaming inputs whose step ends exactly on each clip.

    The network then sees each clip's 124 frames, as the clip model's calibration does,
    so both int8 files get the same activation ranges.
    """
    front, _ = litert.split_front_end(model)
    clips = np.asarray(clips, np.float32).reshape(-1, contract.CLIP_SAMPLES)
    hops = clips.reshape(len(clips), litert.BLOCKS, contract.FRAME_STEP)
    features = litert.apply_front_end(front, litert.stft_magnitude(tf.constant(clips))).numpy()
    before = np.concatenate([features[:, :STREAM_HOPS], features[:, :-STREAM_HOPS]], axis=1)
    return [{FRAME: hops[i, -STREAM_HOPS:].reshape(1, -1),
             TAIL: hops[i, -STREAM_HOPS - 1][None], FEATURES: before[i][None]}
            for i in range(len(clips))]


def convert_stream_float(model: keras.Model) -> bytes:
    return litert._converter(stream_function(model)).convert()  # pylint: disable=protected-access


def convert_stream_int8(model: keras.Model, representative_clips: np.ndarray) -> bytes:
    inputs = calibration_inputs(model, representative_clips)
    return litert.quantize(stream_function(model), lambda: iter(inputs))


def write_stream_models(model: keras.Model, export_dir: str,
                        representative_clips: Optional[np.ndarray]) -> dict[str, str]:
    """Writes FLOAT_FILE and (given clips) INT8_FILE into `export_dir`; returns the paths."""
    contents = {"float": convert_stream_float(model)}
    if representative_clips is not None:
        contents["int8"] = convert_stream_int8(model, representative_clips)
    return litert.write_files(export_dir, contents, {"float": FLOAT_FILE, "int8": INT8_FILE})


class StreamingModel:
    """A streaming file in the LiteRT interpreter, its state kept between `step` calls."""

    def __init__(self, path: Optional[str] = None, content: Optional[bytes] = None,
                 num_threads: int = 1):
        self.content, self.interpreter, self._runner = litert.load_interpreter(
            path, content, num_threads)
        details = self._runner.get_input_details()
        self._features_shape = tuple(details[FEATURES]["shape"])
        self.reset()

    def reset(self) -> None:
        """The state after one second of silence."""
        self._state = {TAIL: np.zeros((1, contract.FRAME_STEP), np.float32),
                       FEATURES: np.zeros(self._features_shape, np.float32)}
        silence = np.zeros(FRAME_SAMPLES, np.float32)
        for _ in range(WARMUP_CALLS):
            self.step(silence)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """The next 512 samples -> probabilities of the last second [num_labels]."""
        outputs = self._runner(**{FRAME: np.asarray(frame, np.float32).reshape(1, -1)},
                               **self._state)
        self._state = {TAIL: outputs[NEXT + TAIL], FEATURES: outputs[NEXT + FEATURES]}
        return outputs[litert.OUTPUT][0]
