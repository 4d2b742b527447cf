"""Training-loop pieces the recipes share: loss, schedule, weight average, NaN guard.

`SmoothedSparseCrossEntropy` is registered with Keras, so a saved `model.keras` whose
compile settings use it loads once this module is imported (`import trainer.models`
does that).
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import tensorflow as tf

_PACKAGE = "kws"  # the registered names ("kws>...") that saved models refer to


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SmoothedSparseCrossEntropy(keras.losses.Loss):
    """Cross-entropy from logits against integer labels with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        depth = tf.shape(y_pred)[-1]
        onehot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), depth)
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def warmup_cosine(peak_learning_rate: float, warmup_steps: int,
                  total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to `peak_learning_rate`, then cosine decay to 0."""
    total_steps = max(1, total_steps)
    warmup_steps = min(total_steps - 1, warmup_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total_steps - warmup_steps, alpha=0.0,
        warmup_target=peak_learning_rate, warmup_steps=warmup_steps)


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of all float weights (BN statistics included).

    The average is swapped in for every validation pass (so `val_*` metrics, and any
    early stopping on them, judge the averaged model) and written into the model when
    training ends. Checkpoints saved by other callbacks at epoch end hold the raw
    weights; save the model after `fit` to keep the average.
    """

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self._average = None
        self._saved = None
        self._steps = None
        self._update = None

    def _variables(self):
        return [v for v in self.model.weights if v.dtype == "float32"]

    def on_train_begin(self, logs=None):
        variables = self._variables()
        self._average = [tf.Variable(v.value, trainable=False) for v in variables]
        self._steps = tf.Variable(0.0, trainable=False)
        self._update = tf.function(self._update_average)

    def _update_average(self):
        self._steps.assign_add(1.0)
        # Warm-up (as in tf.train.ExponentialMovingAverage's num_updates): early on the
        # average follows the weights closely, so it never mixes in the random init.
        decay = tf.minimum(self.decay, (1.0 + self._steps) / (10.0 + self._steps))
        for average, variable in zip(self._average, self._variables()):
            average.assign(decay * average + (1.0 - decay) * variable.value)

    def on_train_batch_end(self, batch, logs=None):
        self._update()

    def _swap_in(self):
        variables = self._variables()
        self._saved = [v.numpy() for v in variables]
        for average, variable in zip(self._average, variables):
            variable.assign(average.numpy())

    def on_test_begin(self, logs=None):
        if self._average is not None and self._saved is None:
            self._swap_in()

    def on_test_end(self, logs=None):
        if self._saved is not None:
            for saved, variable in zip(self._saved, self._variables()):
                variable.assign(saved)
            self._saved = None

    def on_train_end(self, logs=None):
        self.on_test_end()
        for average, variable in zip(self._average, self._variables()):
            variable.assign(average.numpy())
        self._average = None


class StopOnNaN(keras.callbacks.Callback):
    """Stops training when the loss is NaN or infinite and remembers the epoch."""

    def __init__(self):
        super().__init__()
        self.bad_epoch: Optional[int] = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_epoch = self.bad_epoch if self.bad_epoch is not None else -1
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_epoch == -1:
            self.bad_epoch = epoch + 1
