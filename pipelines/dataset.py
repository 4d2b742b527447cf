"""How a folder of recordings maps to examples: labels, speakers and splits.

Plain functions on path strings, shared by the pipeline, its launcher and the tests.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Iterable, NamedTuple, Optional

from pipelines import contract

# As in TensorFlow's speech_commands `which_set()`: the hash is taken modulo this, so a
# file's split depends on its speaker alone and never on how many files there are.
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
# Salt of the speaker hash. With an empty salt the split is exactly TensorFlow's
# `which_set()`, which sends every speaker of Speech Commands' official test list to
# "test"; a salt gives an independent 80/10/10 draw over any set of speakers.
DEFAULT_SPLIT_SALT = "kws-split-v1"
_NOHASH = re.compile(r"_nohash_.*$")
_SPEAKER_ID = re.compile(r"^[0-9a-f]{8}$")

BACKGROUND_REASON = "background noise"
SPLIT_SPEAKER = "speaker"
SPLIT_RANDOM = "random"


class Entry(NamedTuple):
    """What to do with one listed file: a label to use, or a reason to skip it."""
    label: Optional[str]
    skip_reason: Optional[str]


def _parts(path: str, data_dir: str) -> list[str]:
    root = data_dir.rstrip("/") + "/"
    relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return [part for part in relative.replace("\\", "/").split("/") if part]


def classify(path: str, data_dir: str, wanted: Optional[Iterable[str]] = None) -> Entry:
    """Decides whether a file under `data_dir` is a labelled clip.

    Args:
      path: the file's path (local or gs://), under `data_dir`.
      data_dir: the data folder; labels are its immediate sub-folders.
      wanted: if given, the only labels to keep (folders starting with `_` included).

    Returns:
      Entry(label, None) for a clip to use, Entry(None, reason) for a file to skip.
    """
    parts = _parts(path, data_dir)
    if len(parts) != 2:
        return Entry(None, "not in a label folder")
    folder, name = parts
    if not name.lower().endswith(".wav"):
        return Entry(None, "not a .wav file")
    if folder == contract.BACKGROUND_NOISE_DIR:
        return Entry(None, BACKGROUND_REASON)
    if wanted is not None:
        if folder not in set(wanted):
            return Entry(None, "label not selected")
    elif folder.startswith("_"):
        return Entry(None, "folder starting with _ is not a label")
    return Entry(folder, None)


def label_folders(paths: Iterable[str], data_dir: str,
                  wanted: Optional[Iterable[str]] = None) -> list[str]:
    """The sorted labels that have at least one clip among `paths`."""
    labels = {classify(path, data_dir, wanted).label for path in paths}
    labels.discard(None)
    return sorted(labels)


def speaker_id(path: str) -> str:
    """The speaker part of a Speech Commands file name.

    `0a7c2a8d_nohash_0.wav` -> `0a7c2a8d`; names like `backward_0a7c2a8d_nohash_2.wav.wav`
    (other words filed under `_unknown_`) give the trailing speaker id `0a7c2a8d`, so a
    speaker's clips stay together whichever folder they are in. Names without `_nohash_`
    are their own speaker (the whole stem).
    """
    name = posixpath.basename(path.replace("\\", "/"))
    if "_nohash_" not in name:
        stem = name
        while stem.lower().endswith(".wav"):
            stem = stem[:-4]
        return stem
    prefix = _NOHASH.sub("", name)
    last = prefix.rsplit("_", 1)[-1]
    return last if _SPEAKER_ID.match(last) else prefix


def _percentage(key: str) -> float:
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    return (digest % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)


def split_for_key(key: str, val_percent: float, test_percent: float) -> str:
    """Maps a key to train/val/test by a stable hash (TensorFlow's `which_set()`)."""
    percentage = _percentage(key)
    if percentage < val_percent:
        return contract.VAL
    if percentage < val_percent + test_percent:
        return contract.TEST
    return contract.TRAIN


def split_for_speaker(speaker: str, val_percent: float = 10.0, test_percent: float = 10.0,
                      salt: str = DEFAULT_SPLIT_SALT) -> str:
    """The split of every clip of one speaker."""
    return split_for_key(salt + speaker, val_percent, test_percent)


def split_for_file(path: str, seed: int, val_percent: float = 10.0,
                   test_percent: float = 10.0) -> str:
    """A per-file, seeded split like the tutorial's shuffle-then-take (leaks speakers).

    Keyed by the label folder and file name, not the full path, so the same data set
    gives the same split wherever it is stored.
    """
    parts = path.replace("\\", "/").rstrip("/").split("/")
    return split_for_key(f"{seed}/{'/'.join(parts[-2:])}", val_percent, test_percent)
