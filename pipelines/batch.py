"""What the Beam commands over files share: their command line, model and output folder.

`pipelines.predict` and `pipelines.detect` read WAV files matching --input with the
model exported in --model-dir and write sharded JSON Lines under --output::

    OUTPUT/<results>-SSSSS-of-NNNNN.jsonl      what the command found, one line per item
    OUTPUT/rejected/rejected-SSSSS-of-NNNNN.jsonl   {"path": ..., "reason": ...}

A run owns only the files named as its shards. An OUTPUT that holds such files from an
earlier run is refused; with --overwrite (where the command has it) exactly those files
are removed first, and nothing else in OUTPUT is touched. `beam_parser` also starts
`pipelines.preprocess`'s command line.
"""

from __future__ import annotations

import argparse
import re
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from pipelines import contract, errors, outputs

SHARDS_SUFFIX = ".jsonl"
# The names WriteToText gives its shards with the default template: PREFIX-00000-of-00003.
_SHARD_NAME = re.compile(r"-\d{5,}-of-\d{5,}" + re.escape(SHARDS_SUFFIX) + "$")


def beam_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser, described by the first paragraph of its `doc`; flags it does
    not define are left for Beam's PipelineOptions (`parse_known_args`)."""
    return argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0],
        epilog="Any other flag is passed to Beam's PipelineOptions (--runner, --project, ...).")


def batch_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """`beam_parser` with the flags of a command over files: --input, --model-dir, --output."""
    parser = beam_parser(prog, doc)
    parser.add_argument("--input", required=True,
                        help="file pattern of WAV files, e.g. 'gs://bucket/audio/**/*.wav'")
    parser.add_argument("--model-dir", required=True,
                        help="training job directory (or its export/ SavedModel)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    return parser


def load_export(model_dir: str) -> tuple[str, list[str]]:
    """The export folder of `model_dir` (`contract.find_export`) and its labels."""
    export_dir = contract.find_export(model_dir)
    return export_dir, contract.read_export_labels(export_dir)


def count_inputs(pattern: str) -> int:
    """How many files match `pattern`; none is a UserError."""
    listed = len(FileSystems.match([pattern])[0].metadata_list)
    if not listed:
        raise errors.UserError(f"{pattern}: no files match")
    return listed


def rejected_prefix(output: str) -> str:
    """Where the rejected/ shards of a run into `output` go (WriteToText's prefix)."""
    return f"{output}/{contract.REJECTED_DIR}/{contract.REJECTED_PREFIX}"


def write_shards(prefix: str, num_shards: int = 0) -> beam.PTransform:
    """Writes lines to the shards of `prefix` (`num_shards` 0: the runner decides)."""
    return beam.io.WriteToText(prefix, file_name_suffix=SHARDS_SUFFIX, num_shards=num_shards)


def shards_of(prefix: str) -> str:
    """Glob of the shards written to `prefix`."""
    return f"{prefix}-*-of-*{SHARDS_SUFFIX}"


def shard_files(pattern: str) -> list[str]:
    """The files matching `pattern` that are named as WriteToText names shards, sorted."""
    return sorted(match.path for match in FileSystems.match([pattern])[0].metadata_list
                  if _SHARD_NAME.search(match.path))


def prepare_output(output: str, patterns: Iterable[str],
                   overwrite: Optional[bool] = None) -> None:
    """Refuses an `output` holding shards (of `patterns`) of an earlier run; with
    `overwrite`, removes just those. None: the command has no --overwrite."""
    earlier = sorted(path for pattern in patterns for path in shard_files(pattern))
    if not earlier:
        return
    if not overwrite:
        names = ", ".join(path[len(output) + 1:] for path in earlier[:3])
        more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
        how = ("pass --overwrite to replace them, or choose another --output"
               if overwrite is not None else "choose another --output")
        raise errors.UserError(f"{output}: already holds the output of a run "
                               f"({names}{more}); {how}")
    FileSystems.delete(earlier)


def count_lines(pattern: str) -> int:
    """Lines in the shards matching `pattern` (what a run wrote, read back)."""
    return sum(outputs.count_lines(path) for path in shard_files(pattern))


def counter(result, namespace: str, name: str) -> Optional[int]:
    """A Beam counter's total after the run (None where the runner reports no metrics)."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace)
                                          .with_name(name))["counters"]
    except Exception:  # pylint: disable=broad-except  # some runners report no metrics
        return None
    return sum(item.committed or item.attempted or 0 for item in counters)
