"""`tutorial`: the CNN of TensorFlow's "Simple audio recognition" tutorial, and its recipe.

Exactly the notebook's network (1,625,611 parameters for eight labels) and training
(Adam, 10 epochs, early stopping with patience 2), so `--model tutorial` reproduces it.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf
from keras import layers

from pipelines import contract
from trainer.models.recipe import Recipe

NAME = "tutorial"


def build(num_labels: int, train_spectrograms: Optional[tf.data.Dataset] = None,
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
    ], name=NAME)


RECIPE = Recipe(epochs=10, batch_size=64, learning_rate=1e-3, patience=2)
