"""Batch prediction with Beam + tfx-bsl RunInference, against trainer.predict."""

import json
import pathlib

import pytest

from pipelines import predict as batch_predict, preprocess
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


@pytest.mark.parametrize("runner_flags", [
    [], ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]],
    ids=["in_memory", "multi_process"])
def test_batch_predictions_equal_trainer_predict(job_dir, audio_dir, tmp_path, runner_flags):
    out = tmp_path / "predictions"
    counts = batch_predict.run(["--input", f"{audio_dir}/**/*.wav", "--model-dir", str(job_dir),
                                "--output", str(out)] + runner_flags)
    rows = {row["path"]: row for row in read_jsonl(out, "predictions-*.jsonl")}
    good = sorted(str(p) for p in audio_dir.rglob("*.wav") if p.name != "broken.wav")
    assert sorted(rows) == good
    rejected = read_jsonl(out / "rejected", "*.jsonl")
    assert [r["path"] for r in rejected] == [str(audio_dir / "left" / "broken.wav")]
    if not runner_flags:
        assert counts == {"predicted": 6, "rejected": 1}
    single = {r["path"]: r for r in predict.run(["--model-dir", str(job_dir)] + good)}
    for path, row in rows.items():
        assert row["label"] == single[path]["label"]
        for label in LABELS:
            assert row["probabilities"][label] == pytest.approx(
                single[path]["probabilities"][label], abs=1e-5)


def test_wrong_model_dir_or_empty_input_is_one_line(job_dir, audio_dir, tmp_path, capsys):
    assert batch_predict.main(["--input", f"{audio_dir}/*/*.wav", "--model-dir", str(tmp_path),
                               "--output", str(tmp_path / "o")]) == 2
    assert "no exported model" in capsys.readouterr().err
    assert batch_predict.main(["--input", f"{tmp_path}/nothing/*.wav", "--model-dir",
                               str(job_dir), "--output", str(tmp_path / "o")]) == 2
    assert "no files match" in capsys.readouterr().err
