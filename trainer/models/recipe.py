"""`Recipe`: how an architecture is trained, the one type every model's module fills in.

A recipe owns the optimiser, schedule, loss, regularisation, augmentation and epochs of
one architecture, so `trainer.task` is the same for every model. The tutorial's recipe
(Adam, cross-entropy on logits, 10 epochs, early stopping with patience 2) and the `kws`
recipe (AdamW with warm-up and cosine decay, label smoothing, a moving average of the
weights, augmented audio) are two values of it; the hooks below are methods so a test
or a new architecture can change one step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import keras
import tensorflow as tf

from pipelines.contract import SAMPLE_RATE
from pipelines.events import NON_KEYWORDS
from trainer import augment, data, training
from trainer.settings import RunSettings

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training settings of one architecture.

    Attributes:
      epochs: passes over the training split.
      batch_size: clips per optimiser step.
      learning_rate: the (peak) learning rate.
      optimizer: "adam" (constant rate) or "adamw" (warm-up, then cosine decay to 0).
      warmup_epochs: epochs of linear warm-up ("adamw").
      weight_decay: decoupled weight decay ("adamw").
      label_smoothing: of the cross-entropy targets.
      ema_decay: per-step decay of an exponential moving average of the weights that
        is validated and kept at the end (0: none).
      patience: early stopping on validation loss after this many epochs without
        improvement (0: train every epoch).
      whole_batches: an epoch is the number of whole batches in the split (else
        rounded up).
      augmentation: audio and spectrum augmentation of the training clips (needs a
        run with stored waveforms); None trains on the stored spectrograms.
      negative_weight: weight in the loss of `_unknown_` and `_silence_` examples (the
        keywords weigh 1): how much a false accept costs against a miss.
      serving: turns the trained model into the exported one (None: itself).
    """
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    patience: int = 0
    whole_batches: bool = False
    augmentation: Optional[augment.Augmentation] = None
    negative_weight: float = 1.0
    serving: Optional[Callable[[keras.Model], keras.Model]] = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")

    @property
    def needs_waveforms(self) -> bool:
        return self.augmentation is not None

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with each field given a non-None value replaced."""
        return dataclasses.replace(
            self, **{key: value for key, value in overrides.items() if value is not None})

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimiser steps per epoch (the training dataset repeats endlessly)."""
        batches = (num_examples // self.batch_size if self.whole_batches
                   else math.ceil(num_examples / self.batch_size))
        return max(1, batches)

    def for_run(self, run: RunSettings) -> "Recipe":
        """The recipe with what a run's flags override (epochs, batch size, learning
        rate, weight decay, negative weight, time shift)."""
        recipe = self.with_overrides(
            epochs=run.epochs, batch_size=run.batch_size, learning_rate=run.learning_rate,
            weight_decay=run.weight_decay,
            negative_weight=None if run.negative_weight == 1.0 else run.negative_weight)
        if run.max_shift_ms is not None and recipe.augmentation is not None:
            recipe = dataclasses.replace(recipe, augmentation=dataclasses.replace(
                recipe.augmentation, max_shift=int(run.max_shift_ms * SAMPLE_RATE / 1000)))
        return recipe

    def train_dataset(self, files: list[str], settings: RunSettings, labels: list[str],
                      extra_files: tuple[str, ...] = (), extra_share: float = 0.0,
                      relabel=None) -> tf.data.Dataset:
        """Endless shuffled (spectrogram, label[, weight]) batches; `steps_per_epoch` make
        an epoch.

        Args:
          files: the training shards.
          settings: the run (seed, shuffle buffer, data folder for background noise).
          labels: the run's labels (which ones are negatives, for `negative_weight`).
          extra_files: shards of further examples in the same format (mined ones), a
            share `extra_share` of every batch drawn from them.
          relabel: (label, path) batches -> class batch (`trainer.words`); classes past
            the labels are other words, negatives for `negative_weight`.
        """
        extra = min(self.batch_size - 1, round(self.batch_size * extra_share)) \
            if extra_files else 0
        waveform = self.augmentation is not None

        def batches(shards, size, seed):
            return data.make_dataset(list(shards), size, True, seed=seed, waveform=waveform,
                                     shuffle_buffer=settings.shuffle_buffer, repeat=True,
                                     relabel=relabel)

        dataset = batches(files, self.batch_size - extra, settings.seed)
        if extra:
            dataset = tf.data.Dataset.zip((dataset, batches(extra_files, extra,
                                                            settings.seed + 1))).map(
                lambda main, more: (tf.concat([main[0], more[0]], 0),
                                    tf.concat([main[1], more[1]], 0)))
        if waveform:
            dataset = augment.augment_dataset(dataset, data.background_bank(settings.data_dir),
                                              self.augmentation, seed=settings.seed)
        if self.negative_weight != 1.0:
            negatives = tf.constant([i for i, label in enumerate(labels)
                                     if label in NON_KEYWORDS], tf.int64)
            weight = tf.constant(self.negative_weight, tf.float32)

            def weighted(features, label):
                label = tf.cast(label, tf.int64)
                is_negative = tf.reduce_any(tf.equal(label[:, None], negatives[None, :]),
                                            axis=1) | (label >= len(labels))
                return features, label, tf.where(is_negative, weight, 1.0)

            dataset = dataset.map(weighted, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def compile(self, net: keras.Model, train_size: int) -> None:
        if self.optimizer == "adamw":
            steps = self.steps_per_epoch(train_size)
            schedule = training.warmup_cosine(self.learning_rate, self.warmup_epochs * steps,
                                              self.epochs * steps)
            optimizer = keras.optimizers.AdamW(schedule, weight_decay=self.weight_decay)
        else:
            optimizer = keras.optimizers.Adam(self.learning_rate)
        if self.label_smoothing:
            loss = training.SmoothedSparseCrossEntropy(self.label_smoothing)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        net.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

    def callbacks(self) -> list[keras.callbacks.Callback]:
        callbacks = []
        if self.patience:
            callbacks.append(keras.callbacks.EarlyStopping(verbose=1, patience=self.patience))
        if self.ema_decay:
            callbacks.append(training.WeightAverage(self.ema_decay))
        return callbacks

    def finalize(self, net: keras.Model) -> None:
        """Called after fit (the weight average is already swapped in by its callback)."""

    def serving_model(self, net: keras.Model) -> keras.Model:
        """The model to export: `net` itself, or an inference-only equivalent."""
        return self.serving(net) if self.serving else net

    def settings(self) -> dict:
        """The recipe as plain values, for metrics.json."""
        values = dataclasses.asdict(self)
        values["serving"] = getattr(self.serving, "__qualname__", None)
        return values
