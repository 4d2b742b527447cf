"""Hard-negative mining: which windows are learnt from, and the command end to end."""

import json

import numpy as np
import pytest
import tensorflow as tf

from pipelines import contract, events, preprocess
from pipelines.errors import UserError
from tests import wavs
from trainer import mine, streams, task

LABELS = ["_silence_", "_unknown_", "no", "yes"]
RATE = contract.SAMPLE_RATE
CONFIG = events.Config({"no": 0.5, "yes": 0.5}, smoothing=1)


def scored(stream, hot: dict) -> np.ndarray:
    """Probabilities of every window: `_silence_` everywhere but the windows ending in
    each (start_s, end_s) of `hot`, where the given label scores 0.9."""
    count = events.num_windows(len(stream.audio), CONFIG.window, CONFIG.hop)
    probabilities = np.tile(np.array([[0.9, 0.1, 0.0, 0.0]], np.float32), (count, 1))
    ends = events.window_times(0, count, len(stream.audio), CONFIG.window, CONFIG.hop)
    for (start, stop), label in hot.items():
        rows = (ends >= start) & (ends <= stop)
        probabilities[rows] = 0.1 / 3
        probabilities[rows, LABELS.index(label)] = 0.9
    return probabilities


def test_windows_near_firing_where_they_should_not_are_mined_with_the_right_label():
    clip = np.full(RATE, 0.1, np.float32)
    stream = streams.mix_stream(12 * RATE, [
        streams.Placement("yes", clip, 1 * RATE),       # 1..2 s: a keyword
        streams.Placement("_unknown_", clip, 5 * RATE),  # 5..6 s: another word
        streams.Placement("no", clip, 9 * RATE)])        # 9..10 s: a keyword
    probabilities = scored(stream, {
        (1.9, 2.1): "yes",    # the keyword said, heard: a detection, not mined
        (5.9, 6.1): "yes",    # another word heard as yes: _unknown_
        (7.6, 7.8): "no",     # noise alone: _silence_
        (9.9, 10.1): "yes"})  # "no" said, heard as yes: a hard positive, "no"
    mined = mine.mine_stream(stream, probabilities, LABELS, CONFIG, near=0.5)
    found = sorted((item.kind, item.label, item.heard) for item in mined)
    assert found == [("confused keyword", "no", "yes"), ("noise", "_silence_", "no"),
                     ("other word", "_unknown_", "yes")]
    assert all(item.waveform.shape == (RATE,) for item in mined)


def test_one_window_per_false_alarm_and_records_in_the_contract(tmp_path):
    clip = np.full(RATE, 0.1, np.float32)
    stream = streams.mix_stream(8 * RATE, [streams.Placement("_unknown_", clip, 3 * RATE)])
    mined = mine.mine_stream(stream, scored(stream, {(3.5, 4.5): "yes"}), LABELS, CONFIG,
                             near=0.5)
    assert len(mined) == 1  # a run of windows is one false alarm
    path = tmp_path / "mined" / "round-1.tfrecord"
    mine.write_mined(str(path), mined, LABELS, 1)
    (record,) = list(tf.data.TFRecordDataset(str(path)))
    parsed = contract.parse_example(record, waveform=True)
    assert parsed[contract.LABEL_NAME].numpy() == b"_unknown_"
    assert parsed[contract.LABEL].numpy() == LABELS.index("_unknown_")
    np.testing.assert_allclose(parsed[contract.WAVEFORM].numpy(), mined[0].waveform)


def test_the_command_fine_tunes_a_job_and_writes_a_job_like_any_other(tmp_path):
    root = wavs.copy_sample(tmp_path / "data", ["yes", "no", "up", "left"], per_label=12)
    noise = root / contract.BACKGROUND_NOISE_DIR
    noise.mkdir()
    for path in sorted((wavs.SAMPLE / contract.BACKGROUND_NOISE_DIR).glob("*.wav"))[:2]:
        noise.joinpath(path.name).write_bytes(path.read_bytes())
    out, base, job = tmp_path / "out", tmp_path / "base", tmp_path / "job"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--labels", "yes,no",
                    "--unknown-percent", "100", "--silence-percent", "20", "--split",
                    "random", "--val-percent", "25", "--test-percent", "25"])
    task.run(["--data-dir", str(out), "--job-dir", str(base), "--epochs", "2",
              "--batch-size", "8", "--verbose", "0", "--no-report",
              "--calibration-minutes", "1"])
    mine.run(["--base-job", str(base), "--data-dir", str(out), "--job-dir", str(job),
              "--rounds", "1", "--minutes", "1", "--epochs", "1", "--near", "0.2",
              "--calibration-minutes", "1", "--verbose", "0", "--no-report"])
    metrics = json.loads((job / "metrics.json").read_text())
    rounds = metrics["mining"]
    assert [row["round"] for row in rounds] == [0, 1]
    assert rounds[1]["mined"]["windows"] > 0 and metrics["settings"]["base_job"] == str(base)
    assert metrics["settings"]["mining"]["kept_round"] in (0, 1)
    assert (job / "mined" / "round-1.tfrecord").stat().st_size > 0
    for name in ("saved_model.pb", "model_int8.tflite", "model_stream_int8.tflite",
                 "detection.json", "labels.txt"):
        assert (job / "export" / name).exists(), name
    assert metrics["streaming"]["keyword_free"]["minutes"] > 0
    with pytest.raises(UserError, match="not a preprocessing output"):
        mine.run(["--base-job", str(base), "--data-dir", str(root),
                  "--job-dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()
