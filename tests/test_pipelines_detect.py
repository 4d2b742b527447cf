"""pipelines.detect on both DirectRunner modes: the events of trainer.detect, chunk edges
and all, and bad files in rejected/."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipelines import audio, chunks, events
from pipelines import inputs as inputs_module
from pipelines import detect as beam_detect
from tests import wavs
from tests.test_detect_cli import LABELS, RATE, export_energy_model, yes_clips
from trainer import scoring, streams

CHUNK_SECONDS = 5  # window 50, ending at 6.0 s, opens the second chunk


def chunked_recording(seconds: float = 23.0) -> streams.Stream:
    """Keywords at the very start, across the first chunk edge, and ending at the very end."""
    clips = yes_clips(4)
    length = int(seconds * RATE)
    noise = np.random.default_rng(1).normal(0, 0.002, length).astype(np.float32)
    return streams.mix_stream(length, [
        streams.Placement("yes", clips[0], 0),
        streams.Placement("yes", clips[1], 5 * RATE),
        streams.Placement("yes", clips[2], 13 * RATE + 321),
        streams.Placement("yes", clips[3], length - RATE)], noise)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect_inputs")
    job = export_energy_model(root / "job")
    audio_dir = root / "audio"
    audio_dir.mkdir()
    stream = chunked_recording()
    (audio_dir / "long.wav").write_bytes(wavs.wav_bytes(stream.audio, subtype="FLOAT"))
    # The same recording at 44.1 kHz in stereo: chunks are resampled on their own.
    resampled = audio.soxr.resample(stream.audio, RATE, 44_100, quality="HQ")
    soundfile.write(str(audio_dir / "long_44k.wav"), np.stack([resampled, resampled], 1),
                    44_100, subtype="FLOAT")
    (audio_dir / "short.wav").write_bytes(wavs.wav_bytes(yes_clips(1)[0][:9000]))
    # Other encodings libsndfile reads: FLAC, OGG/Vorbis, MP3, and GSM 6.10 inside a WAV
    # (an encoding libsndfile cannot seek in: chunks are read up to their start).
    soundfile.write(str(audio_dir / "long.flac"), stream.audio, RATE)
    soundfile.write(str(audio_dir / "long.ogg"), stream.audio, RATE, subtype="VORBIS")
    soundfile.write(str(audio_dir / "long.mp3"), stream.audio, RATE, format="MP3")
    soundfile.write(str(audio_dir / "long_gsm.wav"),
                    audio.soxr.resample(stream.audio, RATE, 8000, quality="HQ"), 8000,
                    subtype="GSM610")
    # A name that is not UTF-8: listed, read and reported with \xNN escapes.
    latin1 = os.fsdecode(b"caf\xe9.wav")
    (audio_dir / latin1).write_bytes(wavs.wav_bytes(yes_clips(2)[1]))
    broken = wavs.broken_files()
    for name in ("empty.wav", "text.wav"):
        (audio_dir / name).write_bytes(broken[name])
    return job, audio_dir, stream


@pytest.fixture(scope="module")
def expected(inputs):
    """trainer.detect's events for every readable file."""
    job, audio_dir, _ = inputs
    scorer = scoring.Scorer(str(job))
    config = events.default_config(LABELS)
    return {inputs_module.printable(str(path)): scoring.detect_file(str(path), scorer,
                                                                     config).events
            for path in sorted(audio_dir.iterdir())
            if path.name not in ("empty.wav", "text.wav")}


def test_a_keyword_crosses_the_first_chunk_edge(inputs):
    job, _, stream = inputs
    scorer = scoring.Scorer(str(job))
    config = events.default_config(LABELS)
    count = events.num_windows(len(stream.audio), config.window, config.hop)
    probabilities = scorer(events.frame_windows(stream.audio, 0, 0, count, config.window,
                                                   config.hop))
    columns, thresholds = events.threshold_vector(config, LABELS)
    times = events.window_times(0, count, len(stream.audio), config.window, config.hop)
    candidates = events.find_candidates(events.smooth(probabilities, config.smoothing),
                                           0, times, columns, thresholds)
    edge = CHUNK_SECONDS * 1000 // config.hop_ms
    assert {edge - 1, edge} <= set(candidates.index.tolist())


def test_chunks_of_a_16k_and_a_44k_file_hold_the_same_samples_as_the_whole(inputs):
    _, audio_dir, stream = inputs
    for name in ("long.wav", "long_44k.wav"):
        path = str(audio_dir / name)
        info = audio.probe(path)
        whole = np.concatenate(list(audio.read_blocks(path, 7 * RATE)))
        assert audio.resampled_length(info.frames, info.sample_rate) == len(whole)
        for start, stop in ((0, 5000), (4 * RATE + 17, 9 * RATE), (len(whole) - 999, len(whole))):
            piece = chunks.read_range(path, start, stop, info)
            np.testing.assert_allclose(piece, whole[start:stop], atol=1e-4)


def _run(inputs, tmp_path, *beam_flags, as_command=False):
    """Runs pipelines.detect on every file; as_command: as `python -m pipelines.detect` in a
    process of its own, as a user starts it (elements are then pickled as on Dataflow)."""
    job, audio_dir, _ = inputs
    output = tmp_path / "out"
    argv = ["--input", str(audio_dir / "*"), "--model-dir", str(job), "--output", str(output),
            "--chunk-seconds", str(CHUNK_SECONDS), *beam_flags]
    if as_command:
        result = subprocess.run([sys.executable, "-m", "pipelines.detect", *argv],
                                cwd=wavs.REPO, capture_output=True, text=True, timeout=300,
                                check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = result.stdout.strip().splitlines()[-1]
        counts = {"files": int(summary.split()[1]), "detected": int(summary.split()[4]),
                  "events": int(summary.split()[8])}
        counts["rejected"] = counts["files"] - counts["detected"]
    else:
        counts = beam_detect.run(argv)
    fired = [json.loads(line) for shard in sorted(output.glob("events-*.jsonl"))
              for line in shard.read_text().splitlines()]
    rejected = [json.loads(line) for shard in sorted((output / "rejected").glob("*.jsonl"))
                for line in shard.read_text().splitlines()]
    return counts, fired, rejected, output


@pytest.mark.parametrize("flags,as_command", [
    (("--direct_running_mode", "in_memory"), False),
    (("--direct_running_mode", "multi_processing", "--direct_num_workers", "2"), True),
], ids=["in_memory", "multi_processing_command"])
def test_beam_events_equal_trainer_detect(inputs, expected, tmp_path, flags, as_command):
    counts, fired, rejected, _ = _run(inputs, tmp_path, *flags, as_command=as_command)
    by_path = {}
    for event in fired:
        by_path.setdefault(event["path"], []).append(event)
    for path, wanted in expected.items():
        got = sorted(by_path.get(path, []), key=lambda event: event["time"])
        assert [event["label"] for event in got] == [event.label for event in wanted], path
        for event, reference in zip(got, wanted):
            assert abs(event["time"] - reference.time) <= 0.010
    for name in ("long.wav", "long.flac", "long.ogg", "long.mp3", "long_gsm.wav"):
        assert len(expected[str(inputs[1] / name)]) == 4, name
    assert set(by_path) == set(expected)
    assert f"{inputs[1]}/caf\\xe9.wav" in by_path
    assert sorted(row["path"].rsplit("/", 1)[-1] for row in rejected) == ["empty.wav",
                                                                         "text.wav"]
    assert all(row["reason"] for row in rejected)
    if counts["files"] is not None:
        assert counts["files"] == counts["detected"] + counts["rejected"] == 10
        assert counts["events"] == len(fired)


def test_output_of_an_earlier_run_is_not_overwritten(inputs, tmp_path, capsys):
    _, _, _, output = _run(inputs, tmp_path)
    before = sorted(p.name for p in output.rglob("*"))
    job, audio_dir, _ = inputs
    code = beam_detect.main(["--input", str(audio_dir / "*.wav"), "--model-dir", str(job),
                             "--output", str(output)])
    assert code == 2
    assert "already holds the output of a run" in capsys.readouterr().err
    assert sorted(p.name for p in output.rglob("*")) == before
    (output / "notes.txt").write_text("a user's file")
    counts = beam_detect.run(["--input", str(audio_dir / "*.wav"), "--model-dir", str(job),
                              "--output", str(output), "--overwrite"])
    shards = sorted(output.glob("events-*.jsonl"))
    assert counts["events"] == sum(len(shard.read_text().splitlines()) for shard in shards)
    assert len({shard.name.rsplit("-of-", 1)[1] for shard in shards}) == 1  # one run's
    assert (output / "notes.txt").read_text() == "a user's file"


def _command(job, pattern, output, *flags):
    return [sys.executable, "-m", "pipelines.detect", "--input", pattern, "--model-dir",
            str(job), "--output", str(output), *flags]


def test_two_runs_into_one_output_and_a_run_stopped_by_ctrl_c(inputs, tmp_path):
    """Concurrent runs: one is refused, the other lands whole. Ctrl-C: one line, exit 130,
    no temporary folders left, and the next run into the folder goes ahead."""
    job, audio_dir, _ = inputs
    output = tmp_path / "out"
    command = _command(job, str(audio_dir / "long*.wav"), output)
    runs = [subprocess.Popen(command, cwd=wavs.REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    assert sorted(code for code, _, _ in results) == [0, 2], [e[-2000:] for *_, e in results]
    refused = next(err for code, _, err in results if code == 2).strip().splitlines()[-1]
    # The other run named while it writes, or its output once it has finished (how the
    # processes are scheduled decides; tests/test_batch_predict.py holds a claim itself).
    assert (("python -m pipelines.detect (process" in refused and "is writing here" in refused)
            or refused.startswith(f"error: {output}: already holds the output")), refused
    shards = list(output.glob("events-*.jsonl"))
    # Four keywords in each of long.wav, long_44k.wav and long_gsm.wav.
    assert sum(len(shard.read_text().splitlines()) for shard in shards) == 12

    # A long recording, interrupted while its chunks are being scored.
    hour = tmp_path / "hour.wav"
    noise = np.random.default_rng(0).normal(0, 0.01, RATE * 1800).astype(np.float32)
    soundfile.write(str(hour), noise, RATE, subtype="PCM_16")
    stopped = tmp_path / "stopped"
    run = subprocess.Popen(_command(job, str(hour), stopped, "--chunk-seconds", "5"),
                           cwd=wavs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    progress = []
    for line in run.stderr:  # a line per chunk scored: the run is under way
        progress.append(line)
        if "windows" in line and len(progress) > 10:
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err
    assert not [p for p in stopped.rglob("*") if "beam-temp" in p.name]
    assert not (stopped / ".run-claim.json").exists()
    counts = beam_detect.run(["--input", str(audio_dir / "short.wav"), "--model-dir",
                              str(job), "--output", str(stopped)])
    assert counts["events"] == 1


def test_what_a_killed_run_left_is_refused_then_removed_with_overwrite(inputs, tmp_path,
                                                                       capsys):
    job, audio_dir, _ = inputs
    output = tmp_path / "out"
    # What Beam's sinks leave when a run is killed before they finish.
    leftovers = [output / "beam-temp-events-0123456789abcdef0123456789abcdef" / "part",
                 output / "rejected" / "beam-temp-rejected-0123456789abcdef0123456789abcdef"
                 / "part"]
    for path in leftovers:
        path.parent.mkdir(parents=True)
        path.write_text("partial")
    argv = ["--input", str(audio_dir / "short.wav"), "--model-dir", str(job), "--output",
            str(output)]
    assert beam_detect.main(argv) == 2
    assert "already holds the output of a run (beam-temp-events-" in capsys.readouterr().err
    assert all(path.exists() for path in leftovers)
    assert beam_detect.run(argv + ["--overwrite"])["events"] == 1
    assert not any(path.parent.exists() for path in leftovers)


@pytest.mark.parametrize("flags,message", [
    (["--treshold", "0.3"], "--treshold: not a flag of this command nor a Beam pipeline "
                            "option"),
    (["--chunk-seconds", "inf"], "--chunk-seconds: must be in (0, 3600], got inf"),
    (["--direct_num_workers", "x"], "--direct_num_workers"),
])
def test_misspelt_or_impossible_flags_are_refused(inputs, tmp_path, capsys, flags, message):
    job, audio_dir, _ = inputs
    try:
        code = beam_detect.main(["--input", str(audio_dir / "short.wav"), "--model-dir",
                                 str(job), "--output", str(tmp_path / "out"), *flags])
    except SystemExit as stop:  # argparse's own refusal: usage and one error line
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_as_input_or_a_file_as_output_is_one_line(inputs, tmp_path, capsys):
    job, audio_dir, _ = inputs
    assert beam_detect.main(["--input", str(audio_dir), "--model-dir", str(job), "--output",
                             str(tmp_path / "out")]) == 2
    assert f"is a folder; give a file pattern such as '{audio_dir}/*.wav'" in \
        capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert beam_detect.main(["--input", str(audio_dir / "short.wav"), "--model-dir",
                             str(job), "--output", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err

