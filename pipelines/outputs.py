"""The output folder of a preprocessing run: what the run owns, refusing and replacing it.

A run owns only files it names itself, in its own places::

    OUT/preprocess_run.json  OUT/labels.txt  OUT/metadata.json
    OUT/{train,val,test,background}/data-SSSSS-of-NNNNN.tfrecord[.gz]
    OUT/rejected/rejected-SSSSS-of-NNNNN.jsonl
    OUT/<place>/beam-temp-<prefix>-<uuid>/...     a sink's temporary files, until it ends

The marker `preprocess_run.json` is written before anything else, so even a run killed
before its metadata.json is recognised as a run. `--overwrite` removes exactly the files
above, and only from a folder that holds a run and nothing else in those places; no
command ever writes into the data folder it reads.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import struct
from typing import NamedTuple, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import contract, errors

PLACES = contract.SPLITS + (contract.BACKGROUND, contract.REJECTED_DIR)
TOP_FILES = (contract.MARKER_FILE, contract.LABELS_FILE, contract.METADATA_FILE)
_SHARD = re.compile(rf"{contract.SHARD_PREFIX}-\d{{5,}}-of-\d{{5,}}"
                    rf"{re.escape(contract.SHARD_SUFFIX)}({re.escape(contract.GZIP_SUFFIX)})?")
_REJECTED = re.compile(rf"{contract.REJECTED_PREFIX}-\d{{5,}}-of-\d{{5,}}"
                       rf"{re.escape(contract.REJECTED_SUFFIX)}")
TEMP_DIR = re.compile(r"beam-temp-(?P<prefix>[^/]+)-[0-9a-f]{32}")


class Contents(NamedTuple):
    """The files in a run's places: those a run writes, and any other."""
    owned: list[str]
    foreign: list[str]
    temp_dirs: list[str]  # local sink folders, removed once their files are


def _is_local(path: str) -> bool:
    return "://" not in path


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it (local paths with symlinks resolved)."""
    if _is_local(path) != _is_local(folder):
        return False
    if _is_local(path):
        path, folder = os.path.realpath(path), os.path.realpath(folder)
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def _owned(place: str, relative: str) -> bool:
    """Whether a file at OUT/<place>/<relative> has a name this command writes."""
    first, _, rest = relative.partition("/")
    temp = TEMP_DIR.fullmatch(first)
    prefix = contract.REJECTED_PREFIX if place == contract.REJECTED_DIR \
        else contract.SHARD_PREFIX
    if temp:
        return temp.group("prefix") == prefix and bool(rest)
    return bool(not rest and (_REJECTED if place == contract.REJECTED_DIR
                              else _SHARD).fullmatch(first))


def contents(output_dir: str) -> Contents:
    """Sorts what OUT's run places and top files hold into owned and foreign."""
    base = output_dir.rstrip("/")
    owned, foreign, temp_dirs = [], [], []
    for name in TOP_FILES:
        if FileSystems.exists(f"{base}/{name}"):
            owned.append(f"{base}/{name}")
    for place in PLACES:
        root = f"{base}/{place}"
        for meta in FileSystems.match([f"{root}/**"])[0].metadata_list:
            relative = meta.path[len(root) + 1:].replace(os.sep, "/")
            (owned if _owned(place, relative) else foreign).append(meta.path)
        if _is_local(root) and os.path.isdir(root):
            temp_dirs += [entry.path for entry in os.scandir(root)
                          if entry.is_dir(follow_symlinks=False)
                          and TEMP_DIR.fullmatch(entry.name)]
    return Contents(sorted(owned), sorted(foreign), sorted(temp_dirs))


def _finished_run(base: str) -> bool:
    """Whether OUT holds the metadata.json of a run (made before runs had a marker)."""
    try:
        contract.RunMetadata.from_json(read_text(f"{base}/{contract.METADATA_FILE}"),
                                       check=False)
    except (ValueError, IOError, OSError, UnicodeDecodeError):
        return False
    return True


def check_output_place(output_dir: str, data_dirs: Sequence[str]) -> None:
    """UserError for an OUT that is or is inside one of the data folders, or that cannot
    be a folder this command writes."""
    for data_dir in data_dirs:
        if is_within(output_dir, data_dir):
            raise errors.UserError(f"{output_dir}: the output folder is inside the data "
                                   f"folder {data_dir}; choose one outside it")
    check_writable_folder(output_dir)


def prepare_output(output_dir: str, data_dirs: Sequence[str], overwrite: bool) -> None:
    """Makes OUT ready for a run, or raises UserError without touching anything.

    Refused: OUT that is or is inside the data folder; OUT whose run places hold files
    this command does not write; a run already there, unless `overwrite`, which then
    removes exactly that run's files. Leaves the marker in place for the new run.
    """
    check_output_place(output_dir, data_dirs)
    base = output_dir.rstrip("/")
    found = contents(output_dir)
    if found.foreign:
        more = f" and {len(found.foreign) - 1} more" if len(found.foreign) > 1 else ""
        raise errors.UserError(f"{found.foreign[0]}{more}: not written by preprocessing, in "
                               f"the output folder's run places; choose another --output-dir")
    marker = f"{base}/{contract.MARKER_FILE}"
    if found.owned and marker not in found.owned and not _finished_run(base):
        raise errors.UserError(f"{output_dir}: holds {posixpath.basename(found.owned[0])} "
                               f"but no {contract.MARKER_FILE}: not a run this command made "
                               "(remove it yourself or choose another --output-dir)")
    if found.owned and not overwrite:
        state = ("a preprocessing run" if f"{base}/{contract.METADATA_FILE}" in found.owned
                 else f"an unfinished preprocessing run (no {contract.METADATA_FILE})")
        raise errors.UserError(f"{output_dir}: already holds {state} "
                               "(pass --overwrite to replace it)")
    stale = [path for path in found.owned if path != marker]
    if stale:
        FileSystems.delete(stale)
    if found.temp_dirs:
        FileSystems.delete(found.temp_dirs)
    write_text(marker, json.dumps({
        "written_by": "python -m pipelines.preprocess",
        "places": list(PLACES), "files": list(TOP_FILES)}, indent=2) + "\n")


def sink_temp_files(prefix: str) -> tuple[list[str], list[str]]:
    """(files, local folders) of the temporary folders a Beam sink writing to `prefix`
    leaves when its run is stopped before the sink finishes: PREFIX's folder's
    beam-temp-<name>-<uuid>/ (the folders are listed only where they exist on disk)."""
    folder, _, name = prefix.rstrip("/").rpartition("/")

    def ours(name_in_folder: str) -> bool:
        match = TEMP_DIR.fullmatch(name_in_folder)
        return bool(match) and match.group("prefix") == name

    listed = FileSystems.match([f"{folder}/beam-temp-{name}-*/**"])[0].metadata_list
    files = [meta.path for meta in listed
             if ours(meta.path[len(folder) + 1:].replace(os.sep, "/").split("/", 1)[0])]
    folders = []
    if _is_local(folder) and os.path.isdir(folder):
        folders = [entry.path for entry in os.scandir(folder)
                   if entry.is_dir(follow_symlinks=False) and ours(entry.name)]
    return sorted(files), sorted(folders)


def check_writable_folder(folder: str) -> None:
    """UserError when a local `folder` is a file, or exists and cannot be written."""
    if not _is_local(folder):
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise errors.UserError(f"{folder}: exists and is not a folder")
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip(os.sep))
    if probe and not os.access(probe, os.W_OK | os.X_OK):
        raise errors.UserError(f"{folder}: cannot write here (permission denied on {probe})")


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8")


def read_metadata(output_dir: str) -> contract.RunMetadata:
    """The metadata.json a run has just written, as written (its counts are not checked)."""
    return contract.RunMetadata.from_json(
        read_text(f"{output_dir.rstrip('/')}/{contract.METADATA_FILE}"), check=False)


def count_records(path: str) -> int:
    """Records in one TFRecord file (gzip by its suffix), from the record framing alone.

    Each record is a uint64 length, a 4-byte CRC of it, the data and a 4-byte CRC; an
    uncompressed file is counted by seeking over the data, without reading it.

    Raises:
      IOError: the file ends inside a record (cut short).
    """
    gzip = path.endswith(contract.GZIP_SUFFIX)
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    count, position = 0, 0
    with FileSystems.open(path, compression_type=CompressionTypes.GZIP if gzip
                          else CompressionTypes.UNCOMPRESSED) as handle:
        while True:
            header = handle.read(12)
            if not header:
                return count
            (length,) = struct.unpack("<Q", header.ljust(12, b"\0")[:8])
            if gzip:
                whole = len(header) == 12 and len(handle.read(length + 4)) == length + 4
            else:
                position += 12 + length + 4
                whole = len(header) == 12 and position <= size
                handle.seek(position)
            if not whole:
                raise IOError(f"{path}: cut short after {count} records")
            count += 1


def count_lines(path: str) -> int:
    """Lines in one text file (a rejected/*.jsonl shard)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
