"""Builders of real and deliberately broken WAV files for the tests."""

from __future__ import annotations

import io
import pathlib
import shutil
import struct

import numpy as np
import soundfile

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def sample_clips(label: str, count: int) -> list[pathlib.Path]:
    """The first `count` bundled real clips of one word."""
    return sorted((SAMPLE / label).glob("*.wav"))[:count]


def copy_sample(dest: pathlib.Path, labels=("yes", "no", "up"), per_label: int = 6) -> pathlib.Path:
    """Copies real clips into dest/<label>/; returns dest."""
    for label in labels:
        (dest / label).mkdir(parents=True, exist_ok=True)
        for clip in sample_clips(label, per_label):
            shutil.copy(clip, dest / label / clip.name)
    return dest


def read_clip(path: pathlib.Path) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(str(path), dtype="float32")
    return samples, rate


def wav_bytes(samples: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def riff_header(format_tag: int, channels: int = 1, rate: int = 16_000, bits: int = 16,
                data: bytes = b"") -> bytes:
    """A hand-made RIFF/WAVE file with any format tag (e.g. 0x55, MP3 in WAV)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def broken_files() -> dict[str, bytes]:
    """name -> bytes of files that must be rejected, each for its own reason."""
    good = wav_bytes(np.zeros(1600, np.float32))
    nan = np.zeros(1600, np.float32)
    nan[100] = np.nan
    return {
        "empty.wav": b"",
        "truncated.wav": good[:30],
        "text.wav": b"this is not audio at all, just text named .wav\n",
        "mp3_in_wav.wav": riff_header(0x55, data=b"\xff\xfb" * 200),
        "zero_length.wav": riff_header(1),
        "nan.wav": wav_bytes(nan, subtype="FLOAT"),
    }
