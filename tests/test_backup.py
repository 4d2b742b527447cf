"""Epoch backups: written whole, the two newest kept, a damaged one skipped on restore."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.errors import UserError
from trainer import backup


def _net(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    net.compile(optimizer="adam", loss="mse")
    return net


def _fit(net: keras.Model, epochs: int, callbacks) -> None:
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    net.fit(x, x[:, :2], epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks)


def _weights(net):
    return [w.copy() for w in net.get_weights()]


class Snapshot(keras.callbacks.Callback):
    """Keeps the weights after every epoch."""

    def __init__(self):
        super().__init__()
        self.after = {}

    def on_epoch_end(self, epoch, logs=None):
        self.after[epoch + 1] = _weights(self.model)


def _trained(directory: str, epochs: int = 4) -> Snapshot:
    snapshot = Snapshot()
    _fit(_net(1), epochs, [snapshot, backup.EpochBackup(directory, delete_at_end=False)])
    return snapshot


def test_keeps_the_two_newest_whole_backups(tmp_path):
    _trained(str(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "epoch-0003.weights.h5", "epoch-0004.weights.h5"]


def test_restore_loads_the_newest_with_its_optimizer_state(tmp_path):
    snapshot = _trained(str(tmp_path / "ck"))
    net = _net(2)
    assert backup.EpochBackup(str(tmp_path / "ck")).restore(net) == 4
    for got, want in zip(net.get_weights(), snapshot.after[4]):
        np.testing.assert_array_equal(got, want)
    assert int(net.optimizer.iterations.numpy()) == 4 * 4  # 32 examples in batches of 8


# h5py reports a file cut short as OSError, and one whose header is written but whose body
# is not (what a kill mid-write left on CI) as RuntimeError.
DAMAGE = {
    "empty": lambda data: b"",
    "cut at 1000 bytes": lambda data: data[:1000],
    "cut at 6000 bytes": lambda data: data[:6000],
    "body after 2048 bytes unwritten": lambda data: data[:2048] + bytes(len(data) - 2048),
    "bytes 1000-3000 unwritten": lambda data: data[:1000] + bytes(2000) + data[3000:],
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_backup_falls_back_to_the_one_before(tmp_path, capsys, damage):
    snapshot = _trained(str(tmp_path / "ck"))
    newest = tmp_path / "ck" / "epoch-0004.weights.h5"
    newest.write_bytes(damage(newest.read_bytes()))
    net = _net(2)
    assert backup.EpochBackup(str(tmp_path / "ck")).restore(net) == 3
    for got, want in zip(net.get_weights(), snapshot.after[3]):
        np.testing.assert_array_equal(got, want)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: {newest}: unreadable backup (")


def test_no_readable_backup_is_a_user_error(tmp_path):
    _trained(str(tmp_path / "ck"))
    for path in (tmp_path / "ck").iterdir():
        path.write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="no backup in it can be read"):
        backup.EpochBackup(str(tmp_path / "ck")).restore(_net(2))


def test_no_backup_means_a_fresh_start(tmp_path):
    assert backup.EpochBackup(str(tmp_path / "none")).restore(_net(2)) is None


def test_backups_go_through_gfile_and_go_at_the_end(tmp_path):
    directory = "ram://backup_test/ck"
    snapshot = Snapshot()
    _fit(_net(1), 2, [snapshot, backup.EpochBackup(directory, delete_at_end=False)])
    assert sorted(tf.io.gfile.listdir(directory)) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5"]
    net = _net(2)
    assert backup.EpochBackup(directory).restore(net) == 2
    for got, want in zip(net.get_weights(), snapshot.after[2]):
        np.testing.assert_array_equal(got, want)
    _fit(_net(1), 1, [backup.EpochBackup(directory)])
    # Its files go; the folder stays, as this backup did not create it.
    assert not tf.io.gfile.exists(directory) or tf.io.gfile.listdir(directory) == []


def test_training_end_removes_only_the_backups_own_files(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "epoch-12.weights.h5.bak").write_text("not a backup name")
    _fit(_net(1), 2, [backup.EpochBackup(str(folder), {"run": 1})])
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-12.weights.h5.bak", "notes.txt", "sub"]
    created = tmp_path / "made"
    _fit(_net(1), 1, [backup.EpochBackup(str(created), {"run": 1})])
    assert not created.exists()  # it made the folder, and removes it once empty
    empty = tmp_path / "empty"
    empty.mkdir()
    _fit(_net(1), 1, [backup.EpochBackup(str(empty), {"run": 1})])
    assert empty.is_dir()  # not its folder: left in place


def test_a_backup_of_another_run_is_refused_naming_what_differs(tmp_path):
    directory = str(tmp_path / "ck")
    _fit(_net(1), 2, [backup.EpochBackup(directory, {"labels": ["a", "b"], "seed": 1},
                                         delete_at_end=False)])
    same = backup.EpochBackup(directory, {"labels": ["a", "b"], "seed": 1})
    same.check_same_run()
    other = backup.EpochBackup(directory, {"labels": ["a", "c"], "seed": 1})
    with pytest.raises(UserError, match=r"another run \(labels differ\); pass --restart"):
        other.check_same_run()
    other.discard()
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())
    other.check_same_run()  # nothing left to resume: a fresh start


def test_backups_without_a_fingerprint_are_refused(tmp_path):
    directory = str(tmp_path / "ck")
    _fit(_net(1), 1, [backup.EpochBackup(directory, delete_at_end=False)])
    with pytest.raises(UserError, match="without a backup.json"):
        backup.EpochBackup(directory, {"seed": 1}).check_same_run()
