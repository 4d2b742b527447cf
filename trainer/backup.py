"""Epoch backups that a killed training run resumes from (local or gs://).

Each finished epoch is written whole to `partial.weights.h5` (model and optimizer state)
and only then renamed to `epoch-NNNN.weights.h5`, so a kill at any moment leaves every
named backup complete; the two newest are kept. On restart the newest backup that loads
wins: one that does not (cut short or damaged some other way) gets a line saying so and
the one before is tried.

Keras' own BackupAndRestore writes its backup in place and falls back to its second copy
only on OSError; a file cut short at some lengths opens and then fails with h5py's
RuntimeError, which left such a run unable to resume.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

import keras
import tensorflow as tf

from pipelines.errors import UserError

PARTIAL = "partial.weights.h5"
_NAME = re.compile(r"epoch-(\d+)\.weights\.h5$")
KEEP = 2


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


class EpochBackup(keras.callbacks.Callback):
    """Writes a backup after every epoch; `restore` loads the newest readable one."""

    def __init__(self, directory: str, delete_at_end: bool = True):
        super().__init__()
        self.directory = directory.rstrip("/")
        self.delete_at_end = delete_at_end

    def epochs(self) -> list[int]:
        """The finished-epoch counts backed up in the directory, newest first."""
        if not tf.io.gfile.isdir(self.directory):
            return []
        found = (_NAME.fullmatch(name) for name in tf.io.gfile.listdir(self.directory))
        return sorted((int(match.group(1)) for match in found if match), reverse=True)

    def restore(self, model: keras.Model) -> Optional[int]:
        """Loads the newest readable backup into `model`; returns its epoch count or None."""
        epochs = self.epochs()
        if not epochs:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for epoch in epochs:
            path = f"{self.directory}/{_name(epoch)}"
            try:
                model.load_weights(path)
                return epoch
            except Exception as error:  # h5py raises OSError, RuntimeError, KeyError ...
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                print(f"warning: {path}: unreadable backup ({reason}); "
                      "trying the one before", file=sys.stderr)
        raise UserError(f"{self.directory}: no backup in it can be read; remove the folder "
                        "to train from the start")

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.directory)
        partial = f"{self.directory}/{PARTIAL}"
        self.model.save_weights(partial, overwrite=True)
        tf.io.gfile.rename(partial, f"{self.directory}/{_name(epoch + 1)}", overwrite=True)
        for old in self.epochs()[KEEP:]:
            tf.io.gfile.remove(f"{self.directory}/{_name(old)}")

    def on_train_end(self, logs=None):
        if self.delete_at_end and tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)
