"""pipelines.detect on both DirectRunner modes: the events of trainer.detect, chunk edges
and all, and bad files in rejected/."""

import json

import numpy as np
import pytest
import soundfile

from pipelines import audio, chunks, events
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
    return {str(path): scoring.detect_file(str(path), scorer, config).events
            for path in sorted(audio_dir.glob("*.wav"))
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


def _run(inputs, tmp_path, *beam_flags):
    job, audio_dir, _ = inputs
    output = tmp_path / "out"
    counts = beam_detect.run([
        "--input", str(audio_dir / "*.wav"), "--model-dir", str(job), "--output", str(output),
        "--chunk-seconds", str(CHUNK_SECONDS), *beam_flags])
    fired = [json.loads(line) for shard in sorted(output.glob("events-*.jsonl"))
              for line in shard.read_text().splitlines()]
    rejected = [json.loads(line) for shard in sorted((output / "rejected").glob("*.jsonl"))
                for line in shard.read_text().splitlines()]
    return counts, fired, rejected, output


@pytest.mark.parametrize("flags", [
    ("--direct_running_mode", "in_memory"),
    ("--direct_running_mode", "multi_processing", "--direct_num_workers", "2"),
], ids=["in_memory", "multi_processing"])
def test_beam_events_equal_trainer_detect(inputs, expected, tmp_path, flags):
    counts, fired, rejected, _ = _run(inputs, tmp_path, *flags)
    by_path = {}
    for event in fired:
        by_path.setdefault(event["path"], []).append(event)
    for path, wanted in expected.items():
        got = sorted(by_path.get(path, []), key=lambda event: event["time"])
        assert [event["label"] for event in got] == [event.label for event in wanted], path
        for event, reference in zip(got, wanted):
            assert abs(event["time"] - reference.time) <= 0.010
    assert len(expected[str(inputs[1] / "long.wav")]) == 4
    assert sorted(row["path"].rsplit("/", 1)[-1] for row in rejected) == ["empty.wav",
                                                                         "text.wav"]
    assert all(row["reason"] for row in rejected)
    if counts["files"] is not None:
        assert counts["files"] == counts["detected"] + counts["rejected"] == 5
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
