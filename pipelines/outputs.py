"""The output folder of a preprocessing run: refusing, replacing and reading it back."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from pipelines import contract, errors


def run_outputs(output_dir: str) -> list[str]:
    """Files of an earlier run in OUT (shards, labels, metadata, rejected)."""
    base = output_dir.rstrip("/")
    patterns = [f"{base}/{contract.METADATA_FILE}", f"{base}/{contract.LABELS_FILE}",
                f"{base}/{contract.REJECTED_DIR}/*"]
    patterns += [f"{base}/{split}/*" for split in contract.SPLITS + (contract.BACKGROUND,)]
    return [meta.path for result in FileSystems.match(patterns)
            for meta in result.metadata_list]


def prepare_output(output_dir: str, overwrite: bool) -> None:
    existing = run_outputs(output_dir)
    if existing and not overwrite:
        raise errors.UserError(f"{output_dir}: already holds a preprocessing run "
                               "(pass --overwrite to replace it)")
    if existing:
        FileSystems.delete(existing)


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8")


def read_metadata(output_dir: str) -> contract.RunMetadata:
    """The metadata.json a finished run wrote."""
    return contract.RunMetadata.from_json(
        read_text(f"{output_dir.rstrip('/')}/{contract.METADATA_FILE}"))
