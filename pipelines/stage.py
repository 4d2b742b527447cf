"""Stages a local data folder to Cloud Storage, resuming where an earlier run stopped.

Every file under LOCAL_DIR goes to gs://BUCKET/PREFIX/<its path relative to LOCAL_DIR>,
so DIR/<label>/*.wav arrives as the layout `pipelines.preprocess` reads::

    python -m pipelines.stage data/speech_commands gs://BUCKET/speech
    python -m pipelines.stage data/speech_commands gs://BUCKET/speech --workers 32
    python -m pipelines.stage data/speech_commands gs://BUCKET/speech --delete

then::

    python -m pipelines.preprocess --data-dir gs://BUCKET/speech \\
        --output-dir gs://BUCKET/runs/speech/data --runner DataflowRunner ...

Uploads run in a thread pool. A file whose object is already there with the same
checksum (CRC32C, or MD5 where an object has no CRC32C) is not sent again. Each object is
uploaded whole, with its CRC32C checked by Cloud Storage, and only appears once complete:
after an interruption, running the same command again sends exactly what is missing or
different. A file that cannot be uploaded is named with the reason, the others still go,
and the command exits with 1. A missing LOCAL_DIR or a malformed gs:// URI exits with 2.

Objects under the prefix that have no file in LOCAL_DIR (deleted or renamed locally since
an earlier run) are listed and kept; with `--delete` they are removed, each only in the
version that was listed, so that the prefix then mirrors LOCAL_DIR.

Symbolic links are followed, to files and to folders; a link to a folder that is already
being staged (a loop, or a second link to the same folder) is skipped and named.

LOCAL_DIR is read with the local file system on purpose: this is the one step whose
input is, by definition, on this machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import NamedTuple, Optional

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from tqdm import tqdm

from pipelines import errors

DEFAULT_WORKERS = 16
CHUNK_BYTES = 1 << 20
LISTED_NAMES = 20  # remote-only objects named one per line; the rest are counted
# Bucket naming rules of Cloud Storage (dotted names may be up to 222 characters).
_GCS_URI = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(?:/(?P<prefix>.*))?$")


class LocalFile(NamedTuple):
    """One file to stage: where it is and the object name it gets."""
    path: str
    name: str


class StageResult(NamedTuple):
    """What a run did: object names uploaded and already there, upload failures by local
    path, objects with no local file, those deleted and those that could not be (by
    gs:// URI, with the reason), folders skipped (by path, with the reason)."""
    uploaded: list[str]
    present: list[str]
    failed: dict[str, str]
    uploaded_bytes: int
    remote_only: list[str] = []
    deleted: list[str] = []
    not_deleted: dict[str, str] = {}
    skipped: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.stage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("local_dir", metavar="LOCAL_DIR", help="local folder to upload")
    parser.add_argument("destination", metavar="gs://BUCKET/PREFIX",
                        help="where the folder's contents go")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"parallel uploads (default: {DEFAULT_WORKERS})")
    parser.add_argument("--project", default=None,
                        help="project billed for the requests (default: from the environment)")
    parser.add_argument("--delete", action="store_true",
                        help="delete the objects under the prefix that have no file in "
                        "LOCAL_DIR (without it they are listed and kept)")
    return parser


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """Splits gs://BUCKET/PREFIX into the bucket and the prefix without slashes at the ends.

    Raises:
      UserError: `uri` is not a gs:// URI with a valid bucket name.
    """
    match = _GCS_URI.match(uri)
    if not match or ".." in match.group("bucket"):
        raise errors.UserError(f"{uri}: not a Cloud Storage URI (expected gs://BUCKET/PREFIX)")
    return match.group("bucket"), (match.group("prefix") or "").strip("/")


def list_local(local_dir: str, prefix: str,
               skipped: Optional[dict[str, str]] = None) -> list[LocalFile]:
    """Every file under `local_dir` (sorted), with the object name it is staged to.

    Links to folders are followed; one leading to a folder already listed (a loop, or
    a second way to the same folder) is left out and recorded in `skipped`.
    """
    if not os.path.isdir(local_dir):
        reason = "not a folder" if os.path.exists(local_dir) else "folder not found"
        raise errors.UserError(f"{local_dir}: {reason}")
    skipped = {} if skipped is None else skipped
    visited = {os.path.realpath(local_dir)}
    files = []
    for root, dirs, names in os.walk(local_dir, followlinks=True):
        dirs.sort()
        kept = []
        for name in dirs:
            real = os.path.realpath(os.path.join(root, name))
            if real in visited:
                skipped[os.path.join(root, name)] = f"a link to {real}, staged already"
            else:
                visited.add(real)
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            files.append(LocalFile(path, f"{prefix}/{relative}" if prefix else relative))
    if not files:
        raise errors.UserError(f"{local_dir}: no files to stage")
    return files


def checksums(path: str) -> tuple[str, str]:
    """The base64 CRC32C and MD5 of a file, as Cloud Storage reports them for objects."""
    crc32c = google_crc32c.Checksum()
    md5 = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            crc32c.update(chunk)
            md5.update(chunk)
    return (base64.b64encode(crc32c.digest()).decode("ascii"),
            base64.b64encode(md5.digest()).decode("ascii"))


def same_content(path: str, remote: Optional[storage.Blob]) -> bool:
    """Whether the object `remote` already holds the bytes of the local file `path`."""
    if remote is None or remote.size != os.path.getsize(path):
        return False
    crc32c, md5 = checksums(path)
    if remote.crc32c:
        return remote.crc32c == crc32c
    # Objects written through some older tools carry only an MD5.
    return remote.md5_hash is not None and remote.md5_hash == md5


def remote_objects(client: storage.Client, bucket: str, prefix: str) -> dict[str, storage.Blob]:
    """The objects under gs://bucket/prefix/ by name, in one listing (pages of 1,000)."""
    uri = f"gs://{bucket}/{prefix}"
    try:
        blobs = client.list_blobs(bucket, prefix=f"{prefix}/" if prefix else None)
        return {blob.name: blob for blob in blobs}
    except api_exceptions.NotFound:
        raise errors.UserError(f"gs://{bucket}: bucket not found") from None
    except api_exceptions.GoogleAPICallError as error:
        raise errors.UserError(f"{uri}: cannot list ({errors.first_line(error)})") from None
    except (auth_exceptions.GoogleAuthError, OSError) as error:
        raise errors.UserError(f"{uri}: cannot list ({errors.first_line(error)})") from None


def make_client(project: Optional[str]) -> storage.Client:
    """A Cloud Storage client, or UserError when there are no credentials or no project."""
    try:
        return storage.Client(project=project)
    except (auth_exceptions.GoogleAuthError, OSError) as error:
        raise errors.UserError(f"cannot connect to Cloud Storage ({errors.first_line(error)}); "
                               "run `gcloud auth application-default login`") from None


class Uploader:
    """Uploads files to one bucket, one client per thread (a client's connection pool is
    sized for one thread's requests)."""

    def __init__(self, bucket: str, project: Optional[str], remote: dict[str, storage.Blob]):
        self._bucket = bucket
        self._project = project
        self._remote = remote
        self._local = threading.local()

    def _client_bucket(self) -> storage.Bucket:
        if not hasattr(self._local, "bucket"):
            self._local.bucket = make_client(self._project).bucket(self._bucket)
        return self._local.bucket

    def stage(self, file: LocalFile) -> bool:
        """Uploads `file` unless its object already holds the same bytes.

        Returns:
          True if the file was uploaded, False if it was already there.
        """
        if same_content(file.path, self._remote.get(file.name)):
            return False
        blob = self._client_bucket().blob(file.name)
        # Re-sending a whole file is idempotent, so transient errors may be retried even
        # without a generation precondition; checksum= makes the server verify the bytes.
        blob.upload_from_filename(file.path, checksum="crc32c", retry=DEFAULT_RETRY)
        return True


def remote_only(remote: dict[str, storage.Blob], files: list[LocalFile]) -> list[str]:
    """Names of the listed objects that no local file is staged to (folder markers aside)."""
    local = {file.name for file in files}
    return sorted(name for name in remote if name not in local and not name.endswith("/"))


def delete_objects(client: storage.Client, bucket: str, blobs: list[storage.Blob],
                   workers: int) -> tuple[list[str], dict[str, str]]:
    """Deletes `blobs`, each only if it is still the generation listed.

    Returns:
      (names deleted, failures as gs:// URI -> reason).
    """
    target = client.bucket(bucket)

    def delete(blob: storage.Blob) -> str:
        target.delete_blob(blob.name, if_generation_match=blob.generation,
                           retry=DEFAULT_RETRY)
        return blob.name

    deleted, failed = [], {}
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = {executor.submit(delete, blob): blob for blob in blobs}
        for future in as_completed(futures):
            try:
                deleted.append(future.result())
            except Exception as error:  # pylint: disable=broad-except
                # Changed since it was listed (412), or a transient error: kept, reported.
                failed[f"gs://{bucket}/{futures[future].name}"] = errors.first_line(error)
    return sorted(deleted), failed


def stage(local_dir: str, destination: str, workers: int = DEFAULT_WORKERS,
          project: Optional[str] = None, delete: bool = False) -> StageResult:
    """Uploads every file under `local_dir` that is not already at `destination`.

    Args:
      local_dir: local folder.
      destination: gs://BUCKET/PREFIX.
      workers: number of parallel uploads.
      project: project billed for the requests (None: from the environment).
      delete: also delete the objects under the prefix that have no local file.

    Returns:
      A StageResult.
    """
    bucket, prefix = parse_gcs_uri(destination)
    if workers < 1:
        raise errors.UserError(f"--workers must be at least 1, not {workers}")
    if delete and not prefix:
        raise errors.UserError(f"{destination}: --delete needs a PREFIX (it would apply to "
                               "the whole bucket)")
    skipped: dict[str, str] = {}
    files = list_local(local_dir, prefix, skipped)
    client = make_client(project)
    remote = remote_objects(client, bucket, prefix)
    extra = remote_only(remote, files)
    uploader = Uploader(bucket, project, remote)
    uploaded, present, failed, uploaded_bytes = [], [], {}, 0
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {executor.submit(uploader.stage, file): file for file in files}
        with tqdm(total=len(files), unit="file", desc="staging", disable=None) as progress:
            for future in as_completed(futures):
                file = futures[future]
                try:
                    if future.result():
                        uploaded.append(file.name)
                        uploaded_bytes += os.path.getsize(file.path)
                    else:
                        present.append(file.name)
                except Exception as error:  # pylint: disable=broad-except
                    # One bad file must not stop the others; it is reported and counted.
                    failed[file.path] = errors.first_line(error)
                    progress.write(f"failed: {file.path}: {failed[file.path]}", file=sys.stderr)
                progress.update()
    except KeyboardInterrupt:
        # Uploads in flight finish or vanish whole; a re-run sends whatever is missing.
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()
    deleted, not_deleted = [], {}
    if delete and extra:
        deleted, not_deleted = delete_objects(client, bucket, [remote[n] for n in extra],
                                              workers)
    return StageResult(sorted(uploaded), sorted(present), dict(sorted(failed.items())),
                       uploaded_bytes, extra, deleted, dict(sorted(not_deleted.items())),
                       skipped)


def run(argv: Optional[list[str]] = None) -> StageResult:
    """Stages a folder; prints a summary line. Raises UserError (exit 2) on bad input and
    PartialFailure (exit 1) when some files could not be uploaded."""
    args = build_parser().parse_args(argv)
    result = stage(args.local_dir, args.destination, args.workers, args.project,
                   args.delete)
    bucket, _ = parse_gcs_uri(args.destination)
    for path, reason in result.skipped.items():
        print(f"skipped: {path} ({reason})", file=sys.stderr)
    total = len(result.uploaded) + len(result.present) + len(result.failed)
    print(f"{args.destination}: {total} files: uploaded {len(result.uploaded)} "
          f"({result.uploaded_bytes / 1e6:.1f} MB), already there {len(result.present)}, "
          f"failed {len(result.failed)}; skipped {len(result.skipped)} linked folders")
    if result.remote_only:
        deleted = set(result.deleted)
        for name in result.remote_only[:LISTED_NAMES]:
            state = "deleted" if name in deleted else "kept"
            print(f"  not in {args.local_dir} ({state}): gs://{bucket}/{name}")
        more = len(result.remote_only) - LISTED_NAMES
        if more > 0:
            print(f"  ... and {more} more")
        print(f"{len(result.remote_only)} objects have no local file: "
              + (f"deleted {len(result.deleted)}" if args.delete
                 else "kept (--delete removes them)"))
    for uri, reason in result.not_deleted.items():
        print(f"failed: {uri}: not deleted ({reason})", file=sys.stderr)
    if result.failed or result.not_deleted:
        raise errors.PartialFailure(
            f"{len(result.failed)} of {total} files not uploaded"
            + (f" and {len(result.not_deleted)} objects not deleted" if result.not_deleted
               else "")
            + f" at {args.destination} (listed above); run the same command again to retry")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
