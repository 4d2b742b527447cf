"""One run at a time per output folder: a claim written before anything else, removed last.

Two runs into one folder would each pass the checks for an empty folder and then mix or
overwrite each other's files. So every command that writes a run (preprocessing, batch
prediction and detection, training) first claims its folder::

    with claim.Claim(output_dir, "python -m pipelines.detect"):
        ...  # check the folder, run, count what was written

and a second run into the same folder is refused in one line naming the first. The claim
is the file `.run-claim.json` in the folder, holding who claimed it (command, host,
process, start time, a random token):

- local folders: created with O_CREAT | O_EXCL, so exactly one run wins;
- gs:// folders (no exclusive create through Beam's FileSystems): the claim is written,
  then read back after `SETTLE_SECONDS`; a run that finds another run's token there
  yields.

While its run goes on, the claim's `refreshed` time is renewed every `REFRESH_SECONDS`.
A claim left by a run that was killed (SIGKILL, a preempted machine) is taken over, with
a note: on this host when its process is gone, anywhere once it has not been renewed for
`STALE_SECONDS`. The claim is removed when the run ends, however it ends (Ctrl-C
included), and only if it is still this run's.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from pipelines import errors

CLAIM_FILE = ".run-claim.json"
SETTLE_SECONDS = 1.0
REFRESH_SECONDS = 30.0
STALE_SECONDS = 150.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _is_local(path: str) -> bool:
    return "://" not in path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """The claim of one run on `folder` (a context manager; see the module doc)."""

    def __init__(self, folder: str, command: str):
        self.folder = folder.rstrip("/") or "/"
        self.path = f"{self.folder}/{CLAIM_FILE}"
        started = _now().isoformat(timespec="seconds")
        self.record = {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": started, "refreshed": started, "token": uuid.uuid4().hex}
        self.held = False
        self._stop = threading.Event()
        self._refresher: Optional[threading.Thread] = None

    def __enter__(self) -> "Claim":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, other: Optional[dict]) -> None:
        who = "another run"
        if other:
            who = (f"{other.get('command', 'a run')} (process {other.get('pid')} on "
                   f"{other.get('host')}, since {other.get('started')})")
        raise errors.UserError(f"{self.folder}: {who} is writing here; wait for it to end or "
                               f"choose another folder (if no such run is going on, remove "
                               f"{self.path})")

    def _read(self) -> Optional[dict]:
        from apache_beam.io.filesystems import FileSystems  # pylint: disable=C0415
        try:
            with FileSystems.open(self.path) as handle:
                return json.loads(handle.read().decode("utf-8"))
        except (IOError, OSError, ValueError, UnicodeDecodeError):
            return None

    def _stale(self, other: Optional[dict]) -> bool:
        """Whether `other` is the claim of a run that has ended without releasing it."""
        if other is None:
            return False
        if (other.get("host") == self.record["host"] and isinstance(other.get("pid"), int)
                and not _pid_alive(other["pid"])):
            return True
        try:
            refreshed = datetime.datetime.fromisoformat(str(other.get("refreshed")))
        except ValueError:
            return False
        return (_now() - refreshed).total_seconds() > STALE_SECONDS

    def _note_takeover(self, other: dict) -> None:
        print(f"note: {self.path}: the run that claimed this folder "
              f"({other.get('command')}, process {other.get('pid')} on {other.get('host')}) "
              "has ended without releasing it; claiming it for this run")

    def _text(self) -> str:
        return json.dumps(self.record, indent=2) + "\n"

    def acquire(self) -> None:
        """Takes the claim, or raises UserError naming the run that holds it."""
        if _is_local(self.folder):
            self._acquire_local(self._text())
        else:
            self._acquire_remote(self._text())
        self.held = True
        self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                           name="run-claim")
        self._refresher.start()

    def _refresh(self) -> None:
        from apache_beam.io.filesystems import FileSystems  # pylint: disable=C0415
        while not self._stop.wait(REFRESH_SECONDS):
            found = self._read()
            if not found or found.get("token") != self.record["token"]:
                return
            self.record["refreshed"] = _now().isoformat(timespec="seconds")
            try:
                if _is_local(self.folder):
                    temporary = f"{self.path}.{self.record['token']}"
                    with open(temporary, "w", encoding="utf-8") as handle:
                        handle.write(self._text())
                    os.replace(temporary, self.path)
                else:
                    with FileSystems.create(self.path) as handle:
                        handle.write(self._text().encode("utf-8"))
            except (IOError, OSError):
                return

    def _acquire_local(self, text: str) -> None:
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise errors.UserError(f"{self.folder}: exists and is not a folder")
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as error:
            raise errors.UserError(f"{self.folder}: cannot create the folder "
                                   f"({error.strerror})") from None
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if not self._stale(other):
                    self._refuse(other)
                self._note_takeover(other)
                os.remove(self.path)
                continue
            except OSError as error:
                raise errors.UserError(f"{self.folder}: cannot write here "
                                       f"({error.strerror})") from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
            return
        self._refuse(self._read())

    def _acquire_remote(self, text: str) -> None:
        from apache_beam.io.filesystems import FileSystems  # pylint: disable=C0415
        if FileSystems.exists(self.path):
            other = self._read()
            if not self._stale(other):
                self._refuse(other)
            self._note_takeover(other)
        with FileSystems.create(self.path) as handle:
            handle.write(text.encode("utf-8"))
        time.sleep(SETTLE_SECONDS)
        found = self._read()
        if not found or found.get("token") != self.record["token"]:
            self._refuse(found)

    def release(self) -> None:
        """Removes the claim if it is still this run's."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        found = self._read()
        if found and found.get("token") == self.record["token"]:
            from apache_beam.io.filesystems import FileSystems  # pylint: disable=C0415
            try:
                FileSystems.delete([self.path])
            except (IOError, OSError):
                pass
