"""The data folder of a preprocessing run: what it holds and whether it can be used.

Checked by the launcher before any pipeline starts, so a bad folder or flag ends in
one line (`errors.UserError`) instead of a failed job.
"""

from __future__ import annotations

from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pipelines import contract, dataset, errors


def input_patterns(data_dir: str) -> list[str]:
    """The file patterns the pipeline lists: DIR/* and DIR/<folder>/*."""
    base = data_dir.rstrip("/")
    return [f"{base}/*", f"{base}/*/*"]


def list_inputs(data_dir: str) -> list[str]:
    """Every file directly in DIR or in one of its sub-folders."""
    try:
        results = FileSystems.match(input_patterns(data_dir))
    except Exception as error:  # pylint: disable=broad-except
        raise errors.UserError(f"{data_dir}: cannot list ({errors.first_line(error)})")
    return [meta.path for result in results for meta in result.metadata_list]


def wanted_labels(labels_flag: Optional[str]) -> Optional[list[str]]:
    """The words of --labels, or None for every folder not starting with _."""
    return [label.strip() for label in labels_flag.split(",")] if labels_flag else None


def check_inputs(data_dir: str, wanted: Optional[list[str]], unknown: bool = False,
                 silence: bool = False) -> list[str]:
    """Validates DIR and returns the sorted labels, or raises UserError.

    With `unknown` the labels include `_unknown_`, with `silence` `_silence_`.
    """
    if "://" not in data_dir and not FileSystems.exists(data_dir):
        raise errors.UserError(f"{data_dir}: data folder not found")
    paths = list_inputs(data_dir)
    if not paths:
        raise errors.UserError(f"{data_dir}: no files found")
    labels = dataset.label_folders(paths, data_dir, wanted, unknown)
    if unknown and dataset.UNKNOWN_LABEL not in labels:
        raise errors.UserError(
            f"{data_dir}: --unknown-percent needs .wav files of other words (folders not "
            f"in --labels, or {dataset.UNKNOWN_LABEL}/)")
    if silence:
        if not any(dataset.classify(path, data_dir).skip_reason == dataset.BACKGROUND_REASON
                   for path in paths):
            raise errors.UserError(
                f"{data_dir}: --silence-percent needs a {contract.BACKGROUND_NOISE_DIR}/ "
                "folder of .wav noise recordings")
        labels = sorted(labels + [dataset.SILENCE_LABEL])
    if wanted:
        missing = sorted(set(wanted) - set(labels))
        if missing:
            raise errors.UserError(
                f"{data_dir}: no .wav files for label(s) {', '.join(missing)}")
    if not labels:
        raise errors.UserError(f"{data_dir}: no label folders with .wav files "
                               "(expected DIR/<label>/*.wav)")
    if len(labels) < 2:
        raise errors.UserError(f"{data_dir}: only one label ({labels[0]}); a classifier "
                               "needs at least two label folders")
    return labels
