"""The output folder: a run removes only what it wrote, and never writes into its input."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines import contract, outputs, preprocess
from tests import wavs

REPO = wavs.REPO


def snapshot(root) -> dict:
    """Every file under root with a hash of its bytes."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def clips(tmp_path):
    return wavs.copy_sample(tmp_path / "data", ["no", "yes"], per_label=3)


# --- names and places ---------------------------------------------------------------

@pytest.mark.parametrize("place,relative,owned", [
    ("train", "data-00000-of-00002.tfrecord", True),
    ("val", "data-00001-of-00002.tfrecord.gz", True),
    ("background", "data-00000-of-00001.tfrecord", True),
    ("rejected", "rejected-00000-of-00001.jsonl", True),
    ("train", "beam-temp-data-4d0a48b0ee7d11f1bf5a02fc00000001/b5f5.data.tfrecord", True),
    ("rejected", "beam-temp-rejected-4cc4abcaee7d11f1bf5a02fc00000001/x", True),
    ("train", "data-00000-of-00002.tfrecord.bak", False),
    ("train", "rejected-00000-of-00001.jsonl", False),
    ("rejected", "data-00000-of-00001.tfrecord", False),
    ("test", "0a7c2a8d_nohash_0.wav", False),
    ("train", "beam-temp-data-nothex/x", False),
    ("train", "sub/data-00000-of-00002.tfrecord", False),
])
def test_a_run_owns_only_the_names_it_writes(place, relative, owned):
    assert outputs._owned(place, relative) is owned  # pylint: disable=protected-access


def test_within_resolves_symlinks(tmp_path):
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    assert outputs.is_within(str(tmp_path / "link"), str(tmp_path / "data"))
    assert outputs.is_within(str(tmp_path / "link" / "out"), str(tmp_path / "data"))
    assert not outputs.is_within(str(tmp_path / "data2"), str(tmp_path / "data"))
    assert outputs.is_within("gs://b/in/out", "gs://b/in/")
    assert not outputs.is_within("gs://b/input", "gs://b/in")


# --- end to end ---------------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_output_equal_to_the_data_folder_is_refused_and_the_clips_stay(tmp_path, capsys,
                                                                      overwrite):
    """The issue's case: OUT is the data folder, which has a label named `test`."""
    data = wavs.copy_sample(tmp_path / "data", ["no", "yes", "up"], per_label=3)
    (data / "up").rename(data / "test")
    before = snapshot(data)
    code = preprocess.main(["--data-dir", str(data), "--output-dir", str(data), *overwrite])
    line = one_line_error(capsys)
    assert code == 2 and f"{data}: the output folder is inside the data folder" in line
    assert snapshot(data) == before


def test_output_inside_the_data_folder_is_refused(clips, capsys):
    code = preprocess.main(["--data-dir", str(clips), "--output-dir", str(clips / "out")])
    assert code == 2 and "inside the data folder" in one_line_error(capsys)
    assert not (clips / "out").exists()


def test_a_users_file_in_a_run_place_is_refused_even_with_overwrite(clips, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "test").mkdir(parents=True)
    (out / "test" / "mine.wav").write_bytes(b"the user's")
    (out / "notes.txt").write_text("beside the run: not in its places")
    code = preprocess.main(["--data-dir", str(clips), "--output-dir", str(out), "--overwrite"])
    line = one_line_error(capsys)
    assert code == 2 and line.startswith(f"error: {out / 'test' / 'mine.wav'}: not written")
    assert sorted(snapshot(out)) == ["notes.txt", "test/mine.wav"]


def test_overwrite_removes_exactly_the_run_and_refuses_when_something_was_added(
        clips, tmp_path, capsys):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["--data-dir", str(clips), "--output-dir", str(out), "--num-shards", "2"]
    preprocess.run(args)
    first = snapshot(out)
    assert contract.MARKER_FILE in first and "notes.txt" in first
    (out / "rejected" / "my-notes.jsonl").write_text("{}\n")
    assert preprocess.main(args + ["--overwrite"]) == 2
    assert "rejected/my-notes.jsonl" in one_line_error(capsys)
    assert snapshot(out) == {**first, "rejected/my-notes.jsonl": snapshot(out)[
        "rejected/my-notes.jsonl"]}

    (out / "rejected" / "my-notes.jsonl").unlink()
    preprocess.run(args[:-1] + ["1", "--overwrite"])
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "data-00000-of-00001.tfrecord"]
    assert (out / "notes.txt").read_text() == "mine"


def test_files_named_like_a_run_without_a_record_of_one_are_refused(clips, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "data-00000-of-00001.tfrecord").write_bytes(b"another tool's")
    code = preprocess.main(["--data-dir", str(clips), "--output-dir", str(out), "--overwrite"])
    assert code == 2 and f"no {contract.MARKER_FILE}" in one_line_error(capsys)
    assert (out / "train" / "data-00000-of-00001.tfrecord").read_bytes() == b"another tool's"


def test_a_run_made_before_the_marker_is_replaced_with_overwrite(clips, tmp_path):
    out = tmp_path / "out"
    args = ["--data-dir", str(clips), "--output-dir", str(out)]
    preprocess.run(args)
    (out / contract.MARKER_FILE).unlink()  # its metadata.json still says it is a run
    metadata = preprocess.run(args + ["--overwrite"])
    assert metadata.examples_written == 6 and (out / contract.MARKER_FILE).exists()


BLOCKING_RUN = """
import sys, time
from pipelines import audio, preprocess
featurize = audio.featurize
def blocking(path, *args, **kwargs):
    while path.endswith("zz_block.wav"):
        time.sleep(1)
    return featurize(path, *args, **kwargs)
audio.featurize = blocking
preprocess.main(sys.argv[1:])
"""


def test_a_killed_run_is_recognised_and_replaced(clips, tmp_path, capsys):
    """A real run killed mid-pipeline: marker, labels and sink temp files, no metadata.

    One clip's read never returns, so the run is killed at a known point: after its
    sinks have made their temporary folders.
    """
    blocker = clips / "yes" / "zz_block.wav"
    blocker.write_bytes(next((clips / "yes").glob("*.wav")).read_bytes())
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_RUN, "--data-dir", str(clips),
         "--output-dir", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(out.glob("*/beam-temp-*")) and time.time() < deadline:
            assert process.poll() is None, "the run ended instead of blocking"
            time.sleep(0.2)
        time.sleep(1)
        assert process.poll() is None, "the run ended instead of blocking"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = snapshot(out)
    assert contract.MARKER_FILE in left and contract.METADATA_FILE not in left
    assert list(out.glob("*/beam-temp-*"))
    blocker.unlink()

    args = ["--data-dir", str(clips), "--output-dir", str(out)]
    assert preprocess.main(args) == 2
    assert "an unfinished preprocessing run" in one_line_error(capsys)
    metadata = preprocess.run(args + ["--overwrite"])
    assert metadata.examples_written == 6
    assert not list(out.glob("*/beam-temp-*"))
    found = outputs.contents(str(out))
    assert not found.foreign and not found.temp_dirs
    assert found.owned == sorted(str(out / name) for name in snapshot(out))
    assert set(metadata.shards) <= set(found.owned)


# --- what was written, counted back -------------------------------------------------

@pytest.mark.parametrize("compression,suffix", [("", ".tfrecord"), ("GZIP", ".tfrecord.gz")])
def test_count_records_agrees_with_tensorflows_reader(tmp_path, compression, suffix):
    import tensorflow as tf
    path = str(tmp_path / f"data-00000-of-00001{suffix}")
    records = [b"", b"x" * 70_000, b"short", bytes(range(256)) * 300]
    with tf.io.TFRecordWriter(path, options=compression or None) as writer:
        for record in records:
            writer.write(record)
    assert outputs.count_records(path) == len(records) == sum(
        1 for _ in tf.data.TFRecordDataset(path, compression_type=compression))


def test_count_records_refuses_a_shard_cut_short(tmp_path):
    import tensorflow as tf
    path = tmp_path / "data-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(3):
            writer.write(b"y" * 1000)
    whole = path.read_bytes()
    for cut in (len(whole) - 1, len(whole) - 1004, 5):
        path.write_bytes(whole[:cut])
        with pytest.raises(IOError, match="cut short after"):
            outputs.count_records(str(path))
    path.write_bytes(b"")
    assert outputs.count_records(str(path)) == 0


def test_count_lines(tmp_path):
    path = tmp_path / "rejected-00000-of-00001.jsonl"
    path.write_text('{"path": "a"}\n{"path": "b"}\n')
    assert outputs.count_lines(str(path)) == 2
