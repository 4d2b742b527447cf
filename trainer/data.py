"""Streams a preprocessing run's TFRecords through tf.data.

Shards are read interleaved, parsed in parallel a batch at a time, shuffled through a
bounded buffer and prefetched: memory stays flat however large the data set is.
Everything goes through tf.io.gfile, so OUT may be local, gs:// or a /gcs/ mount.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import tensorflow as tf

from pipelines import contract
from pipelines.errors import UserError
from trainer import augment

AUTOTUNE = tf.data.AUTOTUNE


def _read(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as handle:
        return handle.read()


def read_labels(data_dir: str) -> list[str]:
    """The labels of a preprocessing run, in index order."""
    path = f"{data_dir.rstrip('/')}/{contract.LABELS_FILE}"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{data_dir}: not a preprocessing output ({contract.LABELS_FILE} "
                        "missing; run python -m pipelines.preprocess first)")
    labels = contract.parse_labels(_read(path))
    if len(labels) < 2:
        raise UserError(f"{path}: needs at least two labels, found {len(labels)}")
    return labels


def read_metadata(data_dir: str) -> contract.RunMetadata:
    """metadata.json of a preprocessing run; refused when made with other settings."""
    path = f"{data_dir.rstrip('/')}/{contract.METADATA_FILE}"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{data_dir}: {contract.METADATA_FILE} missing (incomplete "
                        "preprocessing run?)")
    try:
        metadata = contract.RunMetadata.from_json(_read(path))
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None
    return metadata


def shard_files(data_dir: str, split: str) -> list[str]:
    """The shards of one split; UserError when there are none."""
    files = sorted(tf.io.gfile.glob(contract.shard_pattern(data_dir, split)))
    if not files:
        raise UserError(f"{data_dir}/{split}: no TFRecord shards")
    return files


def split_size(metadata: contract.RunMetadata, split: str) -> int:
    return metadata.split_total(split)


def _compression(files: list[str]) -> str:
    return "GZIP" if files[0].endswith(contract.GZIP_SUFFIX) else ""


def make_dataset(files: list[str], batch_size: int, shuffle: bool, *,
                 seed: Optional[int] = None, waveform: bool = False,
                 shuffle_buffer: int = 4096, num_examples: Optional[int] = None,
                 keep_features: bool = False, repeat: bool = False,
                 keys: Optional[list[str]] = None, relabel=None) -> tf.data.Dataset:
    """Batches of (spectrogram, label) from TFRecord shards.

    Args:
      files: shard paths (see `shard_files`).
      batch_size: examples per batch.
      shuffle: shuffle shard order and examples (training); off gives a fixed order.
      seed: shuffle seed.
      waveform: yield (waveform, label) instead, for audio-domain augmentation.
      shuffle_buffer: examples held for shuffling (the only data kept in memory).
      num_examples: if known (metadata), declared as the cardinality so progress bars
        know the epoch length.
      keep_features: yield the whole parsed feature dict instead of a pair.
      keys: with `keep_features`, parse only these features.
      relabel: (label batch, path batch) -> label batch (`trainer.words`).
      repeat: pass over the shards endlessly (training with `steps_per_epoch`): the
        shuffle buffer then stays full across epochs instead of being refilled, before
        the first batch, at the start of each one.

    Returns:
      A tf.data.Dataset.
    """
    compression = _compression(files)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE,
        deterministic=not shuffle)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    key = contract.WAVEFORM if waveform else contract.SPECTROGRAM

    def parse(serialized):
        if keep_features:
            return contract.parse_batch(serialized, waveform=waveform, keys=keys)
        if relabel is None:
            parsed = contract.parse_batch(serialized, keys=[key, contract.LABEL])
            return parsed[key], parsed[contract.LABEL]
        parsed = contract.parse_batch(serialized, keys=[key, contract.LABEL, contract.PATH])
        return parsed[key], relabel(parsed[contract.LABEL], parsed[contract.PATH])

    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    if num_examples is not None and not repeat:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            math.ceil(num_examples / batch_size)))
    return dataset.prefetch(AUTOTUNE)


def find_corrupt_shard(files: list[str]) -> Optional[str]:
    """The first shard that fails to read, with the reason (called after a DataLossError)."""
    compression = _compression(files)
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type=compression):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            return f"{path}: corrupt TFRecord shard ({error.message.splitlines()[0]})"
    return None


def guard_corruption(files: list[str], step: Callable[[], object]):
    """Runs `step`; a corrupt record becomes a UserError naming the shard."""
    try:
        return step()
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        where = find_corrupt_shard(files)
        if where is None:
            raise
        raise UserError(where) from None
    except tf.errors.FailedPreconditionError as error:
        # assert_cardinality: the shards hold fewer or more records than declared.
        where = files[0].rsplit("/", 1)[0] if files else "shards"
        raise UserError(f"{where}: the shards changed while being read "
                        f"({error.message.splitlines()[0]})") from None


def load_background(data_dir: str) -> augment.NoiseBank:
    """The background-noise recordings of a preprocessing run, as an `augment.NoiseBank`.

    Args:
      data_dir: the run's output directory (local or gs://).

    Returns:
      A `NoiseBank` of every recording. Raises ValueError when there is none.
    """
    files = tf.io.gfile.glob(contract.background_pattern(data_dir))
    if not files:
        raise ValueError(f"{data_dir}: no background-noise records "
                         f"({contract.background_pattern(data_dir)})")
    records = tf.data.TFRecordDataset(files, compression_type=_compression(files) or None)
    return augment.noise_bank_from_arrays(
        [contract.parse_background(r)[contract.WAVEFORM] for r in records])


def background_bank(data_dir: str) -> Optional[augment.NoiseBank]:
    """The run's background-noise recordings as an `augment.NoiseBank`, or None (with a
    note) when it has none."""
    try:
        return load_background(data_dir)
    except ValueError:
        print(f"note: {data_dir} holds no background-noise recordings (preprocess a folder "
              "with _background_noise_/ to add them); training without noise mixing")
        return None


def count_records(path: str) -> int:
    """Records in one shard; UserError naming it when it is cut short or corrupt."""
    compression = _compression([path])
    try:
        return int(tf.data.TFRecordDataset(path, compression_type=compression).reduce(
            tf.constant(0, tf.int64), lambda count, _: count + 1))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise UserError(f"{path}: corrupt TFRecord shard "
                        f"({error.message.splitlines()[0]})") from None


def check_shards(data_dir: str, metadata, splits) -> dict[str, list[str]]:
    """Checks each split's shards against what metadata.json says the run wrote.

    The shard names and number must be those the run listed (none missing, none added),
    and the records in them must add up to the split's example count. One read of the
    shards; a mismatch is a UserError naming the shard or split.

    Args:
      data_dir: the preprocessing run.
      metadata: its metadata.json (a mapping).
      splits: the splits to check.

    Returns:
      split -> its shard paths, sorted.
    """
    data_dir = data_dir.rstrip("/")
    listed: dict[str, set[str]] = {}
    for path in metadata.get("shards") or ():
        parts = str(path).rstrip("/").split("/")
        if len(parts) >= 2:
            listed.setdefault(parts[-2], set()).add(parts[-1])
    files = {}
    for split in splits:
        found = sorted(tf.io.gfile.glob(contract.shard_pattern(data_dir, split)))
        names = {path.rsplit("/", 1)[-1] for path in found}
        if listed:
            expected = listed.get(split, set())
            for name in sorted(expected - names):
                raise UserError(f"{data_dir}/{split}/{name}: shard missing (metadata.json "
                                "lists it)")
            for name in sorted(names - expected):
                raise UserError(f"{data_dir}/{split}/{name}: shard not written by this run "
                                "(not in metadata.json)")
        if not found:
            raise UserError(f"{data_dir}/{split}: no TFRecord shards")
        records = sum(count_records(path) for path in found)
        declared = split_size(metadata, split)
        if records != declared:
            raise UserError(f"{data_dir}/{split}: {records} records in the shards, "
                            f"metadata.json says {declared} (a shard cut short or replaced)")
        files[split] = found
    return files
