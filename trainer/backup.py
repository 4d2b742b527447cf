"""Epoch backups that a killed training run resumes from (local or gs://).

Each finished epoch is written whole to `partial.weights.h5` (model and optimizer state)
and only then renamed to `epoch-NNNN.weights.h5`, so a kill at any moment leaves every
named backup complete; the two newest are kept. On restart the newest backup that loads
wins: one that does not (cut short or damaged some other way) gets a line saying so and
the one before is tried. (Keras' own BackupAndRestore writes in place and falls back to
its second copy only on OSError; a file cut short at some lengths fails with h5py's
RuntimeError instead, and such a run could not resume.)

A resumed run must be the same run: `backup.json` beside the weights holds a fingerprint
of what the run was started with (data, labels, model, recipe, seed), and a backup made
with another one is refused (`--restart` in `trainer.task` discards it instead). The
folder may hold other files: only the backup's own files are ever removed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from typing import Optional

import keras
import tensorflow as tf

from pipelines.errors import UserError

PARTIAL = "partial.weights.h5"
FINGERPRINT = "backup.json"
_NAME = re.compile(r"epoch-(\d+)\.weights\.h5$")
KEEP = 2


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


def digest(fingerprint: dict) -> str:
    """A short stable hash of a JSON-serialisable fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EpochBackup(keras.callbacks.Callback):
    """Writes a backup after every epoch; `restore` loads the newest readable one.

    Args:
      directory: where the backups go (local or gs://); created if missing.
      fingerprint: what makes two runs the same run (None: not checked).
      delete_at_end: remove the backup's files when training ends.
    """

    def __init__(self, directory: str, fingerprint: Optional[dict] = None,
                 delete_at_end: bool = True):
        super().__init__()
        self.directory = directory.rstrip("/")
        self.fingerprint = fingerprint
        self.delete_at_end = delete_at_end
        self._created = not tf.io.gfile.exists(self.directory)

    def _stored_fingerprint(self) -> Optional[dict]:
        path = f"{self.directory}/{FINGERPRINT}"
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path, "r") as handle:
                return json.loads(handle.read())
        except (ValueError, tf.errors.OpError):
            return None

    def check_same_run(self) -> None:
        """Raises UserError when the backups here were made by a different run."""
        if self.fingerprint is None or not self.epochs():
            return
        stored = self._stored_fingerprint()
        if stored is None:
            raise UserError(f"{self.directory}: backups without a {FINGERPRINT} (not made by "
                            "this version or this run); pass --restart to train from the "
                            "start, or another --checkpoint-dir")
        if stored.get("digest") != digest(self.fingerprint):
            before = stored.get("fingerprint", {})
            changed = sorted(key for key in set(before) | set(self.fingerprint)
                             if before.get(key) != self.fingerprint.get(key))
            raise UserError(f"{self.directory}: the backups are of another run ("
                            f"{', '.join(changed) or 'settings'} differ); pass --restart to "
                            "train from the start, or another --checkpoint-dir")

    def own_files(self) -> list[str]:
        """The files of this backup in the directory (and nothing else there)."""
        if not tf.io.gfile.isdir(self.directory):
            return []
        return [f"{self.directory}/{name}" for name in tf.io.gfile.listdir(self.directory)
                if _NAME.fullmatch(name) or name in (PARTIAL, FINGERPRINT)]

    def discard(self) -> None:
        """Removes the backup's own files, and the folder if a run of it made the folder
        and nothing else is in it."""
        stored = self._stored_fingerprint() or {}
        made_folder = self._created or stored.get("made_folder", False)
        for path in self.own_files():
            tf.io.gfile.remove(path)
        if (made_folder and tf.io.gfile.isdir(self.directory)
                and not tf.io.gfile.listdir(self.directory)):
            tf.io.gfile.rmtree(self.directory)

    def _write_fingerprint(self) -> None:
        if self.fingerprint is None:
            return
        path = f"{self.directory}/{FINGERPRINT}"
        with tf.io.gfile.GFile(f"{path}.partial", "w") as handle:
            handle.write(json.dumps({"digest": digest(self.fingerprint),
                                     "fingerprint": self.fingerprint,
                                     "made_folder": self._created},
                                    sort_keys=True, indent=1, default=str))
        tf.io.gfile.rename(f"{path}.partial", path, overwrite=True)

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
        raise UserError(f"{self.directory}: no backup in it can be read; pass --restart "
                        "to train from the start")

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.directory)
        if epoch == 0 or not tf.io.gfile.exists(f"{self.directory}/{FINGERPRINT}"):
            self._write_fingerprint()
        partial = f"{self.directory}/{PARTIAL}"
        self.model.save_weights(partial, overwrite=True)
        tf.io.gfile.rename(partial, f"{self.directory}/{_name(epoch + 1)}", overwrite=True)
        for old in self.epochs()[KEEP:]:
            tf.io.gfile.remove(f"{self.directory}/{_name(old)}")

    def on_train_end(self, logs=None):
        if self.delete_at_end:
            self.discard()
