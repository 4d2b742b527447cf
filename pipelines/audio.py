"""Audio decoding and the spectrogram, as plain functions on bytes and numpy arrays.

No Beam and no TensorFlow here: the preprocessing pipeline, the baseline benchmark,
`trainer.predict` and batch prediction all call these same functions, so a clip is
featurised identically wherever it goes.

Decoding is done by libsndfile (through `soundfile`), which reads 8/16/24/32-bit integer
and 32/64-bit float WAV, mono or multichannel; resampling by libsoxr (through `soxr`),
a band-limited resampler with a proper anti-aliasing filter.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import soundfile
import soxr

from pipelines import contract


class AudioError(ValueError):
    """A file that cannot be turned into a clip. The message is the reason."""


def decode_wav(data: bytes, target_rate: int = contract.SAMPLE_RATE) -> np.ndarray:
    """Decodes WAV bytes into a mono float32 waveform in [-1, 1] at `target_rate`.

    Args:
      data: the file's bytes.
      target_rate: sample rate of the result; other rates are resampled.

    Returns:
      A 1-D float32 array.

    Raises:
      AudioError: empty or unreadable file, unsupported encoding, no samples,
        or samples that are NaN or infinite.
    """
    if not data:
        raise AudioError("empty file")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("not a RIFF/WAVE file")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as wav:
            rate = wav.samplerate
            samples = wav.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"unreadable WAV ({_short(error)})") from None
    if samples.shape[0] == 0:
        raise AudioError("zero-length audio")
    if not np.all(np.isfinite(samples)):
        raise AudioError("NaN or infinite samples")
    waveform = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != target_rate:
        waveform = soxr.resample(waveform, rate, target_rate, quality="HQ")
    # Float WAVs may legitimately exceed full scale; the features expect [-1, 1].
    return np.clip(waveform, -1.0, 1.0).astype(np.float32, copy=False)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def pad_or_trim(waveform: np.ndarray, length: int = contract.CLIP_SAMPLES) -> np.ndarray:
    """Keeps the first `length` samples; zero-pads shorter clips at the end."""
    waveform = np.asarray(waveform, dtype=np.float32)[:length]
    if waveform.shape[0] < length:
        waveform = np.pad(waveform, (0, length - waveform.shape[0]))
    return waveform


def hann_window(length: int = contract.FRAME_LENGTH) -> np.ndarray:
    """The window `tf.signal.stft` applies by default: `hann_window(length, periodic=True)`.

    TensorFlow's periodic window divides by `length` only for even lengths; for odd
    lengths (255 here) it divides by `length - 1`, i.e. it is the symmetric window.
    """
    denominator = length if length % 2 == 0 else length - 1
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / denominator))


_WINDOW = hann_window()
_FRAME_INDEX = (np.arange(contract.NUM_FRAMES)[:, None] * contract.FRAME_STEP
                + np.arange(contract.FRAME_LENGTH)[None, :])


def spectrogram(waveform: np.ndarray) -> np.ndarray:
    """|STFT| of a clip, equal to the tutorial's `tf.abs(tf.signal.stft(...))`.

    Args:
      waveform: float32 samples at 16 kHz, any length (padded or trimmed to one second).

    Returns:
      float32 array of shape (124, 129).
    """
    frames = pad_or_trim(waveform).astype(np.float64)[_FRAME_INDEX] * _WINDOW
    return np.abs(np.fft.rfft(frames, n=contract.FFT_LENGTH, axis=-1)).astype(np.float32)


class Clip(NamedTuple):
    """A decoded clip: the padded one-second waveform, its spectrogram, its length."""
    waveform: np.ndarray
    spectrogram: np.ndarray
    num_samples: int


def featurize(data: bytes) -> Clip:
    """WAV bytes to a Clip (raises AudioError with the reason when it cannot)."""
    waveform = decode_wav(data)
    padded = pad_or_trim(waveform)
    return Clip(padded, spectrogram(padded), int(waveform.shape[0]))
