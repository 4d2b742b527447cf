"""Streaming LiteRT models: 32 ms of audio per call, the state passed in and out.

`model_stream.tflite` (float32) and `model_stream_int8.tflite` (the network int8, the
front end float, as `model_int8.tflite`). Signature `serving_default`:

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
16000 samples, audio before the start counting as silence: `runtime.StreamingModel.reset`
starts from the state after one second of zeros (31 calls of a zero frame), which is
also how to start on a device.
"""

from __future__ import annotations

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract  # noqa: E402
from trainer.litert import convert  # noqa: E402
from trainer.litert.flatbuffer import FRONT_END  # noqa: E402
from trainer.litert.runtime import FEATURES, FRAME, NEXT, OUTPUT, STREAM_HOPS, TAIL  # noqa: E402


def stream_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """One streaming step of the serving model, weights frozen (see the module doc)."""
    front, network = convert.split_front_end(model)
    width = contract.NUM_BINS  # features per frame after the front end
    for layer in front:
        width = int(layer.compute_output_shape((1, contract.NUM_FRAMES, width))[-1])

    @tf.function(input_signature=[
        tf.TensorSpec([1, STREAM_HOPS * contract.FRAME_STEP], tf.float32, name=FRAME),
        tf.TensorSpec([1, contract.FRAME_STEP], tf.float32, name=TAIL),
        tf.TensorSpec([1, contract.NUM_FRAMES, width], tf.float32, name=FEATURES)])
    def step(frame, tail, features):
        with tf.name_scope(FRONT_END):
            hops = tf.reshape(tf.concat([tail, frame], axis=1),
                              [1, STREAM_HOPS + 1, contract.FRAME_STEP])
            new = convert.apply_front_end(front, convert.hops_magnitude(hops))
            window = tf.concat([features, new], axis=1)[:, STREAM_HOPS:]
        return {OUTPUT: tf.nn.softmax(network(window, training=False), axis=-1),
                NEXT + TAIL: frame[:, -contract.FRAME_STEP:], NEXT + FEATURES: window}

    return convert.frozen(step)


def calibration_inputs(model: keras.Model, clips: np.ndarray) -> list[dict]:
    """Streaming inputs whose step ends exactly on each clip.

    The network then sees each clip's 124 frames, as the clip model's calibration does,
    so both int8 files get the same activation ranges.
    """
    front, _ = convert.split_front_end(model)
    clips = np.asarray(clips, np.float32).reshape(-1, contract.CLIP_SAMPLES)
    hops = clips.reshape(len(clips), convert.BLOCKS, contract.FRAME_STEP)
    features = convert.apply_front_end(
        front, convert.stft_magnitude(tf.constant(clips))).numpy()
    before = np.concatenate([features[:, :STREAM_HOPS], features[:, :-STREAM_HOPS]], axis=1)
    return [{FRAME: hops[i, -STREAM_HOPS:].reshape(1, -1),
             TAIL: hops[i, -STREAM_HOPS - 1][None], FEATURES: before[i][None]}
            for i in range(len(clips))]


def convert_stream_float(model: keras.Model) -> bytes:
    return convert.converter(stream_function(model)).convert()


def convert_stream_int8(model: keras.Model, representative_clips: np.ndarray) -> bytes:
    inputs = calibration_inputs(model, representative_clips)
    return convert.quantize(stream_function(model), lambda: iter(inputs))
