"""Training recipes: what each architecture is trained with.

A recipe owns the optimiser, schedule, loss, augmentation and callbacks of one model,
so `trainer.task` stays the same for every architecture and `--model tutorial`
reproduces the tutorial exactly (Adam, sparse cross-entropy on logits, 10 epochs,
EarlyStopping with patience 2).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from trainer import data, model as models

DEFAULT_MODEL = models.TUTORIAL


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

    def train_dataset(self, files: list[str], args: argparse.Namespace,
                      num_examples: int) -> tf.data.Dataset:
        return data.make_dataset(files, self.batch_size, True, seed=args.seed,
                                 shuffle_buffer=args.shuffle_buffer,
                                 num_examples=num_examples)

    def compile(self, net: keras.Model, train_size: int) -> None:
        net.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [keras.callbacks.EarlyStopping(verbose=1, patience=self.patience)]

    def finalize(self, net: keras.Model) -> None:
        """Called after fit (e.g. to swap in averaged weights)."""

    def settings(self) -> dict:
        return {"recipe": type(self).__name__, **dataclasses.asdict(self)}


RECIPES: dict[str, Recipe] = {models.TUTORIAL: Recipe()}


def names() -> list[str]:
    return sorted(RECIPES)


def get(name: str) -> Recipe:
    return RECIPES[name]


def register(name: str, recipe: Recipe, builder: Optional[object] = None) -> None:
    RECIPES[name] = recipe
    if builder is not None:
        models.BUILDERS[name] = builder
