"""How a keyword model's window scores become events, and the detection.json that says so.

Pure numpy, shared by every detector: `trainer.detect` (files), `pipelines.detect`
(Beam), the live server and the live page's port of it. The steps:

1. **Windows.** One-second windows start every `hop_ms` from the start of the file
   (window k covers samples [k*hop, k*hop + window)); the last one reaches the end of
   the file, padded with zeros past it. Window k's time is the end of its audio.
2. **Smoothing.** Each label's probability is averaged over the last `smoothing`
   windows (causal), so one stray window does not fire an event.
3. **Candidates.** Windows where the best keyword's smoothed score reaches that
   keyword's threshold. `_unknown_` and `_silence_` are never keywords.
4. **Events.** A candidate fires when it starts a run (the window before was not a
   candidate of the same keyword) and the last event is at least `refractory_ms` ago,
   so one utterance gives one event. Candidates are sparse and carry their window
   index, so a long file can be scored in chunks and its events fired in one pass.

`Config` is a job's `export/detection.json`; `config_from_json` checks every value
(types, ranges, the model's keywords) and names the key of the first bad one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from pipelines.contract import CLIP_SAMPLES, SAMPLE_RATE
from pipelines.dataset import SILENCE_LABEL, UNKNOWN_LABEL

FORMAT_VERSION = 1
CONFIG_FILE = "detection.json"  # beside the SavedModel, in JOB/export/
NON_KEYWORDS = (UNKNOWN_LABEL, SILENCE_LABEL)
WINDOW_MS = CLIP_SAMPLES * 1000 // SAMPLE_RATE
HOP_MS = 96  # 12 STFT steps: windows share their frames (trainer.scoring.Scorer)
SMOOTHING = 3
REFRACTORY_MS = 1_000
DEFAULT_THRESHOLD = 0.8  # for a model without a chosen operating point
# What detection.json may hold (a hand-edited file outside these is refused).
MAX_SMOOTHING = 50
MAX_REFRACTORY_MS = 60_000
WINDOW_RANGE_MS = (100, 10_000)


@dataclasses.dataclass(frozen=True)
class Config:
    """How a model's scores become events; stored as export/detection.json."""
    thresholds: dict  # keyword -> smoothed-score threshold
    window_ms: int = WINDOW_MS
    hop_ms: int = HOP_MS
    smoothing: int = SMOOTHING
    refractory_ms: float = REFRACTORY_MS
    chosen_on: Optional[dict] = None  # what the operating point was chosen on, and its figures

    @property
    def window(self) -> int:
        return self.window_ms * SAMPLE_RATE // 1000

    @property
    def hop(self) -> int:
        return self.hop_ms * SAMPLE_RATE // 1000

    def with_threshold(self, threshold: float) -> "Config":
        """The same config with one threshold for every keyword."""
        return dataclasses.replace(self, thresholds={k: float(threshold)
                                                     for k in self.thresholds})


def keywords_of(labels: Sequence[str]) -> list[str]:
    return [label for label in labels if label not in NON_KEYWORDS]


def default_config(labels: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> Config:
    return Config({label: float(threshold) for label in keywords_of(labels)})


def valid_threshold(value) -> bool:
    """A threshold that can fire and can fail: a number in (0, 1]."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 < value <= 1.0)


def positive_at_most(high: float):
    """An argparse type: a number in (0, `high`]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"must be in (0, {high:g}], got {value}")
        return value
    return parse


threshold_arg = positive_at_most(1.0)  # the --threshold type of the detect commands


def config_to_dict(config: Config) -> dict:
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(config)}


def config_to_json(config: Config) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"


def _whole(fields: dict, key: str, low: int, high: int) -> int:
    value = fields[key]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value == int(value) and low <= value <= high):
        raise ValueError(f"{key}: must be a whole number in [{low}, {high}], got {value!r}")
    return int(value)


def config_from_dict(fields: dict, labels: Sequence[str]) -> Config:
    """detection.json's content, every value checked (raises ValueError naming the key).

    Args:
      fields: the parsed JSON object.
      labels: the model's labels; the thresholds must name exactly its keywords.
    """
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    fields = dict(fields)
    if fields.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"format_version: must be {FORMAT_VERSION}")
    known = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (the keys are {', '.join(sorted(known))})")
    defaults = config_to_dict(default_config(labels))
    fields = {**{key: defaults[key] for key in known if key != "chosen_on"}, **fields}
    thresholds = fields["thresholds"]
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds: must be an object of keyword: threshold, got "
                         f"{thresholds!r}")
    keywords = keywords_of(labels)
    for keyword in keywords:
        if keyword not in thresholds:
            raise ValueError(f"thresholds.{keyword}: missing (the model's keywords are "
                             f"{', '.join(keywords)})")
    for keyword, value in thresholds.items():
        if keyword not in keywords:
            raise ValueError(f"thresholds.{keyword}: not a keyword of the model (its "
                             f"keywords are {', '.join(keywords)})")
        if not valid_threshold(value):
            raise ValueError(f"thresholds.{keyword}: must be a number in (0, 1], got "
                             f"{value!r}")
    window_ms = _whole(fields, "window_ms", *WINDOW_RANGE_MS)
    hop_ms = _whole(fields, "hop_ms", 1, window_ms)
    smoothing = _whole(fields, "smoothing", 1, MAX_SMOOTHING)
    refractory = fields["refractory_ms"]
    if (isinstance(refractory, bool) or not isinstance(refractory, (int, float))
            or not 0 <= refractory <= MAX_REFRACTORY_MS):
        raise ValueError(f"refractory_ms: must be a number in [0, {MAX_REFRACTORY_MS}], got "
                         f"{refractory!r}")
    chosen_on = fields.get("chosen_on")
    if chosen_on is not None and not isinstance(chosen_on, dict):
        raise ValueError(f"chosen_on: must be an object or null, got {chosen_on!r}")
    return Config({keyword: float(value) for keyword, value in thresholds.items()},
                  window_ms, hop_ms, smoothing, refractory, chosen_on)


def config_from_json(text: str, labels: Sequence[str]) -> Config:
    """Parses detection.json, checked against the model's labels (raises ValueError)."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    return config_from_dict(fields, labels)


def operating_point(text: Optional[str], labels: Sequence[str], threshold: Optional[float],
                    where: str) -> tuple[Config, list[str]]:
    """The config a detection command runs with, and the notes it prints on stderr.

    Args:
      text: the content of `where`/detection.json, or None when there is none.
      labels: the model's labels.
      threshold: --threshold, which replaces every keyword's threshold.
      where: the export folder, as named in the notes.
    Raises ValueError when `text` is not a config for these labels.
    """
    notes = []
    if UNKNOWN_LABEL not in labels:
        notes.append(f"warning: {where}: the model has no {UNKNOWN_LABEL} class, so it will "
                     "fire on any speech, not only its keywords (train on a run preprocessed "
                     "with --unknown-percent)")
    if text is not None:
        config = config_from_json(text, labels)
    else:
        config = default_config(labels)
        if threshold is None:
            notes.append(f"note: {where}: no {CONFIG_FILE} (training chooses one for a "
                         f"model with {UNKNOWN_LABEL}); threshold {DEFAULT_THRESHOLD} for "
                         "every keyword")
    return (config.with_threshold(threshold) if threshold is not None else config), notes


# --- windows -----------------------------------------------------------------------

def num_windows(num_samples: int, window: int, hop: int) -> int:
    """Windows on the grid k*hop needed to cover `num_samples` (at least one)."""
    if num_samples <= window:
        return 1
    return math.ceil((num_samples - window) / hop) + 1


def window_times(first: int, count: int, num_samples: int, window: int,
                 hop: int) -> np.ndarray:
    """Seconds at which windows first..first+count-1 end (capped at the file's end)."""
    ends = (np.arange(first, first + count) * hop + window).clip(max=max(num_samples, 1))
    return ends / SAMPLE_RATE


def frame_windows(samples: np.ndarray, offset: int, first: int, count: int, window: int,
                  hop: int) -> np.ndarray:
    """Windows first..first+count-1 cut from `samples`, whose sample 0 is `offset`.

    Samples the buffer does not hold (past the end of the file) are zeros.

    Returns:
      float32 [count, window].
    """
    start = first * hop - offset
    need = start + (count - 1) * hop + window
    if start < 0:
        raise ValueError(f"window {first} starts before the buffer")
    if need > len(samples):
        samples = np.concatenate([samples, np.zeros(need - len(samples), np.float32)])
    view = np.lib.stride_tricks.sliding_window_view(samples[start:need], window)[::hop]
    return np.ascontiguousarray(view[:count], dtype=np.float32)


def smooth(probabilities: np.ndarray, smoothing: int,
           context: Optional[np.ndarray] = None) -> np.ndarray:
    """Causal moving mean over the last `smoothing` windows.

    Args:
      probabilities: [windows, labels].
      smoothing: windows averaged.
      context: the windows just before these (at most smoothing - 1 of them are used);
        None or empty at the start of a file, where fewer windows are averaged.

    Returns:
      float32 [windows, labels].
    """
    probabilities = np.asarray(probabilities, np.float64)
    if context is not None and len(context):
        context = np.asarray(context, np.float64)[-(smoothing - 1):] if smoothing > 1 \
            else context[:0]
    else:
        context = probabilities[:0]
    full = np.concatenate([context, probabilities])
    sums = np.cumsum(np.concatenate([np.zeros((1, full.shape[1])), full]), axis=0)
    ends = np.arange(len(context) + 1, len(full) + 1)
    starts = np.maximum(ends - smoothing, 0)
    return ((sums[ends] - sums[starts]) / (ends - starts)[:, None]).astype(np.float32)


# --- candidates and events ----------------------------------------------------------

class Candidates(NamedTuple):
    """Windows where a keyword's smoothed score reached its threshold."""
    index: np.ndarray  # int64 window numbers
    time: np.ndarray  # float64 seconds
    label: np.ndarray  # int64 index into the keyword list
    score: np.ndarray  # float32


class Event(NamedTuple):
    time: float
    label: str
    score: float


def threshold_vector(config: Config, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(columns of the keywords in the model's output, their thresholds)."""
    columns = np.array([i for i, label in enumerate(labels) if label in config.thresholds])
    return columns, np.array([config.thresholds[labels[i]] for i in columns], np.float32)


def find_candidates(smoothed: np.ndarray, first: int, times: np.ndarray,
                    columns: np.ndarray, thresholds: np.ndarray) -> Candidates:
    """The candidates among windows first..first+len(smoothed)-1.

    The best keyword of a window (highest smoothed score) is its candidate label; the
    window is a candidate when that score reaches the keyword's threshold.
    """
    keyword_scores = smoothed[:, columns]
    best = keyword_scores.argmax(axis=1)
    score = keyword_scores[np.arange(len(best)), best]
    hit = np.flatnonzero(score >= thresholds[best])
    return Candidates(hit + first, np.asarray(times)[hit], best[hit], score[hit])


def concat_candidates(parts: Iterable[Candidates]) -> Candidates:
    parts = list(parts)
    if not parts:
        return Candidates(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64),
                          np.zeros(0, np.float32))
    merged = Candidates(*(np.concatenate(column) for column in zip(*parts)))
    order = np.argsort(merged.index, kind="stable")
    return Candidates(*(column[order] for column in merged))


class EventState(NamedTuple):
    """What firing needs to remember between batches of candidates."""
    last_event_time: float = -math.inf
    last_index: int = -2
    last_label: int = -1


def fire(candidates: Candidates, keywords: Sequence[str], refractory_s: float,
         state: EventState = EventState()) -> tuple[list[Event], EventState]:
    """Events from candidates in window order; the state carries on to the next batch."""
    events = []
    last_time, last_index, last_label = state
    for index, time, label, score in zip(*(c.tolist() for c in candidates)):
        starts_run = not (index == last_index + 1 and label == last_label)
        if starts_run and time - last_time >= refractory_s - 1e-9:
            events.append(Event(round(time, 4), keywords[label], round(score, 4)))
            last_time = time
        last_index, last_label = index, label
    return events, EventState(last_time, last_index, last_label)


def detect(probabilities: np.ndarray, num_samples: int, labels: Sequence[str],
           config: Config) -> list[Event]:
    """Events of a whole file from the probabilities of all its windows."""
    times = window_times(0, len(probabilities), num_samples, config.window, config.hop)
    columns, thresholds = threshold_vector(config, labels)
    candidates = find_candidates(smooth(probabilities, config.smoothing), 0, times,
                                 columns, thresholds)
    return fire(candidates, [labels[i] for i in columns], config.refractory_ms / 1000)[0]


class EventStream:
    """Events of one recording whose window probabilities arrive in consecutive batches.

    Holds only the last `smoothing - 1` windows and the firing state, so a recording of
    any length costs the memory of one batch.
    """

    def __init__(self, labels: Sequence[str], config: Config):
        self.config = config
        self.columns, self.thresholds = threshold_vector(config, labels)
        self.keywords = [labels[i] for i in self.columns]
        self.next_index = 0
        self._context: Optional[np.ndarray] = None
        self._state = EventState()

    def push(self, probabilities: np.ndarray, times: np.ndarray
             ) -> tuple[list[Event], np.ndarray]:
        """The next windows' probabilities [n, labels] and times -> (events, smoothed)."""
        smoothed = smooth(probabilities, self.config.smoothing, self._context)
        candidates = find_candidates(smoothed, self.next_index, times, self.columns,
                                     self.thresholds)
        events, self._state = fire(candidates, self.keywords,
                                   self.config.refractory_ms / 1000, self._state)
        keep = self.config.smoothing - 1
        if keep:
            joined = probabilities if self._context is None else np.concatenate(
                [self._context, probabilities])
            self._context = joined[-keep:]
        self.next_index += len(probabilities)
        return events, smoothed


