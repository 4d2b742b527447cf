"""How a folder of recordings maps to examples: labels, speakers and splits.

Plain functions on path strings, shared by the pipeline, its launcher and the tests.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from typing import Iterable, NamedTuple, Optional, Sequence, Union

from pipelines import contract
from pipelines.audio import EXTENSIONS as AUDIO_EXTENSIONS

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
NOT_AUDIO_REASON = f"not an audio file ({', '.join(AUDIO_EXTENSIONS)})"
SPLIT_SPEAKER = "speaker"
SPLIT_RANDOM = "random"

# The keyword-spotting setting of TensorFlow's speech_commands `prepare_data_index()`:
# every word that is not wanted becomes `_unknown_`, and `_silence_` clips are cut from
# the background noise. Both sort before lower-case words, so they get indices 0 and 1.
UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"
UNKNOWN_NOT_SAMPLED = "unknown word not sampled"


class Entry(NamedTuple):
    """What to do with one listed file: a label to use, or a reason to skip it."""
    label: Optional[str]
    skip_reason: Optional[str]


DataDirs = Union[str, Sequence[str]]


def _parts(path: str, data_dir: DataDirs) -> list[str]:
    roots = (data_dir,) if isinstance(data_dir, str) else tuple(data_dir)
    relative = posixpath.basename(path)
    for root in roots:
        root = root.rstrip("/") + "/"
        if path.startswith(root):
            relative = path[len(root):]
            break
    return [part for part in relative.replace("\\", "/").split("/") if part]


def classify(path: str, data_dir: DataDirs, wanted: Optional[Iterable[str]] = None,
             unknown: bool = False) -> Entry:
    """Decides whether a file under `data_dir` is a labelled clip.

    Args:
      path: the file's path (local or gs://), under `data_dir`.
      data_dir: the data folder, or several; labels are their immediate sub-folders (a
        label may have a folder in more than one).
      wanted: if given, the only labels to keep (folders starting with `_` included).
      unknown: label the clips of every other word folder (not starting with `_`) and
        of a `_unknown_` folder as UNKNOWN_LABEL instead of skipping them.

    Returns:
      Entry(label, None) for a clip to use, Entry(None, reason) for a file to skip.
    """
    parts = _parts(path, data_dir)
    if len(parts) != 2:
        return Entry(None, "not in a label folder")
    folder, name = parts
    if not name.lower().endswith(AUDIO_EXTENSIONS):
        return Entry(None, NOT_AUDIO_REASON)
    if folder == contract.BACKGROUND_NOISE_DIR:
        return Entry(None, BACKGROUND_REASON)
    if unknown and folder == UNKNOWN_LABEL:
        return Entry(UNKNOWN_LABEL, None)
    if unknown and wanted is not None and folder not in set(wanted) and not folder.startswith("_"):
        return Entry(UNKNOWN_LABEL, None)
    if wanted is not None:
        if folder not in set(wanted):
            return Entry(None, "label not selected")
    elif folder.startswith("_"):
        return Entry(None, "folder starting with _ is not a label")
    return Entry(folder, None)


def label_folders(paths: Iterable[str], data_dir: DataDirs,
                  wanted: Optional[Iterable[str]] = None, unknown: bool = False) -> list[str]:
    """The sorted labels that have at least one clip among `paths`."""
    labels = {classify(path, data_dir, wanted, unknown).label for path in paths}
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
        while stem.lower().endswith(AUDIO_EXTENSIONS):
            stem = stem.rsplit(".", 1)[0]
        return stem
    prefix = _NOHASH.sub("", name)
    last = prefix.rsplit("_", 1)[-1]
    return last if _SPEAKER_ID.match(last) else prefix


def word_of(path: str) -> str:
    """The word a clip says, from its path: the folder it is in, or, for a clip filed
    under a folder of other words (`_unknown_/backward_0a7c2a8d_nohash_2.wav`, and
    `pipelines.synthesize`'s `<word>_<voice>_nohash_tts.wav`), the part of its name
    before the speaker. A name without a word in it gives the folder's name."""
    parts = path.replace("\\", "/").rstrip("/").split("/")
    folder, name = (parts[-2] if len(parts) > 1 else ""), parts[-1]
    if not folder.startswith("_") or "_nohash_" not in name:
        return folder
    prefix = _NOHASH.sub("", name)
    word, _, last = prefix.rpartition("_")
    return word if word and _SPEAKER_ID.match(last) else folder


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


# --- the keyword-spotting setting: `_unknown_` and `_silence_` -------------------------

def share(count: int, percent: float) -> int:
    """How many `_unknown_` or `_silence_` examples go with `count` wanted-word examples.

    TensorFlow's `prepare_data_index()`: ceil(count * percent / 100), per split. The
    rounding keeps float noise (1000 * 1.1 / 100 = 11.000000000000002) from adding one.
    """
    return int(math.ceil(round(count * percent / 100.0, 9)))


def _unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for a key."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) / 2.0**160


def sampling_rank(path: str, seed: int) -> int:
    """The rank that decides which unknown-word clips are sampled (lowest first).

    Keyed, like `split_for_file`, by the label folder and file name only, so the same
    data set gives the same sample wherever it is stored.
    """
    parts = path.replace("\\", "/").rstrip("/").split("/")
    key = f"unknown/{seed}/{'/'.join(parts[-2:])}"
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)


def sample_threshold(ranks: Iterable[int], wanted_count: int, percent: float) -> int:
    """The highest rank to keep so that `share(wanted_count, percent)` clips are sampled.

    Args:
      ranks: `sampling_rank` of every unknown-word clip of one split.
      wanted_count: wanted-word examples of that split.
      percent: --unknown-percent.

    Returns:
      Keep a clip when its rank is <= this; -1 keeps none. Takes every clip when there
      are fewer than asked for.
    """
    ordered = sorted(ranks)
    count = min(share(wanted_count, percent), len(ordered))
    return ordered[count - 1] if count else -1


def split_bounds(num_samples: int, split: str, val_percent: float = 10.0,
                 test_percent: float = 10.0) -> tuple[int, int]:
    """The samples [start, end) of a noise recording reserved for one split.

    Train takes the first (100 - val - test)%, val the next val%, test the last test%,
    so no stretch of noise is in two splits.
    """
    val_start = int(round(num_samples * (100.0 - val_percent - test_percent) / 100.0))
    test_start = int(round(num_samples * (100.0 - test_percent) / 100.0))
    return {contract.TRAIN: (0, val_start), contract.VAL: (val_start, test_start),
            contract.TEST: (test_start, num_samples)}[split]


class Crop(NamedTuple):
    """One `_silence_` clip: samples [start, start + length) of a recording, times gain."""
    start: int
    length: int
    gain: float


def silence_crops(recording: int, num_recordings: int, num_samples: int, split: str,
                  count: int, val_percent: float = 10.0, test_percent: float = 10.0,
                  seed: int = 42) -> list[Crop]:
    """The `_silence_` clips one noise recording gives to one split.

    The split's `count` clips are dealt to the recordings in turn (clip i to recording
    i % num_recordings). Each starts at a pseudo-random point of the recording's part
    for that split (`split_bounds`) and is scaled by a pseudo-random gain in [0, 1], as
    TensorFlow's silence is background noise at a random volume. Both are hashes of
    (seed, split, i): the same flags always give the same clips.

    Args:
      recording: index of this recording among the sorted recordings.
      num_recordings: how many recordings there are.
      num_samples: the recording's length at 16 kHz.
      split: train, val or test.
      count: `_silence_` clips wanted in that split, from all recordings together.
      val_percent, test_percent: the split percentages, which also divide the recording.
      seed: --seed.

    Returns:
      The crops; one shorter than a clip (a part of a very short recording) is zero-padded
      by the featurisation.
    """
    start, end = split_bounds(num_samples, split, val_percent, test_percent)
    room = max(end - start - contract.CLIP_SAMPLES, 0)
    crops = []
    for i in range(recording, count, num_recordings):
        key = f"silence/{seed}/{split}/{i}"
        offset = min(int(_unit(key + "/start") * (room + 1)), room)
        crops.append(Crop(start + offset, min(contract.CLIP_SAMPLES, end - start),
                          round(_unit(key + "/gain"), 4)))
    return crops


def silence_path(recording_path: str, crop: Crop) -> str:
    """The `path` feature of a `_silence_` clip: its recording, start and gain."""
    return f"{recording_path}#start={crop.start},gain={crop.gain:.4f}"
