"""Keyword detection in long audio, from window scores to events and streaming metrics.

Pure numpy; the model that scores the windows lives in `trainer.detect`. The steps:

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

Metrics follow the field's streaming evaluation (TensorFlow's `test_streaming_accuracy`):
an event is a hit when its label is the keyword's and it lies between `HIT_BEFORE_S`
before the spoken clip's start and `HIT_AFTER_S` after its end. Recall is hits over
keywords said; every other event is a false accept (a second event on one keyword, an
event on an `_unknown_` word or on noise, a wrong keyword), counted per hour of audio;
the wrong-label rate is the share of keywords whose window holds only other keywords'
events; the delay is an event's time after its keyword's end.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import json
import math
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from trainer.streams import SAMPLE_RATE, SILENCE, UNKNOWN, Truth

FORMAT_VERSION = 1
CONFIG_FILE = "detection.json"  # beside the SavedModel, in JOB/export/
NON_KEYWORDS = (UNKNOWN, SILENCE)
WINDOW_MS = 1_000
HOP_MS = 96  # 12 STFT steps: windows share their frames (trainer.detect.Scorer)
SMOOTHING = 3
REFRACTORY_MS = 1_000
DEFAULT_THRESHOLD = 0.8  # for a model without a chosen operating point
HIT_BEFORE_S = 0.25
HIT_AFTER_S = 0.75
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.concatenate([
    np.arange(0.30, 0.8999, 0.025), np.arange(0.90, 0.995, 0.01)]), 3))
SMOOTHING_CHOICES = (1, 3, 5)
MAX_FALSE_ACCEPTS_PER_HOUR = 6.0  # the operating point's budget on validation streams


@dataclasses.dataclass(frozen=True)
class Config:
    """How a model's scores become events; stored as export/detection.json."""
    thresholds: dict  # keyword -> smoothed-score threshold
    window_ms: int = WINDOW_MS
    hop_ms: int = HOP_MS
    smoothing: int = SMOOTHING
    refractory_ms: int = REFRACTORY_MS
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


def threshold_arg(text: str) -> float:
    """A --threshold value: a number in (0, 1] (the argparse type of the detect commands)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def config_to_dict(config: Config) -> dict:
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(config)}


def config_to_json(config: Config) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"


def config_from_json(text: str, labels: Sequence[str]) -> Config:
    """Parses detection.json, checked against the model's labels (raises ValueError)."""
    fields = json.loads(text)
    if fields.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"not format version {FORMAT_VERSION}")
    known = {field.name for field in dataclasses.fields(Config)}
    config = Config(**{key: value for key, value in fields.items() if key in known})
    if set(config.thresholds) != set(keywords_of(labels)):
        raise ValueError(f"thresholds for {sorted(config.thresholds)}, but the model's "
                         f"keywords are {keywords_of(labels)}")
    if config.hop <= 0 or config.window <= 0 or config.smoothing < 1:
        raise ValueError("window, hop and smoothing must be positive")
    return config


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
    if UNKNOWN not in labels:
        notes.append(f"warning: {where}: the model has no {UNKNOWN} class, so it will fire "
                     "on any speech, not only its keywords (train on a run preprocessed "
                     "with --unknown-percent)")
    if text is not None:
        config = config_from_json(text, labels)
    else:
        config = default_config(labels)
        if threshold is None:
            notes.append(f"note: {where}: no {CONFIG_FILE} (training chooses one for a "
                         f"model with {UNKNOWN}); threshold {DEFAULT_THRESHOLD} for every "
                         "keyword")
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


# --- metrics ------------------------------------------------------------------------

class Match(NamedTuple):
    """Events matched against the truth of one recording."""
    hits: list  # (Truth, Event) pairs
    misses: list  # keyword Truths without a hit
    wrong_label: list  # keyword Truths whose window holds only other keywords' events
    false_accepts: list  # Events that are not hits


def hit_window(truth: Truth) -> tuple[float, float]:
    return truth.start_ms / 1000 - HIT_BEFORE_S, truth.end_ms / 1000 + HIT_AFTER_S


def match_events(events: Sequence[Event], truth: Sequence[Truth]) -> Match:
    """Matches events to keywords: each keyword takes its earliest unused same-label event."""
    events = sorted(events, key=lambda event: event.time)
    times = [event.time for event in events]
    used = [False] * len(events)
    hits, misses, wrong = [], [], []
    for spoken in sorted(truth, key=lambda t: t.start_ms):
        if spoken.label in NON_KEYWORDS:
            continue
        low, high = hit_window(spoken)
        inside = range(bisect.bisect_left(times, low - 1e-9),
                       bisect.bisect_right(times, high + 1e-9))
        same = [i for i in inside if not used[i] and events[i].label == spoken.label]
        if same:
            used[same[0]] = True
            hits.append((spoken, events[same[0]]))
        else:
            misses.append(spoken)
            if inside:
                wrong.append(spoken)
    false_accepts = [event for event, taken in zip(events, used) if not taken]
    return Match(hits, misses, wrong, false_accepts)


def stream_metrics(matches: Sequence[Match], duration_s: float) -> dict:
    """Recall, false accepts per hour, wrong-label rate and delay over recordings.

    Args:
      matches: one Match per recording.
      duration_s: their total length.
    """
    hits = [pair for match in matches for pair in match.hits]
    keywords = len(hits) + sum(len(match.misses) for match in matches)
    false_accepts = sum(len(match.false_accepts) for match in matches)
    delays = [event.time - spoken.end_ms / 1000 for spoken, event in hits]
    hours = duration_s / 3600
    said = collections.Counter(spoken.label for spoken, _ in hits)
    said.update(spoken.label for match in matches for spoken in match.misses)
    found = collections.Counter(spoken.label for spoken, _ in hits)
    return {
        "keywords": keywords, "hits": len(hits), "false_accepts": false_accepts,
        "wrong_label": sum(len(match.wrong_label) for match in matches),
        "hours": round(hours, 4),
        "recall": len(hits) / keywords if keywords else 0.0,
        "false_accepts_per_hour": false_accepts / hours if hours else 0.0,
        "wrong_label_rate": (sum(len(m.wrong_label) for m in matches) / keywords
                             if keywords else 0.0),
        "mean_delay_s": float(np.mean(delays)) if delays else None,
        "recall_per_keyword": {label: found[label] / said[label] for label in sorted(said)},
    }


class ScoredStream(NamedTuple):
    """A recording's window probabilities and its truth: what the sweeps work on."""
    probabilities: np.ndarray  # [windows, labels]
    num_samples: int
    truth: list


def evaluate(scored: Sequence[ScoredStream], labels: Sequence[str], config: Config) -> dict:
    """Streaming metrics of `config` on scored recordings."""
    matches = [match_events(detect(s.probabilities, s.num_samples, labels, config), s.truth)
               for s in scored]
    return stream_metrics(matches, sum(s.num_samples for s in scored) / SAMPLE_RATE)


def det_curve(scored: Sequence[ScoredStream], labels: Sequence[str], config: Config,
              thresholds: Sequence[float] = THRESHOLD_GRID) -> list[dict]:
    """Miss rate and false accepts per hour with one threshold for every keyword.

    Returns:
      One row per threshold, ascending: threshold, recall, miss_rate,
      false_accepts_per_hour, wrong_label_rate, mean_delay_s.
    """
    rows = []
    for threshold in sorted(thresholds):
        metrics = evaluate(scored, labels, config.with_threshold(threshold))
        rows.append({"threshold": float(threshold), "recall": metrics["recall"],
                     "miss_rate": 1.0 - metrics["recall"],
                     "false_accepts_per_hour": metrics["false_accepts_per_hour"],
                     "wrong_label_rate": metrics["wrong_label_rate"],
                     "mean_delay_s": metrics["mean_delay_s"]})
    return rows


def best_row(curve: Sequence[dict], max_false_accepts_per_hour: float) -> dict:
    """The highest recall within the false-accept budget (ties: the higher threshold).

    When no threshold keeps within the budget, the row with the fewest false accepts.
    """
    within = [row for row in curve
              if row["false_accepts_per_hour"] <= max_false_accepts_per_hour]
    if not within:
        return min(curve, key=lambda row: (row["false_accepts_per_hour"], -row["threshold"]))
    return max(within, key=lambda row: (row["recall"], row["threshold"]))


def choose_operating_point(scored: Sequence[ScoredStream], labels: Sequence[str],
                           base: Optional[Config] = None,
                           smoothing_choices: Sequence[int] = SMOOTHING_CHOICES,
                           thresholds: Sequence[float] = THRESHOLD_GRID,
                           max_false_accepts_per_hour: float = MAX_FALSE_ACCEPTS_PER_HOUR,
                           ) -> tuple[Config, dict]:
    """Chooses smoothing and threshold on (validation) recordings.

    For each smoothing, the DET curve over `thresholds`; the operating point is the
    highest recall whose false accepts per hour keep within the budget.

    Returns:
      (the chosen Config, {smoothing: its DET curve}).
    """
    base = base or default_config(labels)
    curves, best = {}, None
    for smoothing in smoothing_choices:
        config = dataclasses.replace(base, smoothing=int(smoothing))
        curves[int(smoothing)] = det_curve(scored, labels, config, thresholds)
        row = best_row(curves[int(smoothing)], max_false_accepts_per_hour)
        key = (row["false_accepts_per_hour"] <= max_false_accepts_per_hour, row["recall"],
               -row["false_accepts_per_hour"])
        if best is None or key > best[0]:
            best = (key, config, row)
    _, config, row = best
    chosen = dataclasses.replace(config.with_threshold(row["threshold"]), chosen_on={
        "max_false_accepts_per_hour": max_false_accepts_per_hour,
        "hours": round(sum(s.num_samples for s in scored) / SAMPLE_RATE / 3600, 4),
        "recall": row["recall"], "false_accepts_per_hour": row["false_accepts_per_hour"]})
    return chosen, curves
