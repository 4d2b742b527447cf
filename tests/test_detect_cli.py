"""trainer.detect on generated recordings with keywords at known places.

The model is a tiny exported Keras model that answers "yes" for any window holding
speech-loud frames and `_unknown_` for quiet noise: what detection does with scores
(windows, smoothing, events, the block reader) is what these tests check, and such a
model makes the right events obvious.
"""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
import soundfile

from pipelines import contract
from tests import wavs
from pipelines import events
from trainer import calibrate, detect, detection, export, scoring, streams

LABELS = ["_silence_", "_unknown_", "no", "yes"]
RATE = contract.SAMPLE_RATE


def energy_model(num_labels: int = 4) -> keras.Model:
    """[batch, 124, 129] |STFT| -> logits: the loudest frame's mean log-magnitude, e,
    decides: silence near 0, `_unknown_` below about 0.1 (quiet noise), then "yes"."""
    inputs = keras.Input(contract.SPECTROGRAM_SHAPE)
    loudest = keras.layers.Lambda(lambda s: keras.ops.max(
        keras.ops.mean(keras.ops.log1p(s), axis=-1), axis=-1, keepdims=True))(inputs)
    dense = keras.layers.Dense(num_labels)
    model = keras.Model(inputs, dense(loudest))
    weights = np.array([[-50.0, 0.0, 40.0, 40.0]])[:, :num_labels]
    biases = np.array([1.0, 0.0, -7.0, -4.0])[:num_labels]
    if num_labels == 2:  # labels "no", "yes": no _unknown_ to fall back on
        weights, biases = np.array([[0.0, 40.0]]), np.array([0.0, -4.0])
    dense.set_weights([weights, biases])
    return model


def export_energy_model(job: pathlib.Path, labels=LABELS, compile_waveform=True
                        ) -> pathlib.Path:
    export.export_model(energy_model(len(labels)), list(labels), str(job / "export"),
                        compile_waveform=compile_waveform)
    return job


def yes_clips(count=3):
    return [wavs.read_clip(path)[0] for path in wavs.sample_clips("yes", count)]


def recording(seconds: float = 20.0, seed: int = 0) -> streams.Stream:
    """Quiet noise with "yes" at the very start, in the middle and cut at the very end."""
    clips = yes_clips()
    length = int(seconds * RATE)
    noise = np.random.default_rng(seed).normal(0, 0.002, length).astype(np.float32)
    return streams.mix_stream(length, [
        streams.Placement("yes", clips[0], 0),
        streams.Placement("yes", clips[1], length // 2),
        streams.Placement("yes", clips[2], length - RATE * 3 // 4)], noise)


def write_wav(path: pathlib.Path, samples: np.ndarray) -> pathlib.Path:
    path.write_bytes(wavs.wav_bytes(samples, subtype="FLOAT"))
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return export_energy_model(tmp_path_factory.mktemp("detect") / "job")


@pytest.fixture(scope="module")
def scorer(job):
    return scoring.Scorer(str(job))


def test_keywords_at_the_start_middle_and_end_give_one_event_each(job, tmp_path, capsys):
    stream = recording()
    wav = write_wav(tmp_path / "long.wav", stream.audio)
    results = detect.run(["--model-dir", str(job), str(wav)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(results) == 3
    path, time, label, score = lines[0].split("\t")
    assert path == str(wav) and label == "yes" and 0.5 <= float(score) <= 1
    match = detection.match_events(
        [events.Event(r["time"], r["label"], r["score"]) for r in results], stream.truth)
    assert len(match.hits) == 3 and not match.false_accepts
    assert results[-1]["time"] <= len(stream.audio) / RATE


def test_blocks_of_any_size_give_the_events_of_the_whole_recording(scorer):
    stream = recording(seconds=13.3)
    config = events.default_config(LABELS)
    windows = events.frame_windows(
        stream.audio, 0, 0, events.num_windows(len(stream.audio), config.window, config.hop),
        config.window, config.hop)
    whole = events.detect(scorer(windows), len(stream.audio), LABELS, config)
    assert len(whole) == 3
    for block in (4001, 5 * RATE + 3, len(stream.audio)):
        blocks = [stream.audio[i:i + block] for i in range(0, len(stream.audio), block)]
        found = scoring.detect_blocks(blocks, scorer, config)
        assert found.events == whole, block
        assert found.num_samples == len(stream.audio)


def test_json_lines_truth_metrics_and_plot(job, tmp_path, capsys):
    stream = recording()
    wav = write_wav(tmp_path / "long.wav", stream.audio)
    truth = tmp_path / "truth.csv"
    truth.write_text(streams.format_truth_csv(stream.truth))
    plot = tmp_path / "plot.png"
    detect.run(["--model-dir", str(job), str(wav), "--json", "--truth", str(truth),
                "--plot", str(plot)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fired, summary = rows[:-1], rows[-1]
    assert [set(row) for row in fired] == [{"path", "label", "time", "score"}] * 3
    assert summary["metrics"]["recall"] == 1.0
    assert summary["metrics"]["false_accepts"] == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stored_operating_point_is_used_unless_a_threshold_is_given(tmp_path, capsys):
    job = export_energy_model(tmp_path / "job", compile_waveform=False)
    wav = write_wav(tmp_path / "long.wav", recording().audio)
    assert len(detect.run(["--model-dir", str(job), str(wav)])) == 3
    assert "no detection.json" in capsys.readouterr().err
    config = events.default_config(LABELS).with_threshold(1.0)
    calibrate.write_config(str(job / "export"), config)
    assert detect.run(["--model-dir", str(job), str(wav)]) == []
    assert len(detect.run(["--model-dir", str(job), str(wav), "--threshold", "0.5"])) == 3
    assert "no detection.json" not in capsys.readouterr().err


def test_bad_files_get_one_line_each_and_the_others_are_processed(job, tmp_path, capsys):
    good = write_wav(tmp_path / "good.wav", recording().audio)
    bad = []
    for name, data in wavs.broken_files().items():
        (tmp_path / name).write_bytes(data)
        bad.append(tmp_path / name)
    missing = tmp_path / "missing.wav"
    files = [str(p) for p in bad[:3]] + [str(good), str(missing)] + [str(p) for p in bad[3:]]
    code = detect.main(["--model-dir", str(job)] + files)
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.strip().splitlines()) == 3  # the good file's events
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad) + 2  # one per bad file, then the summary
    for path in bad + [missing]:
        assert sum(str(path) in line for line in errors) == 1
    assert "Traceback" not in captured.err


def test_user_errors_end_in_one_line(job, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", recording(seconds=3).audio)
    assert detect.main(["--model-dir", str(tmp_path / "nope"), str(wav)]) == 2
    assert "model directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--model-dir", str(job), str(wav), "--threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
    assert detect.main(["--model-dir", str(job), str(wav), str(wav), "--truth", "x.csv"]) == 2
    assert "exactly one" in capsys.readouterr().err
    bad_truth = tmp_path / "truth.csv"
    bad_truth.write_text("yes,1000\n")
    assert detect.main(["--model-dir", str(job), str(wav), "--truth", str(bad_truth)]) == 2
    assert f"{bad_truth}: row 1" in capsys.readouterr().err


def test_model_without_unknown_is_warned_about(tmp_path, capsys):
    job = export_energy_model(tmp_path / "job", labels=["no", "yes"], compile_waveform=False)
    wav = write_wav(tmp_path / "a.wav", recording(seconds=5).audio)
    detect.run(["--model-dir", str(job), str(wav)])
    assert "no _unknown_ class, so it will fire on any speech" in capsys.readouterr().err


def test_windows_sharing_their_stft_frames_score_as_windows_on_their_own(scorer):
    stream = recording(seconds=9.5)
    config = events.default_config(LABELS)
    count = events.num_windows(len(stream.audio), config.window, config.hop)
    alone = scorer(events.frame_windows(stream.audio, 0, 0, count, config.window,
                                           config.hop))
    shared = scorer.score_span(stream.audio, 0, 0, count, config)
    np.testing.assert_allclose(shared, alone, atol=1e-5)
    later = scorer.score_span(stream.audio[5 * config.hop:], 5 * config.hop, 5, count - 5,
                              config)
    np.testing.assert_allclose(later, alone[5:], atol=1e-5)


def test_predict_says_a_long_recording_had_only_its_first_second_classified(job, tmp_path,
                                                                             capsys):
    from trainer import predict  # pylint: disable=import-outside-toplevel
    long_wav = write_wav(tmp_path / "long.wav", recording(seconds=4).audio)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wavs.sample_clips("yes", 1)[0].read_bytes())
    predict.run(["--model-dir", str(job), str(long_wav), str(clip)])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note")]
    assert notes == [f"note: {long_wav}: 4.0 s long, only its first second was classified "
                     "(python -m trainer.detect finds keywords anywhere in a recording)"]


def test_training_with_unknown_chooses_the_operating_point_and_reports_detection(tmp_path,
                                                                                capsys):
    """The training command on a run with _unknown_: detection.json chosen on val streams,
    streaming metrics and the DET curve on test streams in metrics.json and report.html."""
    from pipelines import preprocess  # pylint: disable=import-outside-toplevel
    from trainer import evaluate, task  # pylint: disable=import-outside-toplevel
    root = wavs.copy_sample(tmp_path / "data", ["yes", "no", "left", "up"], per_label=12)
    noise = root / "_background_noise_"
    noise.mkdir()
    for path in sorted((wavs.SAMPLE / "_background_noise_").glob("*.wav"))[:2]:
        noise.joinpath(path.name).write_bytes(path.read_bytes())
    out, job_dir = tmp_path / "out", tmp_path / "job"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--labels", "yes,no",
                    "--unknown-percent", "50", "--silence-percent", "20", "--split",
                    "random", "--val-percent", "25", "--test-percent", "25"])
    task.run(["--data-dir", str(out), "--job-dir", str(job_dir), "--epochs", "1",
              "--batch-size", "8", "--verbose", "0"])
    config = scoring.read_config(scoring.Scorer(str(job_dir)))
    assert config is not None and set(config.thresholds) == {"no", "yes"}
    assert config.chosen_on["split"] == "val"
    metrics = json.loads((job_dir / "metrics.json").read_text())
    streaming = metrics["streaming"]
    assert streaming["operating_point"]["thresholds"] == config.thresholds
    test = streaming["test"]
    assert test["split"] == "test" and test["keywords"] > 0
    assert 0 <= test["recall"] <= 1 and test["false_accepts_per_hour"] >= 0
    assert len(test["det_curve"]) == len(detection.THRESHOLD_GRID)
    assert "DET curve" in (job_dir / "report.html").read_text()
    assert (job_dir / "det_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "Detection on 3 generated test recordings" in capsys.readouterr().out
    evaluated = evaluate.run(["--data-dir", str(out), "--job-dir", str(job_dir), "--split",
                              "val", "--streams", "1"])
    assert evaluated["streaming"]["split"] == "val" and evaluated["streaming"]["streams"] == 1
    # A long recording of the test split and its truth, then detection scored against it.
    long_wav = tmp_path / "long.wav"
    assert calibrate.main(["recording", "--data-dir", str(out), "--seconds", "30",
                           "--output", str(long_wav)]) == 0
    truth = streams.read_truth_csv((tmp_path / "long.csv").read_text())
    assert truth and truth[-1].end_ms <= 30_000
    assert calibrate.main(["recording", "--data-dir", str(out), "--output",
                           str(long_wav)]) == 2
    capsys.readouterr()
    detect.run(["--model-dir", str(job_dir), str(long_wav), "--truth",
                str(tmp_path / "long.csv"), "--json"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["metrics"]["keywords"] == sum(t.label in ("yes", "no") for t in truth)


def test_events_arrive_as_they_fire_not_when_the_file_ends(scorer):
    """The second keyword's event reaches the caller before the last block is read."""
    stream = recording(seconds=20.0)
    block = scoring.BLOCK_SAMPLES
    pieces = [stream.audio[start:start + block] for start in range(0, len(stream.audio), block)]
    read, seen_at = [], []

    def blocks():
        for piece in pieces:
            read.append(len(piece))
            yield piece

    found = scoring.detect_blocks(blocks(), scorer, events.default_config(LABELS),
                                  on_event=lambda event: seen_at.append(len(read)))
    assert len(found.events) == 3 and len(seen_at) == 3
    assert seen_at[0] < len(pieces) and seen_at[1] < len(pieces)


def test_a_plot_that_cannot_be_written_is_refused_before_any_scoring(job, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", recording(seconds=3).audio)
    for plot, reason in ((tmp_path / "no" / "such" / "folder" / "p.png", "does not exist"),
                         (tmp_path / "p.txt", "must name a .png file")):
        assert detect.main(["--model-dir", str(job), str(wav), "--plot", str(plot)]) == 2
        captured = capsys.readouterr()
        assert reason in captured.err and captured.out == ""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere
            assert detect.main(["--model-dir", str(job), str(wav), "--plot",
                                str(locked / "p.png")]) == 2
            assert "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_file_cut_short_and_truth_it_cannot_match_are_warned_about(job, tmp_path, capsys):
    stream = recording(seconds=8.0)
    data = wavs.wav_bytes(stream.audio)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) // 2])  # the header still says 8 s
    truth = tmp_path / "truth.csv"
    truth.write_text("label,start_ms,end_ms\nyes,0,1000\nmaybe,2000,3000\nyes,7000,8000\n")
    detect.run(["--model-dir", str(job), str(cut), "--truth", str(truth)])
    err = capsys.readouterr().err
    assert f"warning: {cut}: the header says 8.0 s but the file holds 4.0 s" in err
    assert f"warning: {truth}: 1 of its rows name labels the model does not have (maybe)" in err
    assert f"warning: {truth}: rows reach 8.0 s, past the end of {cut} (4.0 s)" in err
    assert f"{cut}: 8.0 s of audio ..." not in err and f"{cut}: 4.0 s of audio ..." in err


def test_a_savedmodel_whose_labels_file_does_not_match_is_refused(tmp_path, capsys):
    job = export_energy_model(tmp_path / "job")
    (job / "export" / "labels.txt").write_text("".join(f"{l}\n" for l in LABELS + ["extra"]))
    wav = write_wav(tmp_path / "a.wav", recording(seconds=3).audio)
    assert detect.main(["--model-dir", str(job), str(wav)]) == 2
    assert "labels.txt has 5 labels but the model has 4 outputs" in capsys.readouterr().err


def test_flac_ogg_and_mp3_recordings_are_read(job, scorer, tmp_path, capsys):
    stream = recording(seconds=12.0)
    paths = []
    for name, options in (("a.flac", {}), ("a.ogg", {"subtype": "VORBIS"}),
                          ("a.mp3", {"format": "MP3"})):
        soundfile.write(str(tmp_path / name), stream.audio, RATE, **options)
        paths.append(str(tmp_path / name))
    results = detect.run(["--model-dir", str(job), *paths])
    for path in paths:
        assert [r["label"] for r in results if r["path"] == path] == ["yes"] * 3, path


def test_a_recording_of_a_run_without_waveforms_is_refused_naming_why(tmp_path, capsys):
    from pipelines import preprocess  # pylint: disable=import-outside-toplevel
    root = wavs.copy_sample(tmp_path / "data", ["yes", "no"], per_label=3)
    out = tmp_path / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--no-waveforms",
                    "--split", "random", "--val-percent", "0", "--test-percent", "40"])
    assert calibrate.main(["recording", "--data-dir", str(out), "--output",
                           str(tmp_path / "long.wav")]) == 2
    assert "no stored waveforms (preprocess without --no-waveforms" in capsys.readouterr().err
    assert not (tmp_path / "long.wav").exists()
