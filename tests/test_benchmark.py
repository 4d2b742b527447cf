"""Tests of benchmarks.preprocess: the baseline writes what the pipeline writes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import preprocess as benchmark
from pipelines import contract, errors, preprocess

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
WORDS = ("go", "stop", "yes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Three words x three real clips, a broken WAV, a noise recording and a README."""
    root = tmp_path_factory.mktemp("tiny")
    for word in WORDS:
        (root / word).mkdir()
        for path in sorted((SAMPLE / word).glob("*.wav"))[:3]:
            shutil.copy(path, root / word / path.name)
    (root / "go" / "broken_nohash_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    noise = root / contract.BACKGROUND_NOISE_DIR
    noise.mkdir()
    shutil.copy(sorted((SAMPLE / "up").glob("*.wav"))[0], noise / "hum.wav")
    (root / "README.md").write_text("not a clip\n")
    return root


def read_run(output_dir: Path) -> dict[str, dict[str, dict]]:
    """{split: {path: parsed features as numpy}} of a run."""
    run = {}
    for split in contract.SPLITS:
        files = tf.io.gfile.glob(contract.shard_pattern(str(output_dir), split))
        examples = {}
        for record in tf.data.TFRecordDataset(files):
            parsed = contract.parse_example(record, waveform=True)
            example = {key: value.numpy() for key, value in parsed.items()}
            examples[example[contract.PATH].decode()] = example
        run[split] = examples
    return run


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = benchmark.main(["--baseline", "--data-dir", str(tiny),
                           "--output-dir", str(out / "baseline")])
    assert code == 0
    preprocess.run(["--data-dir", str(tiny), "--output-dir", str(out / "pipeline"),
                    "--max-rejected-fraction", "1"])
    return out / "baseline", out / "pipeline"


def test_baseline_matches_pipeline(runs):
    baseline, pipeline = read_run(runs[0]), read_run(runs[1])
    assert sum(len(examples) for examples in baseline.values()) == 9
    for split in contract.SPLITS:
        assert sorted(baseline[split]) == sorted(pipeline[split]), split
        for path, ours in baseline[split].items():
            theirs = pipeline[split][path]
            assert ours[contract.SPECTROGRAM].shape == contract.SPECTROGRAM_SHAPE
            np.testing.assert_array_equal(ours[contract.SPECTROGRAM],
                                          theirs[contract.SPECTROGRAM])
            np.testing.assert_array_equal(ours[contract.WAVEFORM], theirs[contract.WAVEFORM])
            for key in (contract.LABEL, contract.LABEL_NAME, contract.SPEAKER,
                        contract.NUM_SAMPLES):
                assert ours[key] == theirs[key], (path, key)
    labels = (runs[0] / contract.LABELS_FILE).read_text()
    assert labels == (runs[1] / contract.LABELS_FILE).read_text() == "go\nstop\nyes\n"


def test_record_counts_agree(runs):
    baseline, pipeline = (benchmark.count_records(run) for run in runs)
    assert baseline == pipeline
    assert sum(baseline[split] for split in contract.SPLITS) == 9
    assert baseline[contract.BACKGROUND] == 1
    read = read_run(runs[0])
    assert {split: len(read[split]) for split in contract.SPLITS} == {
        split: baseline[split] for split in contract.SPLITS}


def test_count_records_refuses_a_truncated_file(runs, tmp_path):
    shard = next((runs[0] / contract.TRAIN).glob("*.tfrecord"))
    (tmp_path / contract.TRAIN).mkdir()
    (tmp_path / contract.TRAIN / shard.name).write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(errors.UserError, match="truncated"):
        benchmark.count_records(tmp_path)


def test_check_counts_and_table():
    timings = [benchmark.Timing("baseline", 10.0, 8.0, {"train": 8, "val": 1, "test": 1}),
               benchmark.Timing("pipeline", 12.0, 9.0, {"train": 8, "val": 1, "test": 1}),
               benchmark.Timing("pipeline-x2", 20.0, 16.0, {"train": 8, "val": 1, "test": 1})]
    benchmark.check_counts(timings)
    table = benchmark.format_table(timings, "DIR", 3)
    lines = table.splitlines()
    assert lines[0].startswith("10 clips from DIR") and "best of 3" in lines[0]
    assert lines[3].split()[:4] == ["pipeline", "12.00", "1", "1.20x"] and "ok" in lines[3]
    assert "2.00x" in lines[4] and "over target" in lines[4]
    mismatch = timings[:1] + [timings[1]._replace(counts={"train": 7, "val": 1, "test": 1})]
    with pytest.raises(errors.UserError, match="pipeline wrote"):
        benchmark.check_counts(mismatch)


def test_commands_time_each_contender_as_its_own_process(tmp_path):
    runs = benchmark.commands("/data", tmp_path)
    assert list(runs) == [benchmark.BASELINE, benchmark.PIPELINE, benchmark.PIPELINE_MP]
    baseline, pipeline, multi = (command for command, _ in runs.values())
    assert baseline[1:4] == ["-m", "benchmarks.preprocess", "--baseline"]
    assert pipeline[1:3] == ["-m", "pipelines.preprocess"]
    assert multi[-4:] == benchmark.MULTI_PROCESS_FLAGS
    assert runs[benchmark.PIPELINE][1] == tmp_path / benchmark.PIPELINE


def test_failed_run_is_one_line(tmp_path):
    with pytest.raises(errors.UserError, match="exited with 3: boom"):
        benchmark.timed_run([sys.executable, "-c", "import sys; print('x\\nboom', "
                             "file=sys.stderr); sys.exit(3)"], tmp_path / "out")


@pytest.mark.parametrize("argv, words", [
    (["--baseline", "--data-dir", "x"], "--output-dir"),
    (["--data-dir", "/nonexistent/clips"], "/nonexistent/clips: not a local folder"),
    (["--data-dir", ".", "--repeat", "0"], "--repeat 0"),
])
def test_user_errors(argv, words, capsys):
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
