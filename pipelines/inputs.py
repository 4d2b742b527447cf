"""The data folder of a preprocessing run: what it holds and whether it can be used.

Checked by the launcher before any pipeline starts, so a bad folder or flag ends in
one line (`errors.UserError`) instead of a failed job. Every entry gets an outcome:

- the pipeline lists DIR/** (Beam's local listing does not enter symlinked folders), plus
  DIR/<link>/** for each symlinked label folder that points outside DIR;
- a symlinked folder that loops back (to DIR, above it or inside it), a second link to
  the same folder, a symlinked folder below a label folder, a broken link and a folder
  that cannot be listed are not followed: each is counted as skipped with its reason.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence, Union

from apache_beam.io.filesystems import FileSystems

from pipelines import contract, dataset, errors, outputs

LOOP_REASON = "symlinked folder not followed: it links to the data folder or above it"
INSIDE_REASON = "symlinked folder not followed: it links inside the data folder"
SAME_REASON = "symlinked folder not followed: another link to the same folder"
NESTED_REASON = "symlinked folder below a label folder: not followed"
BROKEN_REASON = "broken symlink"
UNLISTABLE_REASON = "folder cannot be listed"
NAME_REASON = "file name is not valid UTF-8; rename it"


class Listing(NamedTuple):
    """What a data folder holds, as the pipeline will read it.

    Attributes:
      paths: every file the pipeline lists (what `check_inputs` derives labels from).
      patterns: the file patterns the pipeline matches.
      skipped: (path, reason) of each entry that is not read, with why.
    """
    paths: list[str]
    patterns: list[str]
    skipped: list[tuple[str, str]]


def glob_escape(path: str) -> str:
    """`path` as a Beam file pattern that matches it (Beam's patterns have no quoting).

    `*` and `?` become one-character sets; `[` becomes `[][]`, which also matches `]`
    (a set that starts with `[` is ambiguous to Python's regular expressions).
    """
    return "".join({"*": "[*]", "?": "[?]", "[": "[][]"}.get(c, c) for c in path)


def is_utf8(text: str) -> bool:
    """False for a name the OS gave with undecodable bytes (surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_bytes(path: str) -> bytes:
    """A path as bytes: local names that are not UTF-8 arrive with surrogate escapes,
    which Beam's str coder cannot encode; bytes travel between steps unchanged."""
    return path.encode("utf-8", "surrogateescape")


def printable(path: Union[str, bytes]) -> str:
    """A name (text or `path_bytes`) as valid UTF-8, undecodable bytes written as \\xNN,
    for messages and outputs."""
    raw = path if isinstance(path, bytes) else path_bytes(path)
    return raw.decode("utf-8", "backslashreplace")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(top: str, paths: list[str], skipped: list[tuple[str, str]],
          label_folder: bool) -> None:
    """Adds the files under `top` to `paths`, and what is not read to `skipped`.

    Symlinked folders below a label folder are skipped; those directly in DIR are
    the caller's (walked from `_list_local`, each with its own pattern).
    """
    def unlistable(error: OSError) -> None:
        skipped.append((error.filename or top, f"{UNLISTABLE_REASON} ({error.strerror})"))

    for folder, dirs, files in os.walk(top, onerror=unlistable):
        for name in dirs:
            path = os.path.join(folder, name)
            if os.path.islink(path) and (label_folder or folder != top):
                skipped.append((path, NESTED_REASON))
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not os.path.exists(path):
                skipped.append((path, BROKEN_REASON))  # Beam's listing drops it silently
            else:
                paths.append(path)


def _list_local(base: str) -> Listing:
    root = os.path.realpath(base)
    paths, skipped, patterns = [], [], [f"{glob_escape(base)}/**"]
    if not os.access(base, os.R_OK | os.X_OK):
        raise errors.UserError(f"{base}: cannot list (permission denied)")
    _walk(base, paths, skipped, label_folder=False)
    links = [entry for entry in os.scandir(base) if entry.is_symlink() and entry.is_dir()]
    followed: dict[str, str] = {}
    for link in sorted(links, key=lambda entry: entry.name):
        target = os.path.realpath(link.path)
        if _within(root, target):
            skipped.append((link.path, LOOP_REASON))
        elif _within(target, root):
            skipped.append((link.path, INSIDE_REASON))
        elif target in followed:
            skipped.append((link.path, f"{SAME_REASON} ({followed[target]})"))
        elif not is_utf8(link.name):
            skipped.append((link.path, NAME_REASON))
        else:
            followed[target] = link.name
            patterns.append(f"{glob_escape(link.path)}/**")
            _walk(link.path, paths, skipped, label_folder=True)
    return Listing(sorted(paths), patterns, sorted(skipped))


def list_inputs(data_dir: str) -> Listing:
    """Every file under DIR, local or gs://, and the entries that will not be read."""
    base = data_dir.rstrip("/") or "/"
    if "://" not in base:
        return _list_local(base)
    pattern = f"{glob_escape(base)}/**"
    try:
        results = FileSystems.match([pattern])
    except Exception as error:  # pylint: disable=broad-except
        raise errors.UserError(f"{data_dir}: cannot list ({errors.first_line(error)})")
    return Listing(sorted(meta.path for meta in results[0].metadata_list), [pattern], [])


def wanted_labels(labels_flag: Optional[str]) -> Optional[list[str]]:
    """The words of --labels, or None for every folder not starting with _."""
    return [label.strip() for label in labels_flag.split(",")] if labels_flag else None


def check_labels(data_dir: str, labels: list[str]) -> None:
    """Raises UserError for labels that would not survive labels.txt or are ambiguous.

    labels.txt is read back with each line stripped, so a name with leading or trailing
    spaces would shift every index after it; two names equal but for case are one word
    to a listener and two folders on a case-sensitive disk only.
    """
    seen: dict[str, str] = {}
    for label in labels:
        if label != label.strip() or any(c in label for c in "\r\n"):
            raise errors.UserError(f"{data_dir}/{label.strip()}: label folder {label!r} has "
                                   "leading or trailing spaces or a line break; rename it")
        other = seen.setdefault(label.casefold(), label)
        if other != label:
            raise errors.UserError(f"{data_dir}: labels {other!r} and {label!r} differ only "
                                   "in case; rename or merge one")


def check_inputs(data_dirs: Sequence[str], wanted: Optional[list[str]], unknown: bool = False,
                 silence: bool = False) -> tuple[list[str], Listing]:
    """Validates the data folders; returns the sorted labels and the listing of them all, or
    raises UserError.

    With `unknown` the labels include `_unknown_`, with `silence` `_silence_`. A label
    may have a folder in more than one data folder; their clips are one label.
    """
    where = ", ".join(data_dirs)
    listings = []
    for data_dir in data_dirs:
        if not is_utf8(data_dir):
            raise errors.UserError(f"{printable(data_dir)}: data folder name is not valid UTF-8")
        if "://" not in data_dir and not FileSystems.exists(data_dir):
            raise errors.UserError(f"{data_dir}: data folder not found")
        for other in data_dirs:
            if other != data_dir and outputs.is_within(data_dir, other):
                raise errors.UserError(f"{data_dir}: inside the other data folder {other}; "
                                       "give folders apart")
        listing = list_inputs(data_dir)
        if not listing.paths:
            raise errors.UserError(f"{data_dir}: no files found")
        listings.append(listing)
    listing = Listing(sorted(path for one in listings for path in one.paths),
                      [pattern for one in listings for pattern in one.patterns],
                      sorted(item for one in listings for item in one.skipped))
    # Files with undecodable names are rejected one by one by the pipeline.
    paths = [path for path in listing.paths if is_utf8(path)]
    labels = dataset.label_folders(paths, data_dirs, wanted, unknown)
    if unknown and dataset.UNKNOWN_LABEL not in labels:
        raise errors.UserError(
            f"{where}: --unknown-percent needs audio files of other words (folders not "
            f"in --labels, or {dataset.UNKNOWN_LABEL}/)")
    if silence:
        if not any(dataset.classify(path, data_dirs).skip_reason == dataset.BACKGROUND_REASON
                   for path in paths):
            raise errors.UserError(
                f"{where}: --silence-percent needs a {contract.BACKGROUND_NOISE_DIR}/ "
                "folder of noise recordings")
        labels = sorted(labels + [dataset.SILENCE_LABEL])
    if wanted:
        missing = sorted(set(wanted) - set(labels))
        if missing:
            raise errors.UserError(
                f"{where}: no audio files for label(s) {', '.join(missing)}")
    if not labels:
        raise errors.UserError(f"{where}: no label folders with audio files "
                               "(expected DIR/<label>/*.wav)")
    if len(labels) < 2:
        raise errors.UserError(f"{where}: only one label ({labels[0]}); a classifier "
                               "needs at least two label folders")
    check_labels(where, labels)
    return labels, listing
