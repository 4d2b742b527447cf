"""Downloads and unpacks the "Simple audio recognition" tutorial's mini Speech Commands.

Fetches `mini_speech_commands.zip` (8,000 one-second clips of eight words, about 182 MB)
from TensorFlow's public storage over https, checks it (its SHA-256: pinned for the
tutorial's URL, or given with --sha256; every member's CRC; the expected layout
`mini_speech_commands/{down,go,left,no,right,stop,up,yes}/*.wav`; the limits below on
download size, member count and unpacked size, before anything is unpacked), and unpacks
it to DEST. The archive goes to a temporary file and is
unpacked into a temporary folder next to DEST/mini_speech_commands, renamed into place
only once every member has been written: a failed or interrupted run leaves nothing
behind, and a second run finds the folder and does nothing::

    python -m pipelines.download
    python -m pipelines.download --dest data --sha256 HEX
    python -m pipelines.download --url file:///path/to/mini_speech_commands.zip

then::

    python -m pipelines.preprocess --data-dir data/mini_speech_commands \\
        --output-dir runs/mini_speech_commands/data

DEST is a local folder (unpacking is file-by-file work best done next to the disk);
copy it to Cloud Storage afterwards for Dataflow, e.g. with `gcloud storage cp -r`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Optional

from tqdm import tqdm

from pipelines import errors

DEFAULT_URL = ("https://storage.googleapis.com/download.tensorflow.org/data/"
               "mini_speech_commands.zip")
# SHA-256 of the tutorial's zip (182,082,353 bytes), the same object over http and https.
KNOWN_SHA256 = {
    url: "49650f2341b26d886b46b3f4fb8fed59e30300b17550f1ee4a768b3106cf93a0"
    for url in (DEFAULT_URL, DEFAULT_URL.replace("https://", "http://", 1))
}
# What one download may cost, checked before unpacking anything. The tutorial's zip is
# 182 MB, holds 8,000 clips (with their macOS resource-fork copies, about 16,000
# members) and unpacks to about 260 MB.
MAX_DOWNLOAD_BYTES = 512 * 2**20
MAX_MEMBERS = 20_000
MAX_UNPACKED_BYTES = 2**30
MAX_DIRECTORY_BYTES = MAX_MEMBERS * 512  # the zip's table of contents, read before counting
DEFAULT_DEST = "data"
TOP_FOLDER = "mini_speech_commands"
WORDS = ("down", "go", "left", "no", "right", "stop", "up", "yes")
# macOS adds resource-fork copies under __MACOSX/ when it zips a folder; they are not audio.
IGNORED_TOP = "__MACOSX"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.download",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=DEFAULT_DEST,
                        help=f"local folder to unpack into (default: {DEFAULT_DEST})")
    parser.add_argument("--url", default=DEFAULT_URL, help="where to fetch the zip from")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of the zip (hex); pinned for the default URL")
    return parser


def is_unpacked(folder: Path) -> bool:
    """Whether `folder` holds the eight word folders, each with at least one WAV."""
    for word in WORDS:
        sub = folder / word
        if not sub.is_dir() or not any(path.suffix.lower() == ".wav" for path in sub.iterdir()):
            return False
    return True


def fetch(url: str, target: Path) -> str:
    """Streams `url` to `target` with a progress bar.

    Args:
      url: http(s):// or file:// address.
      target: local file to write.

    Returns:
      The SHA-256 (hex) of what was written.

    Raises:
      UserError: network or HTTP error, or a transfer cut short.
    """
    digest = hashlib.sha256()
    received, expected = 0, None
    try:
        out = open(target, "wb")
    except OSError as error:
        raise errors.UserError(f"{target.parent}: cannot write ({error.strerror or error})"
                               ) from None
    try:
        with out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > MAX_DOWNLOAD_BYTES:
                raise errors.UserError(f"{url}: {expected:,} bytes, over the "
                                       f"{MAX_DOWNLOAD_BYTES:,}-byte download limit")
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=TOP_FOLDER + ".zip", file=sys.stderr, disable=None) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    try:
                        out.write(chunk)
                    except OSError as error:
                        raise errors.UserError(f"{target.parent}: cannot write "
                                               f"({error.strerror or error})") from None
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if received > MAX_DOWNLOAD_BYTES:
                        raise errors.UserError(f"{url}: more than the {MAX_DOWNLOAD_BYTES:,}"
                                               "-byte download limit")
    except urllib.error.HTTPError as error:
        raise errors.UserError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise errors.UserError(f"{url}: cannot download ({error.reason})") from None
    except (HTTPException, OSError) as error:
        # Connection reset, timeout, or http.client.IncompleteRead on a short body.
        raise errors.UserError(f"{url}: download failed after {received:,} bytes "
                               f"({errors.first_line(error)})") from None
    if expected is not None and received != expected:
        raise errors.UserError(
            f"{url}: truncated download ({received:,} of {expected:,} bytes)")
    return digest.hexdigest()


def member_path(name: str, url: str) -> PurePosixPath:
    """The relative path of a zip member, refusing any that would land outside DEST."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise errors.UserError(f"{url}: unsafe path in archive ({name!r} escapes the "
                               "destination folder)")
    return path


def check_directory(archive_path: Path, url: str) -> None:
    """Refuses a zip whose table of contents is too large, before zipfile reads it whole.

    Reads the end-of-central-directory record (and its zip64 form when the sizes
    overflow it): the member count and the directory's size.
    """
    size = archive_path.stat().st_size
    with open(archive_path, "rb") as handle:
        tail_bytes = min(size, 22 + 65535)  # the record, then a comment of up to 64 KB
        handle.seek(size - tail_bytes)
        tail = handle.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) - end < 22:
            return  # not a zip: zipfile says so in its own words
        members, directory = struct.unpack_from("<HI", tail, end + 10)
        locator = end - 20
        if (members == 0xFFFF or directory == 0xFFFFFFFF) and locator >= 0 and \
                tail[locator:locator + 4] == b"PK\x06\x07":
            handle.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                members, directory = struct.unpack_from("<QQ", record, 32)
    if members > MAX_MEMBERS:
        raise errors.UserError(f"{url}: {members:,} members in archive, over the limit of "
                               f"{MAX_MEMBERS:,}")
    if directory > MAX_DIRECTORY_BYTES:
        raise errors.UserError(f"{url}: a {directory:,}-byte table of contents, over the "
                               f"limit of {MAX_DIRECTORY_BYTES:,}")


def check_layout(archive: zipfile.ZipFile, url: str) -> list[zipfile.ZipInfo]:
    """Validates member paths, count, sizes and the layout; returns the members to unpack.

    Raises:
      UserError: a member escapes DEST, too many members or too many bytes once
        unpacked, or a word folder is missing or has no WAV files.
    """
    if len(archive.infolist()) > MAX_MEMBERS:
        raise errors.UserError(f"{url}: {len(archive.infolist()):,} members in archive, over "
                               f"the limit of {MAX_MEMBERS:,}")
    members, wavs = [], {word: 0 for word in WORDS}
    for info in archive.infolist():
        path = member_path(info.filename, url)
        if not path.parts or path.parts[0] != TOP_FOLDER:
            continue  # __MACOSX/ and anything else outside the data folder stay packed
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise errors.UserError(f"{url}: symbolic link in archive ({info.filename!r})")
        members.append(info)
        if len(path.parts) == 3 and path.parts[1] in wavs and path.suffix.lower() == ".wav":
            wavs[path.parts[1]] += 1
    if not members:
        raise errors.UserError(f"{url}: unexpected layout (no {TOP_FOLDER}/ folder)")
    # zipfile stops each member at its declared size (and fails its CRC if the data go
    # on), so the declared sizes bound what unpacking writes.
    unpacked = sum(info.file_size for info in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise errors.UserError(f"{url}: unpacks to {unpacked:,} bytes, over the limit of "
                               f"{MAX_UNPACKED_BYTES:,}")
    empty = [word for word, count in wavs.items() if not count]
    if empty:
        raise errors.UserError(f"{url}: unexpected layout (no WAV files in "
                               f"{', '.join(f'{TOP_FOLDER}/{word}/' for word in empty)})")
    return members


def unpack(archive_path: Path, staging: Path, url: str) -> int:
    """Checks and unpacks the zip into `staging`; returns the number of WAV files.

    Every member is read through zipfile, which verifies its CRC-32 at the end of it.
    """
    check_directory(archive_path, url)
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = check_layout(archive, url)
            wav_count = 0
            for info in tqdm(members, desc="unpacking", unit="file", file=sys.stderr,
                             disable=None):
                target = staging.joinpath(*member_path(info.filename, url).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
                wav_count += target.suffix.lower() == ".wav"
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError) as error:
        raise errors.UserError(f"{url}: corrupt zip ({errors.first_line(error)})") from None
    except OSError as error:
        raise errors.UserError(f"{staging.parent}: cannot unpack ({error.strerror or error})"
                               ) from None
    return wav_count


def download(dest: str, url: str = DEFAULT_URL, sha256: Optional[str] = None) -> Path:
    """Downloads, checks and unpacks the data set into DEST/mini_speech_commands.

    Args:
      dest: local folder; created if missing.
      url: address of mini_speech_commands.zip.
      sha256: expected SHA-256 of the zip (hex); None: the one pinned for `url` in
        KNOWN_SHA256, or no check for a URL without one (said in the summary).

    Returns:
      The unpacked data folder.

    Raises:
      UserError: bad arguments, download, archive or layout; nothing is left behind.
    """
    if "://" in dest:
        raise errors.UserError(f"{dest}: --dest must be a local folder")
    if sha256 is not None and not _SHA256.match(sha256):
        raise errors.UserError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    source = "--sha256" if sha256 is not None else "pinned"
    sha256 = sha256 or KNOWN_SHA256.get(url)
    root = Path(dest)
    final = root / TOP_FOLDER
    if final.exists():
        if final.is_dir() and is_unpacked(final):
            print(f"{final}: already unpacked, nothing to do")
            return final
        raise errors.UserError(f"{final}: exists but is not a complete unpack "
                               "(remove it and run again)")
    if root.exists() and not root.is_dir():
        raise errors.UserError(f"{dest}: not a folder")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{TOP_FOLDER}-", dir=root))
    except OSError as error:
        raise errors.UserError(f"{dest}: cannot create ({error.strerror or error})") from None
    archive_path = root / (staging.name + ".zip.part")
    try:
        digest = fetch(url, archive_path)
        if sha256 is not None and digest != sha256.lower():
            raise errors.UserError(f"{url}: SHA-256 mismatch (expected {sha256.lower()}, "
                                   f"{source}; got {digest})")
        size = archive_path.stat().st_size
        wav_count = unpack(archive_path, staging, url)
        os.replace(staging / TOP_FOLDER, final)
    finally:
        archive_path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    checked = (f"{source} checksum matched" if sha256 else
               "not checked: no known checksum for this URL, pass --sha256 to check it")
    print(f"downloaded {size / 1e6:.1f} MB from {url} (sha256 {digest}, {checked})")
    print(f"unpacked {wav_count:,} WAV files to {final}")
    print(f"next: python -m pipelines.preprocess --data-dir {final} "
          f"--output-dir runs/{TOP_FOLDER}/data")
    return final


def run(argv: Optional[list[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    return download(args.dest, args.url, args.sha256)


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
