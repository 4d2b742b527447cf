"""`kws`: a small residual CNN on log-mel features, the default model, and its recipe.

The model reads the stored STFT magnitude, float32 [batch, 124, 129] (the tutorial
model's input), so the exported raw-audio signature works unchanged. Inside it:

    LogMel (mel matrix + log) -> BatchNorm per mel band -> SpecMask (training only)
    -> 3x3 conv stem (stride 2) -> first stage (one convolution, or a residual block
    with `first_stage="residual"`) -> 2 residual stages -> global average pool -> Dense

`RECIPE` trains it on augmented audio (speed, shift, background noise, microphone
response, frequency warp; SpecAugment masks inside the model) with AdamW, warm-up and
cosine decay, label smoothing and a moving average of the weights; its batch
normalisation is folded into the convolutions for export. How the settings were chosen:
docs/experiments.md.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pipelines import contract
from trainer import augment, export
from trainer.models.recipe import Recipe

NAME = "kws"

_PACKAGE = "kws"  # registered names ("kws>LogMel") that saved models refer to
FIRST_STAGES = ("residual", "conv")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LogMel(keras.layers.Layer):
    """|STFT| [batch, frames, bins] -> log mel-band magnitude [batch, frames, mel_bins]."""

    def __init__(self, num_mel_bins: int, lower_hz: float = 20.0,
                 upper_hz: float = 7_600.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_mel_bins = num_mel_bins
        self.lower_hz = lower_hz
        self.upper_hz = upper_hz
        self.epsilon = epsilon
        # A constant, not a weight: it is fully determined by the config above.
        self._mel = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins, contract.NUM_BINS, contract.SAMPLE_RATE, lower_hz, upper_hz)

    def call(self, magnitude):
        mel = tf.tensordot(tf.cast(magnitude, tf.float32), self._mel, axes=1)
        return tf.math.log(mel + self.epsilon)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_mel_bins,)

    def get_config(self):
        return {**super().get_config(), "num_mel_bins": self.num_mel_bins,
                "lower_hz": self.lower_hz, "upper_hz": self.upper_hz,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpecMask(keras.layers.Layer):
    """Training-only SpecAugment on [batch, frames, bands] features (identity at inference).

    Bands are filled with 0, the mean of the normalised features, so a mask removes
    information without adding an out-of-range value.
    """

    def __init__(self, time_masks: int, max_time_mask: int, freq_masks: int,
                 max_freq_mask: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.time_masks = time_masks
        self.max_time_mask = max_time_mask
        self.freq_masks = freq_masks
        self.max_freq_mask = max_freq_mask
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        seed = keras.random.randint([2], 0, 2**30, seed=self._seed_generator)
        return augment.spec_augment(inputs, tf.cast(seed, tf.int64), self.time_masks,
                                    self.max_time_mask, self.freq_masks,
                                    self.max_freq_mask)

    def get_config(self):
        return {**super().get_config(), "time_masks": self.time_masks,
                "max_time_mask": self.max_time_mask, "freq_masks": self.freq_masks,
                "max_freq_mask": self.max_freq_mask, "seed": self.seed}


def _residual_block(x, channels: int, stride: int, name: str):
    """Two 3x3 convolutions (BN, ReLU) plus a shortcut; 1x1 projection when shapes change."""
    shortcut = x
    y = keras.layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False,
                            name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                            name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != channels:
        shortcut = keras.layers.Conv2D(channels, 1, strides=stride, use_bias=False,
                                       name=f"{name}_proj")(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    merged = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(merged)


# Time and mel-band masks of `SpecMask`: frames of 8 ms, bands of the 32-band front end.
SPEC_MASK = {"time_masks": 2, "max_time_mask": 12, "freq_masks": 2, "max_freq_mask": 6}


def build(num_labels: int, num_mel_bins: int = 32, channels: tuple[int, ...] = (16, 32, 96),
          dropout: float = 0.2, spec_mask: dict | None = None,
          stem_strides: tuple[int, int] = (2, 2), first_stage: str = "conv",
          name: str = NAME, **_) -> keras.Model:
    """Builds the log-mel residual CNN (uncompiled, logits output).

    Plain 3x3 convolutions rather than depthwise-separable ones: on CPU TensorFlow the
    depthwise backward pass is several times slower per step, and 2-D convolutions share
    weights across frequency, which generalises better to unseen speakers than 1-D
    convolutions over time with mel bands as channels.

    Args:
      num_labels: number of classes.
      num_mel_bins: mel bands of the front end.
      channels: channels of the stem and first stage, then of each further stage; every
        stage after the first halves time and frequency resolution.
      dropout: dropout before the classifier.
      spec_mask: keyword arguments of `SpecMask` (training-only masking); None for
        `SPEC_MASK`, {"time_masks": 0, "freq_masks": 0, ...} to disable it.
      stem_strides: (time, frequency) strides of the stem; every later layer works on
        that many times fewer positions, which sets most of the model's cost.
      first_stage: "residual" (two convolutions and a shortcut) or "conv" (one
        convolution, BN, ReLU). The first stage works at the stem's full resolution,
        where each convolution costs as much single-clip time as a whole later stage.
      name: model name.

    Returns:
      A `keras.Model` from float32 [batch, 124, 129] |STFT| to [batch, num_labels] logits.
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, not {first_stage!r}")
    inputs = keras.Input(shape=contract.SPECTROGRAM_SHAPE, name="spectrogram")
    x = LogMel(num_mel_bins, name="log_mel")(inputs)
    # Learned per-band normalisation: the log-mel scale differs a lot between bands.
    x = keras.layers.BatchNormalization(name="mel_norm")(x)
    x = SpecMask(**{**SPEC_MASK, **(spec_mask or {})}, name="spec_mask")(x)
    x = keras.layers.Reshape((contract.NUM_FRAMES, num_mel_bins, 1), name="add_channel")(x)
    x = keras.layers.Conv2D(channels[0], 3, strides=stem_strides, padding="same",
                            use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for index, width in enumerate(channels):
        if index == 0 and first_stage == "conv":
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name="stage1_conv")(x)
            x = keras.layers.BatchNormalization(name="stage1_bn")(x)
            x = keras.layers.ReLU(name="stage1_relu")(x)
        else:
            x = _residual_block(x, width, 1 if index == 0 else 2, f"stage{index + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def serving_model(net: keras.Model) -> keras.Model:
    """The export copy: batch normalisation folded into the convolutions."""
    return export.fold_batch_norm(net)


RECIPE = Recipe(
    epochs=150, batch_size=64, learning_rate=3e-3, optimizer="adamw", warmup_epochs=3,
    weight_decay=0.05, label_smoothing=0.1, ema_decay=0.99, whole_batches=True,
    augmentation=augment.Augmentation(
        max_speed_change=0.1, max_shift=1_600, noise_share=0.8, snr_db_range=(5.0, 25.0),
        filter_share=0.5, lowpass_hz=(1_000.0, 8_000.0), highpass_hz=(50.0, 400.0),
        warp_share=0.5, max_warp=0.1),
    serving=serving_model)
