"""Batch prediction with Beam + tfx-bsl RunInference, against trainer.predict."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from pipelines import claim, predict as batch_predict, preprocess
from tests import wavs
from trainer import predict, task

LABELS = ["no", "up", "yes"]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", LABELS, per_label=8)
    out = tmp_path_factory.mktemp("prep") / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "25", "--test-percent", "25"])
    job = tmp_path_factory.mktemp("job") / "job"
    task.run(["--data-dir", str(out), "--job-dir", str(job), "--model", "tutorial",
              "--epochs", "1", "--verbose", "0", "--no-report"])
    return job


@pytest.fixture
def audio_dir(tmp_path):
    root = wavs.copy_sample(tmp_path / "audio", ["yes", "left"], per_label=3)
    (root / "left" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    return root


def read_jsonl(pattern_dir: pathlib.Path, glob: str) -> list[dict]:
    return [json.loads(line) for path in sorted(pattern_dir.glob(glob))
            for line in path.read_text().splitlines()]


def assert_equal_to_trainer_predict(job_dir, rows: dict, paths: list[str]) -> None:
    single = {r["path"]: r for r in predict.run(["--model-dir", str(job_dir)] + paths)}
    for path in paths:
        assert rows[path]["label"] == single[path]["label"]
        for label in LABELS:
            assert rows[path]["probabilities"][label] == pytest.approx(
                single[path]["probabilities"][label], abs=1e-5)


def test_batch_predictions_equal_trainer_predict(job_dir, audio_dir, tmp_path):
    out = tmp_path / "predictions"
    counts = batch_predict.run(["--input", f"{audio_dir}/**/*.wav", "--model-dir", str(job_dir),
                                "--output", str(out)])
    rows = {row["path"]: row for row in read_jsonl(out, "predictions-*.jsonl")}
    good = sorted(str(p) for p in audio_dir.rglob("*.wav") if p.name != "broken.wav")
    assert sorted(rows) == good
    rejected = read_jsonl(out / "rejected", "*.jsonl")
    assert [r["path"] for r in rejected] == [str(audio_dir / "left" / "broken.wav")]
    assert counts == {"files": 7, "predicted": 6, "rejected": 1}
    assert_equal_to_trainer_predict(job_dir, rows, good)


def test_wrong_model_dir_or_empty_input_is_one_line(job_dir, audio_dir, tmp_path, capsys):
    assert batch_predict.main(["--input", f"{audio_dir}/*/*.wav", "--model-dir", str(tmp_path),
                               "--output", str(tmp_path / "o")]) == 2
    assert "no exported model" in capsys.readouterr().err
    assert batch_predict.main(["--input", f"{tmp_path}/nothing/*.wav", "--model-dir",
                               str(job_dir), "--output", str(tmp_path / "o")]) == 2
    assert "no files match" in capsys.readouterr().err


def shard_names(folder: pathlib.Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{prefix}-*"))


def test_a_rerun_into_the_same_output_replaces_only_the_earlier_results(
        job_dir, audio_dir, tmp_path, capsys):
    # A name that is not UTF-8 (Latin-1 e-acute, and a stray 0xff byte) among the inputs.
    odd = audio_dir / "yes" / os.fsdecode(b"caf\xe9-\xff.wav")
    original = sorted((audio_dir / "yes").glob("*.wav"))[0]
    shutil.copy(original, odd)
    shown = f"{audio_dir}/yes/caf\\xe9-\\xff.wav"
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "predictions-summary.jsonl").write_text("{}\n")  # not named like a shard
    flags = ["--input", f"{audio_dir}/**/*.wav", "--model-dir", str(job_dir),
             "--output", str(out)]

    first = batch_predict.run(flags + ["--num-shards", "3", "--direct_running_mode",
                                       "multi_processing", "--direct_num_workers", "2"])
    assert first == {"files": 8, "predicted": 7, "rejected": 1}
    assert shard_names(out, "predictions") == [
        f"predictions-0000{i}-of-00003.jsonl" for i in range(3)] + ["predictions-summary.jsonl"]
    rows = {row["path"]: row for row in read_jsonl(out, "predictions-*-of-*.jsonl")}
    good = sorted(str(p) for p in audio_dir.rglob("*.wav")
                  if p.name != "broken.wav" and p != odd)
    assert sorted(rows) == sorted(good + [shown])
    assert_equal_to_trainer_predict(job_dir, rows, good)  # on the multi-process runner
    assert rows[shown]["probabilities"] == pytest.approx(
        rows[str(original)]["probabilities"], abs=1e-6)
    assert [r["path"] for r in read_jsonl(out / "rejected", "*.jsonl")] == [
        str(audio_dir / "left" / "broken.wav")]

    assert batch_predict.main(flags) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "predictions-00000-of-00003.jsonl" in error and "--overwrite" in error

    second = batch_predict.run(flags + ["--overwrite", "--num-shards", "1"])
    assert second == {"files": 8, "predicted": 7, "rejected": 1}
    assert shard_names(out, "predictions") == ["predictions-00000-of-00001.jsonl",
                                               "predictions-summary.jsonl"]
    assert shard_names(out / "rejected", "rejected") == ["rejected-00000-of-00001.jsonl"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    paths = [row["path"] for row in read_jsonl(out, "predictions-*-of-*.jsonl")]
    assert len(paths) == len(set(paths)) == 7 and shown in paths


def test_two_runs_started_together_into_one_output_one_lands_whole(job_dir, tmp_path):
    """Two `python -m pipelines.predict` into the same --output at the same time: one is
    refused in one line, the other writes every clip's line. The refusal names the other
    run while it writes, or the output it left once it has finished (which of the two
    depends on how the processes are scheduled; while a run holds the folder, the
    refusal names it)."""
    audio = wavs.copy_sample(tmp_path / "audio", ["yes", "no"], per_label=20)
    out = tmp_path / "predictions"
    command = [sys.executable, "-m", "pipelines.predict", "--input", f"{audio}/**/*.wav",
               "--model-dir", str(job_dir), "--output", str(out)]
    runs = [subprocess.Popen(command, cwd=wavs.REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2).strip().splitlines()
    assert (("python -m pipelines.predict (process" in refused[-1]
             and "is writing here" in refused[-1])
            or refused[-1].startswith(f"error: {out}: already holds the output")), refused
    assert len(read_jsonl(out, "predictions-*.jsonl")) == 40
    assert not (out / ".run-claim.json").exists()

    held = tmp_path / "held"
    with claim.Claim(str(held), "python -m pipelines.predict"):
        done = subprocess.run([*command[:-1], str(held)], cwd=wavs.REPO, capture_output=True,
                              text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert f"python -m pipelines.predict (process {os.getpid()} on" in line
    assert "is writing here" in line
    assert list(held.iterdir()) == []  # nothing written; the test's claim released
