"""Long test recordings made from one-second clips, with the truth of where each word is.

The builder follows TensorFlow's `generate_streaming_test_wav.py` (speech_commands
example): background-noise segments at a random volume, cross-faded end to end, fill the
whole recording; then words are laid over it, one per stride of `clip + word_gap`, at a
random offset within the gap, so words never overlap and gaps vary. A share of the
words are `_unknown_` clips (other words), the rest keywords. The truth lists every
clip laid down, keywords and `_unknown_` alike, as (label, start_ms, end_ms).

Pure numpy and seeded: the same clips, noise and seed give the same stream. Typical use::

    stream = streams.build_stream(keyword_clips, unknown_clips, noises, duration_s=600,
                                  seed=0)
    stream.audio   # float32 [samples] at 16 kHz
    stream.truth   # [Truth(label="yes", start_ms=2310.0, end_ms=3310.0), ...]

`mix_stream` lays clips at given positions (tests use it for a keyword at the very
start or end of a file); `read_truth_csv`/`format_truth_csv` read and write the truth
as a CSV of `label,start_ms,end_ms`.

`python -m trainer.calibrate recording` writes such a recording from a split of a
preprocessing run, and its truth beside it, to try `trainer.detect` on.
"""

from __future__ import annotations

import csv
import io
from typing import NamedTuple, Optional, Sequence

import numpy as np

from pipelines.contract import SAMPLE_RATE
from pipelines.dataset import SILENCE_LABEL as SILENCE, UNKNOWN_LABEL as UNKNOWN

# Defaults of TensorFlow's generate_streaming_test_wav.py.
WORD_GAP_MS = 2_000  # the largest gap between two words; each gap is uniform in [0, this)
UNKNOWN_PERCENT = 30  # share of words that are other words
BACKGROUND_VOLUME = 0.1  # each noise segment's gain is uniform in [0, this)
BACKGROUND_SEGMENT_MS = 1_500  # one second plus a 500 ms cross-fade
BACKGROUND_CROSSFADE_MS = 500
CLIP_RAMP_SAMPLES = 500  # fade in and out of each clip, against clicks at its edges

TRUTH_HEADER = ("label", "start_ms", "end_ms")


class Truth(NamedTuple):
    """One clip laid into a stream: its label and where it lies, in ms from the start."""
    label: str
    start_ms: float
    end_ms: float


class Placement(NamedTuple):
    """A clip to lay into a stream at `start` (in samples)."""
    label: str
    clip: np.ndarray
    start: int


class Stream(NamedTuple):
    audio: np.ndarray  # float32 [samples], 16 kHz
    truth: list[Truth]  # every clip laid down, in time order

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


def _ramp(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    gain = np.ones(length, np.float32)
    fade_in, fade_out = min(fade_in, length // 2), min(fade_out, length // 2)
    if fade_in:
        gain[:fade_in] = np.linspace(0.0, 1.0, fade_in, endpoint=False)
    if fade_out:
        gain[length - fade_out:] = np.linspace(1.0, 0.0, fade_out, endpoint=False)
    return gain


def background(num_samples: int, noises: Sequence[np.ndarray], rng: np.random.Generator,
               volume: float = BACKGROUND_VOLUME) -> np.ndarray:
    """Noise segments cut from random places of random recordings, cross-faded end to end.

    Args:
      num_samples: length of the result.
      noises: background recordings (float32, 16 kHz), each at least one segment long.
      rng: the random generator.
      volume: each segment's gain is drawn uniformly from [0, volume).

    Returns:
      float32 [num_samples]; zeros when `noises` is empty or `volume` is 0.
    """
    out = np.zeros(num_samples, np.float32)
    segment = BACKGROUND_SEGMENT_MS * SAMPLE_RATE // 1000
    crossfade = BACKGROUND_CROSSFADE_MS * SAMPLE_RATE // 1000
    usable = [np.asarray(n, np.float32) for n in noises if len(n) >= segment]
    if not usable or volume <= 0:
        return out
    gain = _ramp(segment, crossfade, crossfade)
    for start in range(0, num_samples, segment - crossfade):
        noise = usable[rng.integers(len(usable))]
        offset = rng.integers(0, len(noise) - segment + 1)
        piece = noise[offset:offset + segment] * gain * rng.uniform(0.0, volume)
        length = min(segment, num_samples - start)
        out[start:start + length] += piece[:length]
    return out


def mix_stream(num_samples: int, placements: Sequence[Placement],
               noise: Optional[np.ndarray] = None) -> Stream:
    """Lays clips into a recording of `num_samples` (over `noise`, if given).

    Args:
      num_samples: length of the recording.
      placements: clips and their start sample; a clip running past the end is cut, and
        its truth ends at the end of the recording.
      noise: float32 [num_samples] background, or None for silence.

    Returns:
      The Stream, with one Truth per placement, in time order.
    """
    audio = np.zeros(num_samples, np.float32) if noise is None else np.array(noise, np.float32)
    truth = []
    for label, clip, start in sorted(placements, key=lambda p: p.start):
        if not 0 <= start < num_samples:
            raise ValueError(f"clip {label!r} starts at {start}, outside 0..{num_samples}")
        clip = np.asarray(clip, np.float32)[:num_samples - start]
        audio[start:start + len(clip)] += clip * _ramp(len(clip), CLIP_RAMP_SAMPLES,
                                                       CLIP_RAMP_SAMPLES)
        truth.append(Truth(label, start * 1000.0 / SAMPLE_RATE,
                           (start + len(clip)) * 1000.0 / SAMPLE_RATE))
    np.clip(audio, -1.0, 1.0, out=audio)
    return Stream(audio, truth)


def _cycle(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices into `size` items: each used once before any is used again."""
    rounds = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(rounds)]
                          + [np.zeros(0, np.int64)])[:count]


def build_stream(keywords: Sequence[tuple[str, np.ndarray]], unknowns: Sequence[np.ndarray],
                 noises: Sequence[np.ndarray], duration_s: float = 600.0, seed: int = 0,
                 word_gap_ms: float = WORD_GAP_MS, unknown_percent: float = UNKNOWN_PERCENT,
                 background_volume: float = BACKGROUND_VOLUME) -> Stream:
    """A recording of keywords and other words over background noise, with its truth.

    Args:
      keywords: (label, clip) pairs; clips are float32 16 kHz, about one second.
      unknowns: clips of other words (labelled `_unknown_` in the truth); may be empty.
      noises: background recordings; empty for silence between words.
      duration_s: length of the recording.
      seed: seeds every random choice.
      word_gap_ms: each word starts at a uniform offset in [0, word_gap_ms) within its
        stride of one clip plus `word_gap_ms`.
      unknown_percent: share of words drawn from `unknowns`.
      background_volume: largest gain of a noise segment.

    Returns:
      The Stream. Clips are drawn without replacement until a list is used up, then
      reshuffled, so a long stream uses every clip about equally often.
    """
    if not keywords:
        raise ValueError("no keyword clips to build a stream from")
    rng = np.random.default_rng(seed)
    num_samples = int(round(duration_s * SAMPLE_RATE))
    noise = background(num_samples, noises, rng, background_volume)
    clip_samples = max(len(clip) for _, clip in keywords)
    gap = max(1, int(word_gap_ms * SAMPLE_RATE / 1000))
    stride = clip_samples + gap
    count = max(0, (num_samples - clip_samples) // stride + 1)
    is_unknown = (rng.uniform(0, 100, count) < unknown_percent) & (len(unknowns) > 0)
    keyword_order = iter(_cycle(int((~is_unknown).sum()), len(keywords), rng))
    unknown_order = iter(_cycle(int(is_unknown.sum()), max(len(unknowns), 1), rng))
    placements = []
    for i in range(count):
        start = i * stride + int(rng.integers(0, gap))
        if start + clip_samples > num_samples:
            start = num_samples - clip_samples
        if is_unknown[i]:
            placements.append(Placement(UNKNOWN, unknowns[next(unknown_order)], start))
        else:
            label, clip = keywords[next(keyword_order)]
            placements.append(Placement(label, clip, start))
    return mix_stream(num_samples, placements, noise)


def format_truth_csv(truth: Sequence[Truth]) -> str:
    """The truth as CSV text with a `label,start_ms,end_ms` header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TRUTH_HEADER)
    writer.writerows((t.label, f"{t.start_ms:.1f}", f"{t.end_ms:.1f}") for t in truth)
    return out.getvalue()


def read_truth_csv(text: str) -> list[Truth]:
    """Parses `label,start_ms,end_ms` rows (a header row is optional).

    Raises:
      ValueError: a row without three fields, times that are not numbers, or an end
        before its start; the message names the row.
    """
    truth = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and tuple(cell.strip() for cell in row) == TRUTH_HEADER:
            continue
        if len(row) != 3:
            raise ValueError(f"row {number}: expected label,start_ms,end_ms, got {row}")
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError:
            raise ValueError(f"row {number}: times must be numbers, got {row[1:]}") from None
        if not (np.isfinite(start) and np.isfinite(end)) or end < start or start < 0:
            raise ValueError(f"row {number}: bad interval {start}..{end} ms")
        truth.append(Truth(row[0].strip(), start, end))
    return sorted(truth, key=lambda t: t.start_ms)
