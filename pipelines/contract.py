"""The data contract between preprocessing and everything that reads its output.

A preprocessing run writes, under its output directory::

    OUT/train/data-SSSSS-of-NNNNN.tfrecord[.gz]   tf.Example records, one per clip
    OUT/val/...    OUT/test/...
    OUT/labels.txt                                 one label per line; line number = index
    OUT/metadata.json                              format version, settings, counts, shards
    OUT/preprocess_run.json                        marks the folder as a run's (written first)
    OUT/rejected/rejected-SSSSS-of-NNNNN.jsonl     {"path": ..., "reason": ...} per bad input
    OUT/background/data-00000-of-00001.tfrecord    the noise recordings, for augmentation

A training job exports its model as JOB/export/saved_model.pb with labels.txt beside
it; `find_export` finds that folder for every command given JOB or JOB/export.

This module owns the feature names, shapes and dtypes, and keeps `serialize_example`
and `parse_example` side by side so the two can never drift apart. It also owns
metadata.json: `RunMetadata` is written and read through the same fields, and
`check_metadata` refuses a run made with other STFT settings. Serialization is
plain Python (no TensorFlow import), so Beam workers start fast; parsing is TensorFlow,
because the trainer reads records through `tf.data`.

The spectrogram is stored as the raw little-endian float32 bytes of the (124, 129)
array: building a `FloatList` of 15,996 values costs milliseconds per example, copying
64 KB of bytes costs microseconds. `parse_example` turns it back into float32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any, Iterator, Optional

import numpy as np

from pipelines import errors

# The version of the record layout and of the settings below. Bump it with any change
# to them; `check_metadata` also compares each setting, so a run made with other values
# is refused even when the version was not bumped.
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)

# Audio and STFT parameters: those of TensorFlow's "Simple audio recognition" tutorial.
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
FRAME_LENGTH = 255
FRAME_STEP = 128
FFT_LENGTH = 256
NUM_FRAMES = 1 + (CLIP_SAMPLES - FRAME_LENGTH) // FRAME_STEP  # 124
NUM_BINS = FFT_LENGTH // 2 + 1  # 129
SPECTROGRAM_SHAPE = (NUM_FRAMES, NUM_BINS)
WINDOW = f"tf.signal.hann_window({FRAME_LENGTH}, periodic=True)"
SPECTROGRAM_ENCODING = "raw little-endian float32 bytes"

# Feature names.
SPECTROGRAM = "spectrogram"
LABEL = "label"
LABEL_NAME = "label_name"
SPEAKER = "speaker"
PATH = "path"
NUM_SAMPLES = "num_samples"
WAVEFORM = "waveform"  # the padded one-second clip; lets the trainer augment in the audio domain

# Splits and file layout.
TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
SHARD_PREFIX = "data"
SHARD_SUFFIX = ".tfrecord"
GZIP_SUFFIX = ".gz"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
MARKER_FILE = "preprocess_run.json"  # written first: marks the folder as a run's
REJECTED_DIR = "rejected"
REJECTED_PREFIX = "rejected"
REJECTED_SUFFIX = ".jsonl"
BACKGROUND_NOISE_DIR = "_background_noise_"  # input folder of long noise recordings
BACKGROUND = "background"  # output folder: one record per noise recording, for augmentation
EXPORT_DIR = "export"  # inside a training job: the SavedModel, labels.txt, LiteRT files
SAVED_MODEL_FILE = "saved_model.pb"
# The exported SavedModel's signatures (trainer.export writes them): raw audio, the
# stored feature and serialized tf.Examples, each returning class_ids, labels and
# probabilities.
SIGNATURE_WAVEFORM = "waveform"
SIGNATURE_SPECTROGRAM = "spectrogram"
SIGNATURE_EXAMPLES = "examples"
SIGNATURES = ("serving_default", SIGNATURE_WAVEFORM, SIGNATURE_SPECTROGRAM,
              SIGNATURE_EXAMPLES)


def shard_pattern(output_dir: str, split: str) -> str:
    """Glob that matches every shard of one split, compressed or not."""
    return f"{output_dir.rstrip('/')}/{split}/{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}*"


def find_export(model_dir: str, name: str = SAVED_MODEL_FILE,
                missing: Optional[str] = None) -> str:
    """The folder holding a job's exported `name`: MODEL_DIR/export or MODEL_DIR itself.

    `model_dir` is local or gs:// (read through Beam's FileSystems, not TensorFlow). The
    folder must hold labels.txt beside `name`. Otherwise raises `errors.UserError`, one
    line naming the path; `missing` is what it says when neither folder holds `name`.
    """
    try:
        return _find_export(model_dir, name, missing)
    except errors.UserError:
        raise
    except Exception as error:  # pylint: disable=broad-except  # each filesystem its own
        raise errors.UserError(f"{model_dir}: cannot read ({errors.first_line(error)})") \
            from None


def _find_export(model_dir: str, name: str, missing: Optional[str]) -> str:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    base = model_dir.rstrip("/")
    for folder in (f"{base}/{EXPORT_DIR}", base):
        if FileSystems.exists(f"{folder}/{name}"):
            if not FileSystems.exists(f"{folder}/{LABELS_FILE}"):
                raise errors.UserError(f"{folder}: {LABELS_FILE} missing beside {name}")
            return folder
    if not (FileSystems.exists(base)  # a gs:// folder is only a prefix of its files
            or FileSystems.match([f"{base}/*"], limits=[1])[0].metadata_list):
        raise errors.UserError(f"{model_dir}: model directory not found")
    raise errors.UserError(f"{model_dir}: " + (missing or (
        f"no exported model here (expected {EXPORT_DIR}/{SAVED_MODEL_FILE} from "
        "python -m trainer.task)")))


def read_export_labels(export_dir: str) -> list[str]:
    """The labels.txt of an export folder (local or gs://), in output order."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    path = f"{export_dir.rstrip('/')}/{LABELS_FILE}"
    try:
        with FileSystems.open(path) as handle:
            return parse_labels(handle.read().decode("utf-8"))
    except (IOError, OSError, UnicodeDecodeError) as error:
        raise errors.UserError(f"{path}: cannot read ({errors.first_line(error)})") from None


# --- serialization (plain Python, no TensorFlow) -----------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 fields are encoded as two's complement uint64
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    # Feature.bytes_list (1) -> BytesList.value (1)
    return _field(1, _field(1, value))


def _int64_feature(value: int) -> bytes:
    # Feature.int64_list (3) -> Int64List.value (1, packed)
    return _field(3, _field(1, _varint(int(value))))


def _map_entry(key: str, feature: bytes) -> bytes:
    # Features.feature (1) is map<string, Feature>: entry {key = 1; value = 2}
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def serialize_example(spectrogram: np.ndarray, label: int, label_name: str,
                      speaker: str, path: str, num_samples: int,
                      waveform: np.ndarray | None = None) -> bytes:
    """Encodes one clip as a serialized `tf.train.Example`.

    Args:
      spectrogram: float32 array of shape SPECTROGRAM_SHAPE.
      label: index of `label_name` in labels.txt.
      label_name: the label's text.
      speaker: speaker id parsed from the file name.
      path: the source file.
      num_samples: clip length in samples (at 16 kHz) before padding or truncation.
      waveform: optional float32 array of CLIP_SAMPLES samples (the padded clip).

    Returns:
      The wire-format bytes of a tf.train.Example, readable by `parse_example`.
    """
    spectrogram = np.asarray(spectrogram, dtype="<f4")
    if spectrogram.shape != SPECTROGRAM_SHAPE:
        raise ValueError(f"spectrogram shape {spectrogram.shape} != {SPECTROGRAM_SHAPE}")
    entries = [
        _map_entry(SPECTROGRAM, _bytes_feature(spectrogram.tobytes())),
        _map_entry(LABEL, _int64_feature(label)),
        _map_entry(LABEL_NAME, _bytes_feature(label_name.encode())),
        _map_entry(SPEAKER, _bytes_feature(speaker.encode())),
        _map_entry(PATH, _bytes_feature(path.encode())),
        _map_entry(NUM_SAMPLES, _int64_feature(num_samples)),
    ]
    if waveform is not None:
        waveform = np.asarray(waveform, dtype="<f4")
        if waveform.shape != (CLIP_SAMPLES,):
            raise ValueError(f"waveform shape {waveform.shape} != ({CLIP_SAMPLES},)")
        entries.append(_map_entry(WAVEFORM, _bytes_feature(waveform.tobytes())))
    return _field(1, b"".join(entries))  # Example.features (1)


def serialize_spectrogram(spectrogram: np.ndarray, path: str) -> bytes:
    """A tf.Example of an unlabelled clip (spectrogram and path) for the `examples` signature."""
    spectrogram = np.asarray(spectrogram, dtype="<f4")
    if spectrogram.shape != SPECTROGRAM_SHAPE:
        raise ValueError(f"spectrogram shape {spectrogram.shape} != {SPECTROGRAM_SHAPE}")
    return _field(1, _map_entry(SPECTROGRAM, _bytes_feature(spectrogram.tobytes()))
                  + _map_entry(PATH, _bytes_feature(path.encode())))


def serialize_background(waveform: np.ndarray, path: str) -> bytes:
    """Encodes one background-noise recording (any length, 16 kHz float32)."""
    waveform = np.asarray(waveform, dtype="<f4").reshape(-1)
    return _field(1, b"".join([
        _map_entry(WAVEFORM, _bytes_feature(waveform.tobytes())),
        _map_entry(PATH, _bytes_feature(path.encode())),
        _map_entry(NUM_SAMPLES, _int64_feature(waveform.shape[0])),
    ]))


# --- parsing (TensorFlow, for tf.data) ---------------------------------------------

def feature_spec(keys=None) -> dict:
    """The `tf.io.parse_example` spec of the records (of `keys` only, if given).

    Parsing only what is needed matters for streaming speed: a feature left out of the
    spec is skipped by the parser instead of copied.
    """
    import tensorflow as tf
    spec = {
        SPECTROGRAM: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        LABEL_NAME: tf.io.FixedLenFeature([], tf.string),
        SPEAKER: tf.io.FixedLenFeature([], tf.string),
        PATH: tf.io.FixedLenFeature([], tf.string),
        NUM_SAMPLES: tf.io.FixedLenFeature([], tf.int64),
        # Optional: runs made with --no-waveforms leave it out (parsed as b"").
        WAVEFORM: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    return spec if keys is None else {key: spec[key] for key in keys}


def _decode(parsed: dict, leading: tuple) -> dict:
    import tensorflow as tf
    for key, shape in ((SPECTROGRAM, SPECTROGRAM_SHAPE), (WAVEFORM, (CLIP_SAMPLES,))):
        if key in parsed:
            values = tf.io.decode_raw(parsed[key], tf.float32, little_endian=True)
            parsed[key] = tf.reshape(values, leading + shape)
    return parsed


def parse_example(serialized, waveform: bool = False, keys=None) -> dict:
    """Parses one serialized example (a scalar string tensor) into tensors.

    Args:
      serialized: scalar string tensor.
      waveform: also decode the stored waveform (the run must have been made with it).
      keys: parse only these features (default: all but the waveform, unless asked for).

    Returns:
      A dict with the feature names as keys; `spectrogram` is float32 (124, 129),
      `waveform` (if asked for) float32 (16000,).
    """
    import tensorflow as tf
    keys = keys or [key for key in feature_spec_keys() if waveform or key != WAVEFORM]
    return _decode(tf.io.parse_single_example(serialized, feature_spec(keys)), ())


def parse_batch(serialized, waveform: bool = False, keys=None) -> dict:
    """Like `parse_example` for a 1-D batch of serialized examples (faster in tf.data)."""
    import tensorflow as tf
    keys = keys or [key for key in feature_spec_keys() if waveform or key != WAVEFORM]
    return _decode(tf.io.parse_example(serialized, feature_spec(keys)), (-1,))


def feature_spec_keys() -> tuple:
    return (SPECTROGRAM, LABEL, LABEL_NAME, SPEAKER, PATH, NUM_SAMPLES, WAVEFORM)


def parse_background(serialized) -> dict:
    """Parses a `serialize_background` record: `waveform` float32 (n,), `path`."""
    import tensorflow as tf
    parsed = tf.io.parse_single_example(serialized, {
        WAVEFORM: tf.io.FixedLenFeature([], tf.string),
        PATH: tf.io.FixedLenFeature([], tf.string),
        NUM_SAMPLES: tf.io.FixedLenFeature([], tf.int64),
    })
    parsed[WAVEFORM] = tf.io.decode_raw(parsed[WAVEFORM], tf.float32, little_endian=True)
    return parsed


def background_pattern(output_dir: str) -> str:
    return f"{output_dir.rstrip('/')}/{BACKGROUND}/{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}*"


# --- labels and metadata ------------------------------------------------------------

def format_labels(labels: list[str]) -> str:
    return "".join(f"{label}\n" for label in labels)


def parse_labels(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class Stft:
    """Every setting that decides a feature. A run made with other values is refused."""
    sample_rate: int = SAMPLE_RATE
    clip_samples: int = CLIP_SAMPLES
    frame_length: int = FRAME_LENGTH
    frame_step: int = FRAME_STEP
    fft_length: int = FFT_LENGTH
    window: str = WINDOW
    spectrogram_shape: tuple[int, int] = SPECTROGRAM_SHAPE
    spectrogram_encoding: str = SPECTROGRAM_ENCODING


STFT = Stft()


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """How clips were dealt to train/val/test (`dataset.split_for_speaker`/`_for_file`)."""
    method: str
    val_percent: float
    test_percent: float
    salt: Optional[str] = None  # of --split speaker
    seed: Optional[int] = None  # of --split random

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class RunMetadata(Mapping):
    """metadata.json: what a preprocessing run was made with, and what it wrote.

    The producer writes it with `to_json` and every consumer reads it with `from_json`,
    so a field has one name in both. It is also a read-only mapping of its JSON form
    (`metadata["counts"]["train"]["total"]`), the shape the file has on disk.
    """
    labels: tuple[str, ...]
    data_dir: str
    split: SplitSettings
    compression: str = "none"
    waveforms: bool = True
    unknown_percent: Optional[float] = None
    silence_percent: Optional[float] = None
    keyword_seed: Optional[int] = None
    command_line: str = ""
    extra_data_dirs: tuple[str, ...] = ()  # further --data-dir folders read with data_dir
    format_version: int = FORMAT_VERSION
    stft: Stft = STFT
    # What the run wrote, known once its pipeline has finished.
    # split -> label -> examples
    counts: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    examples_written: int = 0  # from files; `_silence_` clips are counted apart
    silence_written: int = 0
    rejected_by_reason: Mapping[str, int] = dataclasses.field(default_factory=dict)
    skipped_by_reason: Mapping[str, int] = dataclasses.field(default_factory=dict)
    background_recordings: int = 0
    files_read: int = 0  # counted where the files are listed, apart from the outcomes
    shards: tuple[str, ...] = ()
    background_shards: tuple[str, ...] = ()
    # split, background or rejected -> records (lines) counted in its files once they
    # were written; absent in older runs
    records_in_shards: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    def split_total(self, split: str) -> int:
        """Examples written to one split."""
        return sum(self.counts.get(split, {}).values())

    def unaccounted(self) -> list[str]:
        """Why the counts do not add up (empty when they do).

        Files read = examples + background recordings + rejected + skipped, and each
        place's files hold as many records (rejected/: lines) as were sent to them.
        """
        problems = []
        outcomes = (self.examples_written + self.background_recordings + self.rejected
                    + self.skipped)
        if self.files_read != outcomes:
            problems.append(f"{self.files_read} files read but {outcomes} outcomes "
                            f"(examples {self.examples_written} + background noise "
                            f"{self.background_recordings} + rejected {self.rejected} + "
                            f"skipped {self.skipped})")
        for place, records in sorted(self.records_in_shards.items()):
            sent, what = {BACKGROUND: (self.background_recordings, "recordings"),
                          REJECTED_DIR: (self.rejected, "rejections")}.get(
                              place, (self.split_total(place), "examples"))
            if records != sent:
                problems.append(f"{place}: {records} records in the shards but {sent} "
                                f"{what} sent to them")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the STFT settings and the totals are top-level keys."""
        return {
            "format_version": self.format_version,
            **dataclasses.asdict(self.stft),
            "spectrogram_shape": list(self.stft.spectrogram_shape),
            "labels": list(self.labels),
            "data_dir": self.data_dir,
            "extra_data_dirs": list(self.extra_data_dirs),
            "split": self.split.to_dict(),
            "unknown_percent": self.unknown_percent,
            "silence_percent": self.silence_percent,
            "keyword_seed": self.keyword_seed,
            "compression": self.compression,
            "waveforms": self.waveforms,
            "command_line": self.command_line,
            "counts": {split: {"total": self.split_total(split),
                               "per_label": dict(sorted(self.counts.get(split, {}).items()))}
                       for split in SPLITS},
            "examples_written": self.examples_written,
            "silence_written": self.silence_written,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "background_recordings": self.background_recordings,
            "files_read": self.files_read,
            "shards": sorted(self.shards),
            "background_shards": sorted(self.background_shards),
            "records_in_shards": dict(sorted(self.records_in_shards.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], check: bool = True) -> "RunMetadata":
        """Reads the JSON form; with `check`, refuses a run this code cannot use.

        Raises:
          ValueError: a missing or mistyped field, or (with `check`) other settings
            (`check_metadata`) or counts that do not add up (`unaccounted`).
        """
        if check:
            check_metadata(data)
        try:
            stft = Stft(**{field.name: data[field.name]
                           for field in dataclasses.fields(Stft)
                           if field.name != "spectrogram_shape"},
                        spectrogram_shape=tuple(data["spectrogram_shape"]))
            counts = {split: dict(data["counts"][split]["per_label"])
                      for split in data.get("counts", {})}
            metadata = cls(
                labels=tuple(data["labels"]), data_dir=data["data_dir"],
                extra_data_dirs=tuple(data.get("extra_data_dirs", ())),
                split=SplitSettings(**data["split"]), compression=data["compression"],
                waveforms=bool(data["waveforms"]), unknown_percent=data.get("unknown_percent"),
                silence_percent=data.get("silence_percent"),
                keyword_seed=data.get("keyword_seed"), command_line=data["command_line"],
                format_version=data["format_version"], stft=stft, counts=counts,
                examples_written=data["examples_written"],
                silence_written=data.get("silence_written", 0),
                rejected_by_reason=dict(data["rejected_by_reason"]),
                skipped_by_reason=dict(data["skipped_by_reason"]),
                background_recordings=data.get("background_recordings", 0),
                files_read=data["files_read"], shards=tuple(data["shards"]),
                background_shards=tuple(data.get("background_shards", ())),
                records_in_shards=dict(data.get("records_in_shards", {})))
        except KeyError as error:
            raise ValueError(f"field {error} missing") from None
        except (TypeError, AttributeError) as error:
            raise ValueError(f"malformed ({error})") from None
        problems = metadata.unaccounted() if check else []
        if problems:
            raise ValueError("the run's counts do not add up, examples were lost: "
                             f"{problems[0]}; preprocess again")
        return metadata

    @classmethod
    def from_json(cls, text: str, check: bool = True) -> "RunMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(data, check)

    # The read-only mapping of the JSON form.
    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """Raises ValueError unless a run's metadata matches what this code computes.

    The format version and every STFT setting are compared: a spectrogram of the same
    shape made with another frame length (256 also gives 124x129) is refused.
    """
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"format version {version!r}, this code reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; preprocess the data again")
    expected = dataclasses.asdict(STFT)
    expected["spectrogram_shape"] = list(SPECTROGRAM_SHAPE)
    for name, value in expected.items():
        found = metadata.get(name)
        found = list(found) if isinstance(found, (list, tuple)) else found
        if found != value:
            raise ValueError(f"{name} {found!r}, this code uses {value!r}; preprocess the "
                             "data again or use the version that made it")
