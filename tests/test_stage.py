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


def remote_names(bucket: str, prefix: str) -> set[str]:
    return {blob.name[len(prefix) + 1:]
            for blob in storage.Client().list_blobs(bucket, prefix=prefix + "/")}


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


def test_objects_without_a_local_file_are_listed_then_deleted_only_with_delete(
        gcs_server, clips, capsys):
    bucket, prefix = gcs_server, "speech"
    destination = f"gs://{bucket}/{prefix}"
    client = storage.Client()
    stage.run([str(clips), destination])
    gone = sorted((clips / "yes").glob("*.wav"))[0]
    gone.unlink()  # deleted locally after the first run
    client.bucket(bucket).blob(f"{prefix}/old/renamed.wav").upload_from_string(b"RIFF")
    # Neither a folder marker nor an object beside the prefix is a file of LOCAL_DIR's.
    client.bucket(bucket).blob(f"{prefix}/marker/").upload_from_string(b"")
    client.bucket(bucket).blob(f"{prefix}-other/keep.wav").upload_from_string(b"RIFF")
    capsys.readouterr()

    listed = stage.run([str(clips), destination])
    expected = [f"{prefix}/old/renamed.wav", f"{prefix}/yes/{gone.name}"]
    assert listed.remote_only == expected and listed.deleted == []
    out = capsys.readouterr().out
    for name in expected:
        assert f"not in {clips} (kept): gs://{bucket}/{name}" in out
    assert "2 objects have no local file: kept (--delete removes them)" in out
    assert remote_names(bucket, prefix) == set(local_files(clips)) | {
        "old/renamed.wav", f"yes/{gone.name}", "marker/"}

    deleted = stage.run([str(clips), destination, "--delete"])
    assert deleted.deleted == expected and deleted.not_deleted == {}
    assert "2 objects have no local file: deleted 2" in capsys.readouterr().out
    assert remote_names(bucket, prefix) == set(local_files(clips)) | {"marker/"}
    assert client.bucket(bucket).blob(f"{prefix}-other/keep.wav").exists()

    again = stage.run([str(clips), destination, "--delete"])
    assert again.remote_only == [] and again.deleted == []


def test_delete_needs_a_prefix(tmp_path, capsys):
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    code = stage.main([str(tmp_path), "gs://bucket", "--delete"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "gs://bucket: --delete needs a PREFIX" in err


def test_linked_folders_are_followed_and_a_loop_is_skipped_and_named(
        gcs_server, clips, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere" / "up"
    elsewhere.mkdir(parents=True)
    wav = sorted((SAMPLE / "up").glob("*.wav"))[0]
    shutil.copy(wav, elsewhere / wav.name)
    (clips / "up").symlink_to(elsewhere, target_is_directory=True)
    (clips / "yes" / "loop").symlink_to(clips, target_is_directory=True)
    result = stage.run([str(clips), f"gs://{gcs_server}/speech"])
    captured = capsys.readouterr()
    assert f"speech/up/{wav.name}" in result.uploaded
    assert result.skipped == {str(clips / "yes" / "loop"):
                              f"a link to {clips.resolve()}, staged already"}
    assert f"skipped: {clips / 'yes' / 'loop'} (a link to" in captured.err
    assert "skipped 1 linked folders" in captured.out
    assert set(remote_files(gcs_server, "speech")) == set(local_files(clips)) | {
        f"up/{wav.name}"}
