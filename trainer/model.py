"""Model architectures, by name: `build_model("tutorial", ...)`.

`tutorial` is exactly the CNN of TensorFlow's "Simple audio recognition" tutorial
(1,625,611 parameters for eight labels). `kws` is the log-mel residual CNN of
`trainer.kws_model`, the default. Every model takes the stored STFT magnitude,
float32 [batch, 124, 129], and returns logits.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras
import tensorflow as tf
from keras import layers

from pipelines import contract
from trainer import kws_model

TUTORIAL = "tutorial"
KWS = "kws"
# Stem/stage widths of the default `kws` model: the best validation accuracy of the widths
# tried; wider ones matched its test accuracy at 1.28x its latency (README, "Accuracy").
KWS_CHANNELS = (16, 32, 96)
# 32 mel bands and a single convolution as the first stage: the accuracy of 40 bands and a
# residual first stage in 0.72x the single-clip time (0.85x the tutorial model's; README,
# "Accuracy").
KWS_MEL_BINS = 32
KWS_FIRST_STAGE = "conv"


def build_tutorial(num_labels: int, train_spectrograms: Optional[tf.data.Dataset] = None,
                   **_) -> keras.Model:
    """The tutorial's CNN; its Normalization layer is adapted on `train_spectrograms`.

    Args:
      num_labels: number of output classes.
      train_spectrograms: dataset of [batch, 124, 129] training spectrograms, streamed
        once to adapt the normalisation (mean and variance); None leaves it unadapted
        (for loading weights later).
    """
    norm_layer = layers.Normalization()
    if train_spectrograms is not None:
        norm_layer.adapt(train_spectrograms.map(lambda spectrogram: spectrogram[..., None]))
    return keras.Sequential([
        keras.Input(shape=contract.SPECTROGRAM_SHAPE, name="spectrogram"),
        layers.Reshape(contract.SPECTROGRAM_SHAPE + (1,)),
        layers.Resizing(32, 32),
        norm_layer,
        layers.Conv2D(32, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_labels),
    ], name=TUTORIAL)


def build_kws(num_labels: int, **_) -> keras.Model:
    """The log-mel residual CNN (see `trainer.kws_model.build_kws_model`)."""
    return kws_model.build_kws_model(num_labels, num_mel_bins=KWS_MEL_BINS,
                                     channels=KWS_CHANNELS, first_stage=KWS_FIRST_STAGE,
                                     name=KWS)


BUILDERS: dict[str, Callable[..., keras.Model]] = {TUTORIAL: build_tutorial, KWS: build_kws}


def build_model(name: str, num_labels: int, **options) -> keras.Model:
    """Builds the architecture `name` (see BUILDERS) with `num_labels` logits."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](num_labels, **options)
