"""Converting a job's serving model to LiteRT: the front end in LiteRT ops, freezing,
float32 and full-integer (int8) conversion.

The clip models take one clip of raw 16 kHz mono float32 audio, input `waveform`
[1, 16000], and return `probabilities` [1, labels] (`trainer.litert.runtime`). They are
converted with TensorFlow's converter from a concrete function of the serving model on
[1, 16000] (never from the XLA-compiled export signature).

The int8 model is post-training full-integer quantisation (int8 weights and
activations, int32 biases), calibrated on a representative sample of training clips.
The STFT and log-mel front end stays float32 inside the same file: the FFT has no
integer kernel, and the |STFT| and mel energies span six orders of magnitude, which 8
bits cannot hold before the log (`front_end="int8"` quantises every op that has an
integer kernel, for comparison; benchmarks/litert.py measures both).
"""

from __future__ import annotations

import warnings

from pipelines.errors import import_tensorflow_quietly, quiet_stderr

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import convert_to_constants  # noqa: E402

from pipelines import contract  # noqa: E402
from trainer.litert.flatbuffer import FRONT_END, float_nodes  # noqa: E402
from trainer.litert.runtime import INPUT, OUTPUT  # noqa: E402
from trainer.models import kws  # noqa: E402

FRONT_END_MODES = ("float", "int8")
# Layers that belong to the front end when they come first in the model: the log
# compresses the mel energies into a range that int8 holds.
FRONT_END_LAYERS = (kws.LogMel,)
CALIBRATION_CLIPS = 300

BLOCKS = contract.CLIP_SAMPLES // contract.FRAME_STEP  # 125 hops of 128 samples
# Frame i is hop i followed by the first 127 samples of hop i + 1; padded to the FFT
# length with one zero, that is hops i and i + 1 with the last window weight 0.
assert contract.CLIP_SAMPLES % contract.FRAME_STEP == 0
assert contract.FRAME_STEP < contract.FRAME_LENGTH <= 2 * contract.FRAME_STEP
assert contract.FFT_LENGTH == 2 * contract.FRAME_STEP
assert BLOCKS - 1 == contract.NUM_FRAMES


def hops_magnitude(hops: tf.Tensor) -> tf.Tensor:
    """[batch, n + 1, 128] consecutive hops -> [batch, n, 129] |STFT| of the n frames."""
    frames = tf.concat([hops[:, :-1], hops[:, 1:]], axis=-1)
    window = tf.concat([tf.signal.hann_window(contract.FRAME_LENGTH),
                        tf.zeros([contract.FFT_LENGTH - contract.FRAME_LENGTH])], axis=0)
    return tf.abs(tf.signal.rfft(frames * window, [contract.FFT_LENGTH]))


def stft_magnitude(clips: tf.Tensor) -> tf.Tensor:
    """[batch, 16000] float32 -> [batch, 124, 129] |STFT|, as `features.stft_magnitude`.

    Frames are built from reshaped hops rather than by `tf.signal.frame`, whose
    gather indices would add a 124 x 255 int32 constant (126 KB) to the file.
    """
    return hops_magnitude(tf.reshape(clips, [-1, BLOCKS, contract.FRAME_STEP]))


def split_front_end(model: keras.Model) -> tuple[list[keras.layers.Layer], keras.Model]:
    """The model's leading front-end layers (FRONT_END_LAYERS) and the network after them."""
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    front = []
    for layer in layers:
        if not isinstance(layer, FRONT_END_LAYERS):
            break
        front.append(layer)
    if not front:
        return [], model
    return front, keras.Model(front[-1].output, model.output, name=f"{model.name}_network")


def frozen(function: tf.types.experimental.PolymorphicFunction
           ) -> tf.types.experimental.ConcreteFunction:
    """`function` (one input signature, a dict out) with its weights made constants."""
    concrete = function.get_concrete_function()
    names = sorted(concrete.structured_outputs)
    constant = convert_to_constants.convert_variables_to_constants_v2(concrete)

    # Freezing drops the outputs' names (it returns them in sorted order); calling the
    # frozen function again restores them.
    @tf.function(input_signature=function.input_signature)
    def named(*inputs):
        return dict(zip(names, constant(*inputs)))

    return named.get_concrete_function()


def apply_front_end(front: list[keras.layers.Layer], magnitude: tf.Tensor) -> tf.Tensor:
    for layer in front:
        magnitude = layer(magnitude)
    return magnitude


def clip_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """The serving model on one clip, weights frozen into constants.

    The STFT and any front-end layers run under the name scope FRONT_END, which is how
    the int8 conversion finds the ops to keep float.
    """
    front, network = split_front_end(model)

    @tf.function(input_signature=[tf.TensorSpec([1, contract.CLIP_SAMPLES], tf.float32,
                                                name=INPUT)])
    def probabilities(waveform):
        with tf.name_scope(FRONT_END):
            features = apply_front_end(front, stft_magnitude(waveform))
        return {OUTPUT: tf.nn.softmax(network(features, training=False), axis=-1)}

    return frozen(probabilities)


def converter(function) -> tf.lite.TFLiteConverter:
    """TensorFlow's converter for a frozen concrete function."""
    # The empty module selects the converter's current path (signatures with names).
    return tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())


def convert_float(model: keras.Model) -> bytes:
    """The float32 LiteRT flatbuffer of the serving model."""
    return converter(clip_function(model)).convert()


def convert_int8(model: keras.Model, representative_clips: np.ndarray,
                 front_end: str = "float") -> bytes:
    """The full-integer LiteRT flatbuffer, calibrated on `representative_clips`.

    Args:
      model: the serving model (|STFT| in, logits out).
      representative_clips: float32 [n, 16000] training clips for calibration.
      front_end: "float" keeps the ops under FRONT_END float32; "int8" quantises
        every op with an integer kernel (the FFT and its magnitude stay float anyway).

    Returns:
      The flatbuffer: float32 input and output, int8 in between (see `op_types`).
    """
    clips = np.asarray(representative_clips, np.float32).reshape(-1, contract.CLIP_SAMPLES)
    if not len(clips):
        raise ValueError("no representative clips to calibrate on")
    return quantize(clip_function(model), lambda: ({INPUT: clip[None, :]} for clip in clips),
                    front_end)


def quantize(function: tf.types.experimental.ConcreteFunction, representative_inputs,
             front_end: str = "float") -> bytes:
    """Full-integer conversion of a frozen function (see `convert_int8`).

    Args:
      function: from `frozen`.
      representative_inputs: a callable returning an iterable of {input name: array}.
      front_end: "float" or "int8", as in `convert_int8`.
    """
    if front_end not in FRONT_END_MODES:
        raise ValueError(f"front_end must be one of {FRONT_END_MODES}, not {front_end!r}")
    lite = converter(function)
    lite.optimizations = [tf.lite.Optimize.DEFAULT]
    lite.representative_dataset = representative_inputs
    # Integer kernels where they exist, float ones for the rest (RFFT2D, COMPLEX_ABS).
    lite.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                      tf.lite.OpsSet.TFLITE_BUILTINS]
    # Calibration runs TensorFlow's own (deprecated) interpreter inside the converter,
    # which warns, and prints a line per quantised op on stderr.
    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")
        if front_end == "int8":
            return lite.convert()
        # Selective quantisation through the converter's public debugging API: the
        # debugger calibrates, then quantises every op but the denylisted ones.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=lite, debug_dataset=representative_inputs)
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(debugger.calibrated_model))
        return debugger.get_nondebug_quantized_model()


def representative_sample(dataset: tf.data.Dataset, count: int = CALIBRATION_CLIPS
                          ) -> np.ndarray:
    """The first `count` waveforms of a (waveform, label) batch dataset, float32 [n, 16000]."""
    clips = []
    for waveforms, _ in dataset:
        clips.extend(waveforms.numpy().reshape(-1, contract.CLIP_SAMPLES))
        if len(clips) >= count:
            break
    return np.stack(clips[:count]).astype(np.float32)
