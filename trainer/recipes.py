"""Training recipes: what each architecture is trained with.

A recipe owns the optimiser, schedule, loss, augmentation and callbacks of one model,
so `trainer.task` stays the same for every architecture and `--model tutorial`
reproduces the tutorial exactly (Adam, sparse cross-entropy on logits, 10 epochs,
EarlyStopping with patience 2). `--model kws`, the default, trains the log-mel
residual CNN on augmented audio (speed, shift, background noise, microphone
response, frequency warp, SpecAugment masks) with AdamW, warm-up and cosine decay, label smoothing and
a moving average of the weights, and exports it with its batch normalisation folded
into the convolutions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Optional

import keras
import tensorflow as tf

from trainer import augment, data, kws_model, model as models

DEFAULT_MODEL = models.KWS


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The tutorial's recipe; subclasses change what they need."""
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 2
    needs_waveforms: bool = False

    def with_overrides(self, **overrides) -> "Recipe":
        return dataclasses.replace(
            self, **{key: value for key, value in overrides.items() if value is not None})

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimiser steps per epoch (the training dataset repeats endlessly)."""
        return max(1, math.ceil(num_examples / self.batch_size))

    def train_dataset(self, files: list[str], args: argparse.Namespace) -> tf.data.Dataset:
        """Endless shuffled training batches; `steps_per_epoch` of them make an epoch."""
        return data.make_dataset(files, self.batch_size, True, seed=args.seed,
                                 shuffle_buffer=args.shuffle_buffer, repeat=True)

    def compile(self, net: keras.Model, train_size: int) -> None:
        net.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [keras.callbacks.EarlyStopping(verbose=1, patience=self.patience)]

    def finalize(self, net: keras.Model) -> None:
        """Called after fit (e.g. to swap in averaged weights)."""

    def serving_model(self, net: keras.Model) -> keras.Model:
        """The model to export: `net` itself, or an inference-only equivalent."""
        return net

    def settings(self) -> dict:
        return {"recipe": type(self).__name__, **dataclasses.asdict(self)}


_KWS = kws_model.Recipe()


@dataclasses.dataclass(frozen=True)
class KwsRecipe(Recipe):
    """Augmented audio, AdamW with warm-up and cosine decay, label smoothing, EMA.

    No early stopping: the schedule is as long as the run. The defaults are those of
    `kws_model.Recipe` (how they were chosen: README, "Accuracy").
    """
    epochs: int = _KWS.epochs
    batch_size: int = _KWS.batch_size
    learning_rate: float = _KWS.peak_learning_rate  # reached after the warm-up
    patience: int = 0
    needs_waveforms: bool = True
    warmup_epochs: int = _KWS.warmup_epochs
    weight_decay: float = _KWS.weight_decay
    label_smoothing: float = _KWS.label_smoothing
    ema_decay: float = _KWS.ema_decay

    def steps_per_epoch(self, num_examples: int) -> int:
        return max(1, num_examples // self.batch_size)

    def train_dataset(self, files: list[str], args: argparse.Namespace) -> tf.data.Dataset:
        waveforms = data.make_dataset(files, self.batch_size, True, seed=args.seed,
                                      waveform=True, shuffle_buffer=args.shuffle_buffer,
                                      repeat=True)
        bank = background_bank(args.data_dir)
        augmented = augment.augment_dataset(waveforms, bank, seed=args.seed)
        return augmented.prefetch(tf.data.AUTOTUNE)

    def compile(self, net: keras.Model, train_size: int) -> None:
        kws_model.compile_with_recipe(net, kws_model.training_recipe(
            epochs=self.epochs, batch_size=self.batch_size,
            peak_learning_rate=self.learning_rate, warmup_epochs=self.warmup_epochs,
            weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
            ema_decay=self.ema_decay), self.steps_per_epoch(train_size))

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [kws_model.WeightAverage(self.ema_decay)] if self.ema_decay else []

    def serving_model(self, net: keras.Model) -> keras.Model:
        return kws_model.fold_batch_norm(net)


def background_bank(data_dir: str) -> Optional[augment.NoiseBank]:
    """The run's background-noise recordings, or None (with a note) when it has none."""
    try:
        return augment.load_background(data_dir)
    except ValueError:
        print(f"note: {data_dir} holds no background-noise recordings (preprocess a folder "
              "with _background_noise_/ to add them); training without noise mixing")
        return None


RECIPES: dict[str, Recipe] = {models.TUTORIAL: Recipe(), models.KWS: KwsRecipe()}


def names() -> list[str]:
    return sorted(RECIPES)


def get(name: str) -> Recipe:
    return RECIPES[name]


def register(name: str, recipe: Recipe, builder: Optional[object] = None) -> None:
    RECIPES[name] = recipe
    if builder is not None:
        models.BUILDERS[name] = builder
