"""Audio decoding and the spectrogram, as plain functions on bytes, files and numpy arrays.

No Beam pipeline and no TensorFlow here: the preprocessing pipeline, the baseline
benchmark, `trainer.predict`, detection and batch prediction all call these same
functions, so a clip is featurised identically wherever it goes.

Decoding is done by libsndfile (through `soundfile`), which reads 8/16/24/32-bit integer
and 32/64-bit float WAV (and GSM 6.10, u-law, a-law, ADPCM inside WAV), FLAC,
OGG/Vorbis, Opus and MP3, mono or multichannel (`FORMATS`, told apart by their first
bytes, not by the file name); resampling by libsoxr (through `soxr`),
a band-limited resampler with a proper anti-aliasing filter. Every decoder reads the file
in chunks and resamples it as a stream, so what one file costs is bounded by the limits
below, never by what its header claims:

- `decode_clip` / `featurize`: the first second only (plus the resampler's few
  milliseconds of look-ahead), whatever the recording's length;
- `decode_wav`: a whole recording of at most `MAX_DECODE_SECONDS`;
- `read_blocks`: a recording of any length, one block at a time.

A source is WAV bytes, a binary file object positioned at the start of the file, or a
path (local or gs://, opened through Beam's `FileSystems`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from typing import BinaryIO, Iterator, NamedTuple, Optional, Union

import numpy as np
import soundfile
import soxr

from pipelines import contract, errors

# Limits on what one file may cost; a file outside them is refused with the reason
# before anything is decoded.
MIN_SAMPLE_RATE = 8_000  # the lowest rate speech is recorded at (telephone audio)
MAX_SAMPLE_RATE = 192_000  # the highest rate audio interfaces record at
MAX_CHANNELS = 8  # 7.1 surround; more is a lying header or not a recording
MAX_DECODE_SECONDS = 600  # what `decode_wav` decodes whole; longer: `read_blocks`
BLOCK_SAMPLES = contract.SAMPLE_RATE * 10  # default block of `read_blocks`: 10 s
READ_SECONDS = 0.5  # source audio read per libsndfile call: bounds the memory of a read
# libsoxr's HQ filter holds back at most ~70 ms of output (measured at 8..192 kHz); a clip
# read takes this much more than its length so that one read usually finishes it.
RESAMPLER_MARGIN_SECONDS = 0.1

Source = Union[bytes, bytearray, str, os.PathLike, BinaryIO]

# What this reads, by the file's first bytes; a folder's files are chosen by these
# extensions (`dataset.classify`).
FORMATS = "WAV, FLAC, OGG/Vorbis, Opus or MP3"
EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")


class AudioError(ValueError):
    """A file that cannot be turned into audio. The message is the reason."""


class AudioInfo(NamedTuple):
    """What a recording's header says, after the limits were checked."""
    sample_rate: int
    channels: int
    frames: int  # what the file holds (libsndfile reads a file cut short as far as it goes)
    declared_frames: Optional[int] = None  # what a WAV header claims, when it claims more

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def resampled_length(frames: int, rate: int, target_rate: int = contract.SAMPLE_RATE) -> int:
    """Samples that `frames` at `rate` become at `target_rate` (libsoxr rounds half up)."""
    return (2 * frames * target_rate + rate) // (2 * rate)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


_SOUNDFILE_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError)


@contextlib.contextmanager
def _open_handle(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, (bytes, bytearray)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        # pylint: disable=import-outside-toplevel
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(os.fspath(source),
                              compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            yield handle
    else:
        source.seek(0)
        yield source


_DATA_CUT_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


def _declared_frames(wav: soundfile.SoundFile) -> Optional[int]:
    """The frames a WAV header claims when the file holds fewer (libsndfile's log says)."""
    found = _DATA_CUT_SHORT.search(wav.extra_info or "")
    if not found or int(found.group(1)) <= int(found.group(2)) or not wav.frames:
        return None
    bytes_per_frame = int(found.group(2)) / wav.frames
    return int(int(found.group(1)) / bytes_per_frame) if bytes_per_frame else None


def _check(wav: soundfile.SoundFile, target_rate: int) -> AudioInfo:
    info = AudioInfo(int(wav.samplerate), int(wav.channels), int(wav.frames),
                     _declared_frames(wav))
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {info.sample_rate} Hz outside "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{info.channels} channels (at most {MAX_CHANNELS})")
    if info.frames <= 0:
        raise AudioError("zero-length audio")
    if resampled_length(info.frames, info.sample_rate, target_rate) == 0:
        raise AudioError(f"zero-length audio once resampled ({info.frames} frames at "
                         f"{info.sample_rate} Hz is under one sample at {target_rate} Hz)")
    return info


def known_format(head: bytes) -> bool:
    """Whether a file's first 12 bytes start one of `FORMATS`."""
    if head[:4] in (b"RIFF", b"RF64"):
        return head[8:12] == b"WAVE"
    if head[:4] in (b"fLaC", b"OggS") or head[:3] == b"ID3":  # ID3: an MP3's tag
        return True
    # An MP3 frame header: 11 sync bits, then an MPEG version and layer that exist.
    return (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
            and head[1] & 0x18 != 0x08 and head[1] & 0x06 != 0)


@contextlib.contextmanager
def _open(source: Source, target_rate: int = contract.SAMPLE_RATE):
    """Opens a recording and checks it against the limits: yields (SoundFile, AudioInfo)."""
    with _open_handle(source) as handle:
        head = handle.read(12)
        if not head:
            raise AudioError("empty file")
        if not known_format(head):
            raise AudioError(f"not an audio file this reads ({FORMATS})")
        handle.seek(0)
        try:
            wav = soundfile.SoundFile(handle)
        except _SOUNDFILE_ERRORS as error:
            raise AudioError(f"unreadable audio ({_short(error)})") from None
        with wav:
            yield wav, _check(wav, target_rate)


def probe(source: Source) -> AudioInfo:
    """The header's sample rate, channels and frames (raises AudioError beyond the limits)."""
    with _open(source) as (_, info):
        return info


def _mono_chunks(wav: soundfile.SoundFile, info: AudioInfo, target_rate: int,
                 first_frames: int = 0) -> Iterator[np.ndarray]:
    """Yields the recording as consecutive mono float32 chunks at `target_rate`.

    Channels are averaged, then resampled as one stream: the chunks joined are the
    same samples, bit for bit, as resampling the whole recording at once. The first
    read takes `first_frames` source frames when given, later ones READ_SECONDS.
    """
    resampler = (soxr.ResampleStream(info.sample_rate, target_rate, 1, dtype="float32",
                                     quality="HQ")
                 if info.sample_rate != target_rate else None)
    read_frames = first_frames or max(1024, int(info.sample_rate * READ_SECONDS))
    while True:
        try:
            samples = wav.read(read_frames, dtype="float32", always_2d=True)
        except _SOUNDFILE_ERRORS as error:
            errors.INTERRUPTS.check()
            raise AudioError(f"unreadable audio ({_short(error)})") from None
        errors.INTERRUPTS.check()
        last = samples.shape[0] < read_frames
        if not np.all(np.isfinite(samples)):
            raise AudioError("NaN or infinite samples")
        mono = samples.mean(axis=1) if info.channels > 1 else samples[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=last)
        # Float WAVs may legitimately exceed full scale; the features expect [-1, 1].
        yield np.clip(mono, -1.0, 1.0)
        if last:
            return
        read_frames = max(1024, int(info.sample_rate * READ_SECONDS))


def decode_wav(source: Source, target_rate: int = contract.SAMPLE_RATE,
               max_seconds: float = MAX_DECODE_SECONDS) -> np.ndarray:
    """Decodes a whole WAV into a mono float32 waveform in [-1, 1] at `target_rate`.

    Args:
      source: WAV bytes, a binary file object, or a path (local or gs://).
      target_rate: sample rate of the result; other rates are resampled.
      max_seconds: longest recording decoded whole; longer ones are refused before
        decoding (`read_blocks` reads them in blocks).

    Returns:
      A 1-D float32 array.

    Raises:
      AudioError: empty or unreadable file, unsupported encoding, a sample rate, channel
        count or length beyond the limits, no samples once resampled, or samples that
        are NaN or infinite.
    """
    with _open(source, target_rate) as (wav, info):
        if info.duration > max_seconds:
            raise AudioError(f"{info.duration:.0f} s long, over the {max_seconds:g} s "
                             "decoded whole (longer recordings are read in blocks)")
        chunks = list(_mono_chunks(wav, info, target_rate))
    waveform = np.concatenate(chunks)
    if waveform.shape[0] == 0:
        raise AudioError("zero-length audio once resampled")
    return waveform


def decode_clip(source: Source, length: int = contract.CLIP_SAMPLES,
                target_rate: int = contract.SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Decodes only the start of a WAV: its first `length` samples at `target_rate`.

    Reads the first `length` samples' worth of the file plus what the resampler needs
    to finish them, whatever the recording's length; the samples equal those of
    `decode_wav` on the whole file.

    Args:
      source: WAV bytes, a binary file object, or a path (local or gs://).
      length: samples wanted, at `target_rate`.
      target_rate: sample rate of the result.

    Returns:
      (waveform, num_samples): at most `length` float32 samples (fewer when the
      recording is shorter, never padded), and the whole recording's length in
      samples at `target_rate`.

    Raises:
      AudioError: as `decode_wav`.
    """
    with _open(source, target_rate) as (wav, info):
        seconds = length / target_rate
        if info.sample_rate != target_rate:
            seconds += RESAMPLER_MARGIN_SECONDS
        chunks, count = [], 0
        for chunk in _mono_chunks(wav, info, target_rate,
                                  first_frames=math.ceil(seconds * info.sample_rate)):
            chunks.append(chunk)
            count += chunk.shape[0]
            if count >= length:
                total = max(count, resampled_length(info.frames, info.sample_rate, target_rate))
                break
        else:
            total = count
    if total == 0:
        raise AudioError("zero-length audio once resampled")
    return np.concatenate(chunks)[:length], total


def read_blocks(source: Source, block_samples: int = BLOCK_SAMPLES,
                target_rate: int = contract.SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yields a WAV of any length as consecutive mono float32 blocks at `target_rate`.

    Memory stays that of a block or two whatever the recording's length: the file is
    read in chunks and resampled as one stream, so the blocks joined equal
    `decode_wav` on the whole file, with no seam at block boundaries.

    Args:
      source: WAV bytes, a binary file object, or a path (local or gs://).
      block_samples: samples per block; every block but the last has exactly this many.
      target_rate: sample rate of the blocks.

    Yields:
      1-D float32 arrays in [-1, 1].

    Raises:
      AudioError: as `decode_wav` (no length limit). A file that is refused is refused
        before the first block; one that turns out damaged part-way raises after the
        blocks before the damage.
    """
    if block_samples < 1:
        raise ValueError(f"block_samples must be positive, got {block_samples}")
    with _open(source, target_rate) as (wav, info):
        # Each block is filled in place and handed over whole: memory is the block being
        # filled, the one the caller holds, and one read.
        block, filled, total = np.empty(block_samples, np.float32), 0, 0
        for chunk in _mono_chunks(wav, info, target_rate):
            while chunk.shape[0]:
                take = min(block_samples - filled, chunk.shape[0])
                block[filled:filled + take] = chunk[:take]
                filled, chunk = filled + take, chunk[take:]
                if filled == block_samples:
                    total += filled
                    yield block
                    block, filled = np.empty(block_samples, np.float32), 0
        if filled:
            total += filled
            yield block[:filled]
    if total == 0:
        raise AudioError("zero-length audio once resampled")


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


def featurize(source: Source) -> Clip:
    """A WAV's first second to a Clip (raises AudioError with the reason when it cannot).

    `num_samples` is the whole recording's length at 16 kHz; only its first second is
    decoded.
    """
    waveform, num_samples = decode_clip(source)
    padded = pad_or_trim(waveform)
    return Clip(padded, spectrogram(padded), num_samples)
