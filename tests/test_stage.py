"""`python -m pipelines.stage` against a Cloud Storage emulator on loopback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.cloud import storage

from pipelines import stage
from tests.gcs import gcs_server  # noqa: F401  (fixture)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
LABELS = ("yes", "no")
CLIPS_PER_LABEL = 3


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """tmp/speech/{yes,no}/*.wav: real clips from the bundled sample, plus a nested README."""
    root = tmp_path / "speech"
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for wav in sorted((SAMPLE / label).glob("*.wav"))[:CLIPS_PER_LABEL]:
            shutil.copy(wav, root / label / wav.name)
    (root / "README.txt").write_text("clips for the staging test\n")
    return root


def local_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def remote_files(bucket: str, prefix: str) -> dict[str, bytes]:
    client = storage.Client()
    return {blob.name[len(prefix) + 1:]: blob.download_as_bytes()
            for blob in client.list_blobs(bucket, prefix=prefix + "/")}


def test_stage_uploads_then_resumes(gcs_server, clips, capsys):
    bucket, prefix = gcs_server, "in/speech"
    destination = f"gs://{bucket}/{prefix}/"  # a trailing slash is the same prefix
    expected = local_files(clips)
    assert len(expected) == len(LABELS) * CLIPS_PER_LABEL + 1

    first = stage.run([str(clips), destination, "--workers", "4"])
    assert sorted(first.uploaded) == sorted(f"{prefix}/{name}" for name in expected)
    assert first.present == [] and first.failed == {}
    assert first.uploaded_bytes == sum(len(data) for data in expected.values())
    assert remote_files(bucket, prefix) == expected
    assert f"uploaded {len(expected)} " in capsys.readouterr().out

    second = stage.run([str(clips), destination])
    assert second.uploaded == [] and len(second.present) == len(expected)
    assert "uploaded 0 (0.0 MB), already there 7, failed 0" in capsys.readouterr().out

    # An interrupted run leaves some objects missing: only those are sent again.
    client = storage.Client()
    lost = [f"{prefix}/{name}" for name in sorted(expected)[1:3]]
    for name in lost:
        client.bucket(bucket).blob(name).delete()
    third = stage.run([str(clips), destination])
    assert third.uploaded == sorted(lost)
    assert len(third.present) == len(expected) - len(lost)
    assert remote_files(bucket, prefix) == expected

    # A changed file of the same size is found by its checksum, not its length.
    changed = sorted((clips / "no").glob("*.wav"))[0]
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    fourth = stage.run([str(clips), destination])
    assert fourth.uploaded == [f"{prefix}/no/{changed.name}"]
    assert remote_files(bucket, prefix)[f"no/{changed.name}"] == bytes(data)


def test_stage_reports_a_failed_file_and_sends_the_others(gcs_server, clips, capsys):
    broken = clips / "yes" / "broken.wav"
    broken.symlink_to(clips / "missing.wav")  # listed, but cannot be read
    code = stage.main([str(clips), f"gs://{gcs_server}/speech", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"failed: {broken}: " in captured.err and "No such file" in captured.err
    assert "uploaded 7 " in captured.out and "failed 1" in captured.out
    assert "1 of 8 files not uploaded" in captured.err.splitlines()[-1]
    assert set(remote_files(gcs_server, "speech")) == set(local_files(clips)) - {"yes/broken.wav"}


@pytest.mark.parametrize("folder, destination, message", [
    ("missing", "gs://bucket/prefix", "missing: folder not found"),
    ("", "s3://bucket/prefix", "s3://bucket/prefix: not a Cloud Storage URI"),
    ("", "gs://", "gs://: not a Cloud Storage URI"),
    ("", "gs://Upper_Case/x", "gs://Upper_Case/x: not a Cloud Storage URI"),
])
def test_stage_bad_arguments_exit_2(tmp_path, capsys, folder, destination, message):
    (tmp_path / "clip.wav").write_bytes(b"RIFF")  # an existing folder with a file in it
    code = stage.main([str(tmp_path / folder), destination])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err


def test_stage_missing_bucket_exits_2(gcs_server, clips, capsys):
    code = stage.main([str(clips), "gs://no-such-bucket-here/speech"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "error: gs://no-such-bucket-here: bucket not found"
