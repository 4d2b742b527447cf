"""One run at a time per output folder (`pipelines.claim`)."""

import datetime
import json
import os
import socket
import subprocess
import sys

import pytest

from pipelines import claim
from pipelines.errors import UserError
from tests.gcs import gcs_server  # noqa: F401  (pytest finds fixtures by name)


def test_a_second_claim_on_a_folder_is_refused_and_names_the_first(tmp_path):
    folder = tmp_path / "out"
    with claim.Claim(str(folder), "python -m first") as first:
        record = json.loads((folder / claim.CLAIM_FILE).read_text())
        assert record["command"] == "python -m first" and record["pid"] == os.getpid()
        with pytest.raises(UserError, match=r"python -m first \(process \d+ on .*\) is "
                                            r"writing here"):
            claim.Claim(str(folder), "python -m second").acquire()
        assert first.held
    assert list(folder.iterdir()) == []  # released: the claim file is gone
    with claim.Claim(str(folder), "python -m second"):  # and the folder can be claimed
        pass


def test_the_claim_of_a_killed_run_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / claim.CLAIM_FILE).write_text(json.dumps({
        "command": "python -m killed", "host": socket.gethostname(), "pid": dead.pid,
        "refreshed": "2026-01-01T00:00:00+00:00", "token": "old"}))
    with claim.Claim(str(folder), "python -m next"):
        assert json.loads((folder / claim.CLAIM_FILE).read_text())["command"] == \
            "python -m next"
    assert "has ended without releasing it" in capsys.readouterr().out


def test_a_claim_on_another_host_is_honoured_until_it_goes_stale(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    fresh = datetime.datetime.now(datetime.timezone.utc).isoformat()
    record = {"command": "python -m elsewhere", "host": "another-host", "pid": 1,
              "refreshed": fresh, "token": "other"}
    (folder / claim.CLAIM_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match="another-host"):
        claim.Claim(str(folder), "python -m here").acquire()
    record["refreshed"] = "2026-01-01T00:00:00+00:00"
    (folder / claim.CLAIM_FILE).write_text(json.dumps(record))
    with claim.Claim(str(folder), "python -m here"):
        pass
    assert "has ended without releasing it" in capsys.readouterr().out


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UserError, match="exists and is not a folder"):
        claim.Claim(str(tmp_path / "out"), "python -m x").acquire()


def test_a_claim_on_gcs_is_written_read_back_and_released(gcs_server):
    from apache_beam.io.filesystems import FileSystems
    folder = f"gs://{gcs_server}/runs/one"
    with claim.Claim(folder, "python -m first"):
        assert FileSystems.exists(f"{folder}/{claim.CLAIM_FILE}")
        with pytest.raises(UserError, match="is writing here"):
            claim.Claim(folder, "python -m second").acquire()
    assert not FileSystems.exists(f"{folder}/{claim.CLAIM_FILE}")

