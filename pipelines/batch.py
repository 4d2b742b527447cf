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
import logging
import os
import re
import sys
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

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


def _not_resource_module_noise(record: logging.LogRecord) -> bool:
    return "Resource module is not available" not in record.getMessage()


def untimed_local_data_channel() -> None:
    """Turns off the timed flush of the local runner's data channel.

    The DirectRunner's multi-process and multi-threading modes stream each bundle's
    input to their workers over gRPC, and in the multi-threading mode the workers'
    output back, through buffers that a timer thread flushes every second
    (`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`). The flush hands the buffer to the send
    queue, which blocks when full, and then clears it, while the writing thread goes on
    writing without a lock: what it writes meanwhile is cleared unsent. With two workers,
    large examples and a busy CPU, whole chunks of examples went missing that way
    (docs/design.md, "Element size on the multi-process DirectRunner"). With 0 the
    buffers are flushed only by the thread that writes them. Dataflow does not read it.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam's options from the flags a command does not define itself.

    A flag that is neither the command's nor any Beam pipeline option's (a misspelt
    `--treshold 0.3`) is a UserError: Beam would discard it with a log line and the run
    would go on without it. Also turns off the local runner's timed flush
    (`untimed_local_data_channel`).
    """
    untimed_local_data_channel()
    # The multi-process DirectRunner forwards each worker's start-up warnings (no
    # semi-persistent directory, the runner's own flags discarded): noise on every run.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
        logging.ERROR)
    # Beam's RunInference warns, on every batch, that it cannot read the memory in use
    # (its optional model manager failed to import, and the resource module with it).
    logging.getLogger().addFilter(_not_resource_module_noise)
    options = PipelineOptions(beam_args)
    quiet = logging.getLogger("apache_beam.options.pipeline_options")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Beam warns of the flags it discards; we refuse them
    try:
        known = set(options.get_all_options())
        unknown = set(options.get_all_options(retain_unknown_options=True)) - known
    finally:
        quiet.setLevel(level)
    if unknown:
        flags = [arg.split("=", 1)[0] for arg in beam_args if arg.startswith("-")
                 and arg.lstrip("-").split("=", 1)[0].replace("-", "_") in unknown]
        raise errors.UserError(f"{', '.join(flags or sorted(unknown))}: not a flag of this "
                               "command nor a Beam pipeline option (see --help)")
    return options


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
    """How many files match `pattern`; none, or a listing that fails, is a UserError."""
    if "://" not in pattern and os.path.isdir(pattern):
        raise errors.UserError(f"{pattern}: is a folder; give a file pattern such as "
                               f"'{pattern.rstrip('/')}/*.wav' or '{pattern.rstrip('/')}/**'")
    if "://" in pattern:
        print(f"listing {pattern} (a store that cannot be reached is retried for up to two "
              "minutes)", file=sys.stderr, flush=True)
    try:
        listed = len(FileSystems.match([pattern])[0].metadata_list)
    except Exception as error:  # pylint: disable=broad-except  # each filesystem its own
        raise errors.UserError(f"{pattern}: cannot list ({errors.first_line(error)})") \
            from None
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


def prepare_output(output: str, prefixes: Iterable[str],
                   overwrite: Optional[bool] = None) -> None:
    """Refuses an `output` holding what an earlier run wrote to `prefixes` (its shards, or
    the temporary folders of a run stopped before its sinks finished); with `overwrite`,
    removes just those. None: the command has no --overwrite."""
    outputs.check_writable_folder(output)
    earlier, folders = [], []
    for prefix in prefixes:
        earlier += shard_files(shards_of(prefix))
        temp_files, temp_folders = outputs.sink_temp_files(prefix)
        earlier += temp_files
        folders += temp_folders
    earlier.sort()
    if not earlier and not folders:
        return
    if not overwrite:
        names = ", ".join(path[len(output) + 1:] for path in (earlier or folders)[:3])
        count = len(earlier or folders)
        more = f" and {count - 3} more" if count > 3 else ""
        how = ("pass --overwrite to replace them, or choose another --output"
               if overwrite is not None else "choose another --output")
        raise errors.UserError(f"{output}: already holds the output of a run "
                               f"({names}{more}); {how}")
    if earlier:
        FileSystems.delete(earlier)
    remaining = [folder for folder in folders if os.path.isdir(folder)]
    if remaining:
        FileSystems.delete(remaining)


WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Permission denied")


def run_pipeline(pipeline: beam.Pipeline, output: str, prefixes: Iterable[str]):
    """Runs `pipeline` to the end; its result.

    A run that does not finish (Ctrl-C, a full disk, a failed step) leaves no temporary
    sink folders behind: `prepare_output` found none before the run, so those under
    `prefixes` are this run's, and they are removed. A write that failed for lack of
    space or permission is one line (PartialFailure) instead of Beam's traceback.
    """
    try:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    except BaseException as error:
        for prefix in prefixes:
            files, folders = outputs.sink_temp_files(prefix)
            try:
                FileSystems.delete(files + [folder for folder in folders
                                            if os.path.isdir(folder)])
            except (IOError, OSError):
                pass
        reason = next((reason for reason in WRITE_FAILURES if reason in str(error)), None)
        if reason and isinstance(error, Exception):
            raise errors.PartialFailure(f"{output}: cannot write ({reason}); the run "
                                        "stopped and its temporary files were removed") \
                from None
        raise


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
