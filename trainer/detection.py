"""Keyword detection measured: events matched to the truth, streaming metrics, DET curves
and the choice of an operating point. Pure numpy.

Metrics follow the field's streaming evaluation (TensorFlow's `test_streaming_accuracy`):
an event is a hit when its label is the keyword's and it lies between `HIT_BEFORE_S`
before the spoken clip's start and `HIT_AFTER_S` after its end. Recall is hits over
keywords said; every other event is a false accept (a second event on one keyword, an
event on an `_unknown_` word or on noise, a wrong keyword), counted per hour of audio;
the wrong-label rate is the share of keywords whose window holds only other keywords'
events; the delay is an event's time after its keyword's end.

How window scores become events is `pipelines.events`; the recordings and their truth
are `trainer.streams`.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
from typing import Collection, NamedTuple, Optional, Sequence

import numpy as np

from pipelines.contract import SAMPLE_RATE
from pipelines.events import NON_KEYWORDS, Config, Event, default_config, detect
from trainer.streams import Truth

HIT_BEFORE_S = 0.25
HIT_AFTER_S = 0.75
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.concatenate([
    np.arange(0.30, 0.8999, 0.025), np.arange(0.90, 0.995, 0.01)]), 3))
SMOOTHING_CHOICES = (1, 3, 5)
MAX_FALSE_ACCEPTS_PER_HOUR = 6.0  # the operating point's budget on validation streams


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


def keyword_curve(scored: Sequence[ScoredStream], labels: Sequence[str], config: Config,
                  keyword: str, thresholds: Sequence[float] = THRESHOLD_GRID) -> list[dict]:
    """One keyword's recall and false accepts per hour at each of `thresholds` (its own
    events alone; the other keywords are silenced)."""
    return keywords_curve(scored, labels, config, {keyword}, thresholds)


def keywords_curve(scored: Sequence[ScoredStream], labels: Sequence[str], config: Config,
                   keywords: Collection[str],
                   thresholds: Sequence[float] = THRESHOLD_GRID) -> list[dict]:
    """Some keywords' recall (of all their utterances together) and false accepts per
    hour with one threshold for them at each of `thresholds` (their events alone; the
    other keywords are silenced)."""
    keywords = set(keywords)
    said = sum(spoken.label in keywords for stream in scored for spoken in stream.truth)
    rows = []
    for threshold in thresholds:
        trial = dataclasses.replace(config, thresholds={
            **config.thresholds, **{keyword: float(threshold) for keyword in keywords}})
        metrics = evaluate(scored, labels, only(trial, keywords))
        rows.append({"threshold": float(threshold),
                     "recall": metrics["hits"] / said if said else 0.0,
                     "false_accepts_per_hour": metrics["false_accepts_per_hour"]})
    return rows


def only(config: Config, keywords: Collection[str]) -> Config:
    """`config` with every keyword outside `keywords` silenced (a threshold no score
    reaches), to count the events of some keywords alone."""
    return dataclasses.replace(config, thresholds={
        label: value if label in keywords else 2.0
        for label, value in config.thresholds.items()})


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


# --- text ---------------------------------------------------------------------------

def format_metrics(metrics: dict) -> str:
    """One line of streaming metrics (`stream_metrics`' result)."""
    delay = metrics["mean_delay_s"]
    return (f"recall {metrics['recall']:.3f} ({metrics['hits']}/{metrics['keywords']} "
            f"keywords), {metrics['false_accepts_per_hour']:.1f} false accepts per hour "
            f"({metrics['false_accepts']} in {metrics['hours'] * 60:.1f} min), wrong label "
            f"{metrics['wrong_label_rate']:.3f}, mean delay "
            + ("-" if delay is None else f"{delay:.2f} s") + " after the keyword's end")


def format_streaming(streaming: dict) -> str:
    """One line on the operating point training chose and its test figures."""
    point, test = streaming["operating_point"], streaming["test"]
    threshold = sorted(set(point["thresholds"].values()))
    free = streaming.get("keyword_free")
    return (f"Detection on {test['streams']} generated test recordings of "
            f"{test['stream_seconds'] / 60:.0f} min, threshold {threshold} and smoothing "
            f"{point['smoothing']} chosen on val: {format_metrics(test)}"
            + (f"; on {free['minutes']:g} min of keyword-free test audio "
               f"{free['false_accepts_per_hour']:.1f} false accepts per hour" if free else ""))


def format_split(metrics: dict) -> str:
    """One line on the metrics of one split's generated recordings."""
    return (f"Detection on {metrics['streams']} generated {metrics['split']} recordings of "
            f"{metrics['stream_seconds'] / 60:.1f} min: {format_metrics(metrics)}")
