"""The data contract between preprocessing and everything that reads its output.

A preprocessing run writes, under its output directory::

    OUT/train/data-SSSSS-of-NNNNN.tfrecord[.gz]   tf.Example records, one per clip
    OUT/val/...    OUT/test/...
    OUT/labels.txt                                 one label per line; line number = index
    OUT/metadata.json                              format version, shapes, counts, settings
    OUT/rejected/rejected-SSSSS-of-NNNNN.jsonl     {"path": ..., "reason": ...} per bad input

This module owns the feature names, shapes and dtypes, and keeps `serialize_example`
and `parse_example` side by side so the two can never drift apart. Serialization is
plain Python (no TensorFlow import), so Beam workers start fast; parsing is TensorFlow,
because the trainer reads records through `tf.data`.

The spectrogram is stored as the raw little-endian float32 bytes of the (124, 129)
array: building a `FloatList` of 15,996 values costs milliseconds per example, copying
64 KB of bytes costs microseconds. `parse_example` turns it back into float32.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

FORMAT_VERSION = 1

# Audio and STFT parameters: those of TensorFlow's "Simple audio recognition" tutorial.
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
FRAME_LENGTH = 255
FRAME_STEP = 128
FFT_LENGTH = 256
NUM_FRAMES = 1 + (CLIP_SAMPLES - FRAME_LENGTH) // FRAME_STEP  # 124
NUM_BINS = FFT_LENGTH // 2 + 1  # 129
SPECTROGRAM_SHAPE = (NUM_FRAMES, NUM_BINS)

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
REJECTED_DIR = "rejected"
BACKGROUND_NOISE_DIR = "_background_noise_"  # input folder of long noise recordings
BACKGROUND = "background"  # output folder: one record per noise recording, for augmentation


def shard_pattern(output_dir: str, split: str) -> str:
    """Glob that matches every shard of one split, compressed or not."""
    return f"{output_dir.rstrip('/')}/{split}/{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}*"


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


def stft_metadata() -> dict[str, Any]:
    return {
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "frame_length": FRAME_LENGTH,
        "frame_step": FRAME_STEP,
        "fft_length": FFT_LENGTH,
        "window": "tf.signal.hann_window(255, periodic=True)",
        "spectrogram_shape": list(SPECTROGRAM_SHAPE),
        "spectrogram_encoding": "raw little-endian float32 bytes",
    }


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """Raises ValueError when a metadata.json was written by an incompatible version."""
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r}, this code reads {FORMAT_VERSION}")
    if tuple(metadata.get("spectrogram_shape", ())) != SPECTROGRAM_SHAPE:
        raise ValueError(f"spectrogram shape {metadata.get('spectrogram_shape')}, "
                         f"expected {list(SPECTROGRAM_SHAPE)}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
