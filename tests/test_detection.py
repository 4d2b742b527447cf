"""Detection without a model: windows, smoothing, events, matching and the sweeps."""

import dataclasses
import json
import re

import numpy as np
import pytest

from pipelines import events
from trainer import detection, streams
from pipelines.events import Event
from trainer.streams import Truth

LABELS = ["_silence_", "_unknown_", "no", "yes"]
RATE = streams.SAMPLE_RATE
CONFIG = events.default_config(LABELS, 0.7)


def oracle_probabilities(num_samples, truth, config=CONFIG, spikes=()):
    """Window probabilities of a perfect model: a keyword scores 0.95 in every window that
    holds at least 80% of its clip; `spikes` are (time_s, label, score) false alarms."""
    count = events.num_windows(num_samples, config.window, config.hop)
    starts = np.arange(count) * config.hop / RATE
    probabilities = np.zeros((count, len(LABELS)), np.float32)
    probabilities[:, LABELS.index("_unknown_")] = 1.0
    for spoken in truth:
        low, high = spoken.start_ms / 1000, spoken.end_ms / 1000
        overlap = np.clip(np.minimum(starts + 1, high) - np.maximum(starts, low), 0, None)
        inside = overlap >= 0.8 * (high - low)
        probabilities[inside] = 0.0
        probabilities[inside, LABELS.index(spoken.label)] = 0.95
        probabilities[inside, LABELS.index("_unknown_")] = 0.05
    for time, label, score in spikes:
        row = int(round((time - 1) * RATE / config.hop))
        probabilities[row] = 0.0
        probabilities[row, LABELS.index(label)] = score
        probabilities[row, LABELS.index("_unknown_")] = 1 - score
    return probabilities


def test_window_grid_covers_the_file_and_pads_only_past_its_end():
    window, hop = RATE, RATE // 10
    assert events.num_windows(100, window, hop) == 1
    assert events.num_windows(window, window, hop) == 1
    assert events.num_windows(window + 1, window, hop) == 2
    assert events.num_windows(window + hop, window, hop) == 2
    samples = np.arange(3 * RATE + 123, dtype=np.float32)
    count = events.num_windows(len(samples), window, hop)
    assert count == 22  # the 22nd window starts at 2.1 s and runs past the end (3.0077 s)
    windows = events.frame_windows(samples, 0, 0, count, window, hop)
    np.testing.assert_array_equal(windows[5], samples[5 * hop:5 * hop + window])
    assert windows[-1][-1] == 0 and windows[-1][0] == samples[21 * hop]
    # A buffer that starts later in the file gives the same windows.
    later = events.frame_windows(samples[7 * hop:], 7 * hop, 7, count - 7, window, hop)
    np.testing.assert_array_equal(later, windows[7:])
    times = events.window_times(0, count, len(samples), window, hop)
    assert times[0] == 1.0 and times[1] == pytest.approx(1.1)
    assert times[-1] == pytest.approx(len(samples) / RATE)


def test_smoothing_in_pieces_equals_smoothing_whole():
    probabilities = np.random.default_rng(0).uniform(size=(50, 4)).astype(np.float32)
    whole = events.smooth(probabilities, 3)
    np.testing.assert_allclose(whole[0], probabilities[0])
    np.testing.assert_allclose(whole[1], probabilities[:2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(whole[10], probabilities[8:11].mean(axis=0), rtol=1e-6)
    pieces = [events.smooth(probabilities[:17], 3),
              events.smooth(probabilities[17:], 3, context=probabilities[:17])]
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=1e-6)


def test_one_utterance_gives_one_event_and_the_refractory_period_holds():
    keywords = ["no", "yes"]

    def candidates(rows):
        index, labels = zip(*rows)
        return events.Candidates(np.array(index), np.array(index) * 0.1 + 1.0,
                                    np.array(labels), np.full(len(rows), 0.9, np.float32))

    # A run of 5 windows of "yes", then "no" 0.5 s later, then "yes" again after 1.2 s.
    rows = [(10, 1), (11, 1), (12, 1), (13, 1), (14, 1), (15, 0), (27, 1), (28, 1)]
    fired, _ = events.fire(candidates(rows), keywords, refractory_s=1.0)
    assert [(e.time, e.label) for e in fired] == [(2.0, "yes"), (3.7, "yes")]
    fired, _ = events.fire(candidates(rows), keywords, refractory_s=0.3)
    assert [(e.time, e.label) for e in fired] == [(2.0, "yes"), (2.5, "no"), (3.7, "yes")]
    # Fired in two batches with the state carried over: the same events.
    first, state = events.fire(candidates(rows[:2]), keywords, 1.0)
    second, _ = events.fire(candidates(rows[2:]), keywords, 1.0, state)
    assert first + second == events.fire(candidates(rows), keywords, 1.0)[0]


def test_keywords_at_the_very_start_and_end_of_a_file_are_found():
    num_samples = 20 * RATE + 800
    truth = [Truth("yes", 0.0, 1000.0), Truth("no", 9000.0, 10000.0),
             Truth("_unknown_", 12000.0, 13000.0), Truth("no", 19050.0, 20050.0)]
    probabilities = oracle_probabilities(num_samples, truth)
    fired = events.detect(probabilities, num_samples, LABELS, CONFIG)
    assert [e.label for e in fired] == ["yes", "no", "no"]
    assert fired[0].time == 1.0  # the first window ends with the first keyword
    assert fired[-1].time <= num_samples / RATE
    match = detection.match_events(fired, truth)
    assert len(match.hits) == 3 and not match.false_accepts and not match.misses
    # In batches of any size the stream gives the same events.
    stream = events.EventStream(LABELS, CONFIG)
    pieces = []
    for start in range(0, len(probabilities), 7):
        part = probabilities[start:start + 7]
        times = events.window_times(start, len(part), num_samples, CONFIG.window,
                                       CONFIG.hop)
        pieces += stream.push(part, times)[0]
    assert pieces == fired


def test_hit_window_runs_from_before_the_start_to_after_the_end():
    truth = [Truth("yes", 10_000.0, 11_000.0)]
    inside = [9.75, 10.5, 11.75]
    outside = [9.74, 11.76]
    for time in inside:
        assert len(detection.match_events([Event(time, "yes", 0.9)], truth).hits) == 1
    for time in outside:
        match = detection.match_events([Event(time, "yes", 0.9)], truth)
        assert not match.hits and len(match.false_accepts) == 1 and match.misses == truth


def test_metrics_count_duplicates_unknowns_and_wrong_labels_as_false_accepts():
    truth = [Truth("yes", 2000.0, 3000.0), Truth("no", 6000.0, 7000.0),
             Truth("_unknown_", 10_000.0, 11_000.0), Truth("no", 14_000.0, 15_000.0)]
    fired = [Event(3.2, "yes", 0.9), Event(3.6, "yes", 0.9),  # a hit and its duplicate
              Event(7.1, "yes", 0.9),  # wrong keyword on "no"
              Event(10.9, "no", 0.9),  # on an unknown word
              Event(15.3, "no", 0.9)]  # a hit
    match = detection.match_events(fired, truth)
    metrics = detection.stream_metrics([match], duration_s=1800)
    assert metrics["keywords"] == 3 and metrics["hits"] == 2
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["false_accepts"] == 3
    assert metrics["false_accepts_per_hour"] == pytest.approx(6.0)
    assert metrics["wrong_label"] == 1 and metrics["wrong_label_rate"] == pytest.approx(1 / 3)
    assert metrics["mean_delay_s"] == pytest.approx((0.2 + 0.3) / 2)
    assert metrics["recall_per_keyword"] == {"no": 0.5, "yes": 1.0}


def test_a_curve_of_some_keywords_pools_their_recall_and_counts_their_events_alone():
    truth = [Truth("yes", 2000.0, 3000.0), Truth("no", 6000.0, 7000.0),
             Truth("no", 10_000.0, 11_000.0)]
    unsmoothed = dataclasses.replace(CONFIG, smoothing=1)
    samples = 30 * RATE
    probabilities = oracle_probabilities(samples, truth, unsmoothed, spikes=[(20.0, "yes", 0.8)])
    starts = np.arange(len(probabilities)) * unsmoothed.hop / RATE
    weak = (probabilities[:, LABELS.index("no")] > 0.9) & (starts > 8)  # the second "no"
    assert weak.any()
    probabilities[weak, LABELS.index("no")] = 0.55
    probabilities[weak, LABELS.index("_unknown_")] = 0.45
    scored = [detection.ScoredStream(probabilities, samples, truth)]
    per_hour = 3600 / 30
    no = detection.keywords_curve(scored, LABELS, unsmoothed, {"no"}, [0.5, 0.9])
    assert [(r["recall"], r["false_accepts_per_hour"]) for r in no] == [(1.0, 0.0), (0.5, 0.0)]
    assert detection.keyword_curve(scored, LABELS, unsmoothed, "no", [0.5, 0.9]) == no
    both = detection.keywords_curve(scored, LABELS, unsmoothed, {"no", "yes"}, [0.5, 0.9])
    assert [r["recall"] for r in both] == [1.0, pytest.approx(2 / 3)]  # 3 said, pooled
    assert [r["false_accepts_per_hour"] for r in both] == [pytest.approx(per_hour), 0.0]


def test_operating_point_is_chosen_above_the_false_alarms():
    rng = np.random.default_rng(5)
    scored = []
    for seed in range(2):
        stream = streams.build_stream([("yes", np.zeros(RATE)), ("no", np.zeros(RATE))],
                                      [np.zeros(RATE)], [], duration_s=300, seed=seed,
                                      word_gap_ms=8000)
        spikes = [(float(t), "yes", 0.6) for t in rng.uniform(5, 295, 40)
                  if all(not w.start_ms / 1000 - 2 < t < w.end_ms / 1000 + 2
                         for w in stream.truth)]
        assert len(spikes) > 5
        probabilities = oracle_probabilities(len(stream.audio), stream.truth, spikes=spikes)
        scored.append(detection.ScoredStream(probabilities, len(stream.audio), stream.truth))
    unsmoothed = dataclasses.replace(CONFIG, smoothing=1)
    curve = detection.det_curve(scored, LABELS, unsmoothed)
    low = next(row for row in curve if row["threshold"] <= 0.3)
    high = next(row for row in curve if row["threshold"] == 0.9)
    assert low["false_accepts_per_hour"] > 0 and high["false_accepts_per_hour"] == 0
    assert high["recall"] == 1.0 and high["miss_rate"] == 0.0
    config, curves = detection.choose_operating_point(scored, LABELS, CONFIG,
                                                      max_false_accepts_per_hour=0.0)
    assert set(curves) == set(detection.SMOOTHING_CHOICES)
    assert config.chosen_on["recall"] == 1.0
    assert config.chosen_on["false_accepts_per_hour"] == 0.0
    threshold = config.thresholds["yes"]
    assert config.thresholds == {"no": threshold, "yes": threshold}
    assert detection.evaluate(scored, LABELS, config)["false_accepts"] == 0
    assert detection.evaluate(scored, LABELS, unsmoothed.with_threshold(0.5))["false_accepts"] > 0


def test_config_round_trips_and_is_checked_against_the_model_labels():
    config = dataclasses.replace(CONFIG, smoothing=5, chosen_on={"recall": 0.9})
    text = events.config_to_json(config)
    assert events.config_from_json(text, LABELS) == config
    with pytest.raises(ValueError, match="keywords are"):
        events.config_from_json(text, ["_unknown_", "up", "yes"])
    with pytest.raises(ValueError, match="format_version"):
        events.config_from_json('{"thresholds": {}}', LABELS)


def test_operating_point_reads_the_stored_config_and_says_what_it_falls_back_to():
    labels = ["_silence_", "_unknown_", "no", "yes"]
    stored = events.config_to_json(events.Config(thresholds={"no": 0.6, "yes": 0.7},
                                                       smoothing=5))
    config, notes = events.operating_point(stored, labels, None, "JOB/export")
    assert (config.smoothing, config.thresholds, notes) == (5, {"no": 0.6, "yes": 0.7}, [])
    config, notes = events.operating_point(stored, labels, 0.9, "JOB/export")
    assert config.thresholds == {"no": 0.9, "yes": 0.9} and config.smoothing == 5
    config, notes = events.operating_point(None, labels, None, "JOB/export")
    assert set(config.thresholds.values()) == {events.DEFAULT_THRESHOLD}
    assert notes == [f"note: JOB/export: no detection.json (training chooses one for a model "
                     f"with _unknown_); threshold {events.DEFAULT_THRESHOLD} for every keyword"]
    _, notes = events.operating_point(None, ["no", "yes"], 0.5, "JOB/export")
    assert len(notes) == 1 and notes[0].startswith("warning: JOB/export: the model has no "
                                                   "_unknown_ class")
    with pytest.raises(ValueError, match="keywords are"):
        events.operating_point(stored, ["_unknown_", "no", "up"], None, "JOB/export")


@pytest.mark.parametrize("change, key", [
    ({"thresholds": {"no": 0.0, "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": -0.5, "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": 7, "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": None, "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": float("nan"), "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": "high", "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": True, "yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"yes": 0.7}}, "thresholds.no"),
    ({"thresholds": {"no": 0.7, "yes": 0.7, "left": 0.7}}, "thresholds.left"),
    ({"thresholds": [0.7, 0.7]}, "thresholds"),
    ({"smoothing": 2.5}, "smoothing"),
    ({"smoothing": 0}, "smoothing"),
    ({"smoothing": "3"}, "smoothing"),
    ({"hop_ms": 0.5}, "hop_ms"),
    ({"hop_ms": 0}, "hop_ms"),
    ({"hop_ms": 2000}, "hop_ms"),
    ({"window_ms": 10}, "window_ms"),
    ({"refractory_ms": "1000"}, "refractory_ms"),
    ({"refractory_ms": -1}, "refractory_ms"),
    ({"chosen_on": "val"}, "chosen_on"),
    ({"treshold": 0.3}, "treshold"),
])
def test_every_value_of_detection_json_is_checked_and_the_key_named(change, key):
    """A hand-edited detection.json: a threshold that would fire constantly or never, a
    value of the wrong type or range, a misspelt key: refused, naming the key."""
    fields = {**events.config_to_dict(CONFIG), **change}
    text = json.dumps(fields)
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}:"):
        events.config_from_json(text, LABELS)


def test_detection_json_takes_whole_floats_and_fills_missing_settings():
    fields = {"format_version": 1, "thresholds": {"no": 1, "yes": 0.5},
              "smoothing": 5.0}
    config = events.config_from_json(json.dumps(fields), LABELS)
    assert config.smoothing == 5 and isinstance(config.smoothing, int)
    assert config.thresholds["no"] == 1.0 and config.hop_ms == events.HOP_MS
