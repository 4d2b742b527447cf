"""Every input gets an outcome: odd names, symlinks, special files, ambiguous labels."""

import json
import os
import subprocess
import sys

import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import contract, inputs, preprocess, transforms
from tests import wavs

BAD_NAME = b"caf\xe9_nohash_0.wav"  # Latin-1, not UTF-8


def write_bytes_name(folder, name: bytes, content: bytes) -> None:
    """Creates a file whose name is raw bytes (no str can name it)."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
        handle.write(content)


def rejected_lines(out) -> list[dict]:
    return [json.loads(line) for path in sorted((out / "rejected").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def assert_counts_add_up(metadata) -> None:
    assert metadata.unaccounted() == []
    assert metadata.files_read == (metadata.examples_written + metadata.background_recordings
                                   + metadata.rejected + metadata.skipped)


@pytest.fixture
def hostile(tmp_path):
    """Clips of two words plus every entry that must be skipped or rejected with a reason.

    data/no, data/yes: 3 real clips each
    data/yes/caf\\xe9...wav, data/caf\\xe9/a.wav: names that are not UTF-8
    data/up -> elsewhere/up: a symlinked label folder outside the data folder (followed)
    data/up_again -> elsewhere/up: a second link to it; data/loop -> data; data/yes2 -> yes
    data/yes/nested -> elsewhere/up; data/yes/gone.wav -> a missing file
    data/yes/deeper/x.wav: below a label folder
    """
    data = wavs.copy_sample(tmp_path / "data", ["no", "yes"], per_label=3)
    elsewhere = wavs.copy_sample(tmp_path / "elsewhere", ["up"], per_label=2)
    clip = wavs.sample_clips("no", 4)[-1].read_bytes()
    write_bytes_name(data / "yes", BAD_NAME, clip)
    os.mkdir(os.path.join(os.fsencode(str(data)), b"caf\xe9"))
    write_bytes_name(os.path.join(os.fsencode(str(data)), b"caf\xe9"), b"a.wav", clip)
    os.symlink(elsewhere / "up", data / "up")
    os.symlink(elsewhere / "up", data / "up_again")
    os.symlink(data, data / "loop")
    os.symlink(data / "yes", data / "yes2")
    os.symlink(elsewhere / "up", data / "yes" / "nested")
    os.symlink(tmp_path / "missing.wav", data / "yes" / "gone.wav")
    (data / "yes" / "deeper").mkdir()
    (data / "yes" / "deeper" / "x.wav").write_bytes(clip)
    return data


def test_listing_gives_every_entry_a_path_or_a_reason(hostile):
    listing = inputs.list_inputs(str(hostile))
    reasons = {os.path.relpath(path, hostile): reason for path, reason in listing.skipped}
    assert reasons == {
        "loop": inputs.LOOP_REASON, "yes2": inputs.INSIDE_REASON,
        "up_again": f"{inputs.SAME_REASON} (up)", "yes/nested": inputs.NESTED_REASON,
        "yes/gone.wav": inputs.BROKEN_REASON}
    relative = sorted(os.path.relpath(path, hostile) for path in listing.paths)
    assert [p for p in relative if p.startswith("up/")] == [
        f"up/{clip.name}" for clip in wavs.sample_clips("up", 2)]
    assert "yes/deeper/x.wav" in relative
    assert sum(not inputs.is_utf8(path) for path in listing.paths) == 2
    assert listing.patterns == [f"{hostile}/**", f"{hostile}/up/**"]


@pytest.mark.parametrize("runner", [
    [], ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]],
    ids=["in_memory", "multi_processing"])
def test_hostile_folder_runs_to_the_end_and_every_entry_is_counted(hostile, tmp_path,
                                                                   capsys, runner):
    out = tmp_path / "out"
    metadata = preprocess.run(["--data-dir", str(hostile), "--output-dir", str(out),
                               "--max-rejected-fraction", "1", *runner])
    assert metadata.labels == ("no", "up", "yes")  # not the undecodable folder
    assert metadata.counts["train"].get("up", 0) + metadata.counts["val"].get("up", 0) \
        + metadata.counts["test"].get("up", 0) == 2  # through the symlinked folder
    assert metadata.examples_written == 3 + 3 + 2
    assert metadata.rejected_by_reason == {inputs.NAME_REASON: 2}
    assert metadata.skipped_by_reason == {
        inputs.LOOP_REASON: 1, inputs.INSIDE_REASON: 1, inputs.SAME_REASON + " (up)": 1,
        inputs.NESTED_REASON: 1, inputs.BROKEN_REASON: 1, "not in a label folder": 1}
    assert_counts_add_up(metadata)
    assert sorted(line["path"] for line in rejected_lines(out)) == sorted([
        f"{hostile}/caf\\xe9/a.wav", f"{hostile}/yes/caf\\xe9_nohash_0.wav"])
    printed = capsys.readouterr().out
    assert f"skipped {hostile}/loop: {inputs.LOOP_REASON}" in printed
    # 11 files listed + 5 entries skipped while listing
    assert "files read 16 = examples 8 + background noise 0 + rejected 2 + skipped 6" \
        in printed


def test_a_fifo_named_like_a_clip_is_rejected_not_waited_on(tmp_path):
    data = wavs.copy_sample(tmp_path / "data", ["no", "yes"], per_label=2)
    os.mkfifo(data / "yes" / "pipe.wav")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.preprocess", "--data-dir", str(data),
         "--output-dir", str(out), "--max-rejected-fraction", "1"],
        cwd=wavs.REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert rejected_lines(out) == [{"path": str(data / "yes" / "pipe.wav"),
                                    "reason": transforms.NOT_A_FILE}]
    metadata = contract.RunMetadata.from_json((out / contract.METADATA_FILE).read_text())
    assert metadata.examples_written == 4 and metadata.files_read == 5


@pytest.mark.parametrize("folders,flags,message", [
    (["yes ", "no"], [], "'yes ' has leading or trailing spaces"),
    ([" yes", "no"], [], "' yes' has leading or trailing spaces"),
    (["Yes", "yes", "no"], [], "labels 'Yes' and 'yes' differ only in case"),
    (["Yes", "yes", "no"], ["--labels", "Yes,yes"], "differ only in case"),
])
def test_ambiguous_labels_are_one_line_and_exit_2(tmp_path, capsys, folders, flags, message):
    data = tmp_path / "data"
    clips = wavs.sample_clips("no", 2)
    for folder in folders:
        (data / folder).mkdir(parents=True)
        for clip in clips:
            (data / folder / clip.name).write_bytes(clip.read_bytes())
    code = preprocess.main(["--data-dir", str(data), "--output-dir", str(tmp_path / "o"),
                            *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and str(data) in err[0]
    assert not (tmp_path / "o").exists()


def test_glob_characters_in_folder_names_are_matched_literally(tmp_path):
    data = wavs.copy_sample(tmp_path / "d[1]*?", ["no", "yes"], per_label=1)
    wavs.copy_sample(tmp_path / "d1xy", ["no"], per_label=1)  # what `d[1]*?` would match
    listing = inputs.list_inputs(str(data))
    assert len(listing.paths) == 2
    matched = FileSystems.match(listing.patterns)[0].metadata_list
    assert sorted(meta.path for meta in matched) == listing.paths
