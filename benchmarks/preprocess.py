"""Times the preprocessing pipeline against a plain single-process loop doing the same work.

Each contender runs as its own process, timed wall-clock from start to exit (its imports
included), best of --repeat runs, the runs interleaved so that load from elsewhere on the
machine falls on all of them alike:

  baseline     `python -m benchmarks.preprocess --baseline`: list the files, decode each
               with `audio.featurize`, split with `dataset.split_for_speaker`, serialize
               with `contract.serialize_example` (waveform included) and write one
               TFRecord file per split with `tf.io.TFRecordWriter`;
  pipeline     `python -m pipelines.preprocess` on the in-memory DirectRunner;
  pipeline x2  the same with `--direct_running_mode multi_processing --direct_num_workers 2`.

It then checks that the baseline and each pipeline wrote the same number of records per
split and prints seconds, clips per second and the ratio to the baseline, against the
target of a pipeline within 1.5x of the baseline::

    python -m benchmarks.preprocess --data-dir /tmp/data/speech_commands_subset
    python -m benchmarks.preprocess --data-dir data/sample --work-dir /tmp/bench --repeat 1
    python -m benchmarks.preprocess --baseline --data-dir data/sample --output-dir /tmp/baseline

The work folder is local (the outputs are counted by reading them); without --work-dir a
temporary one is used and removed; a --work-dir must be new or empty, and the last run of
each contender is kept there.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from pipelines import audio, contract, dataset, errors

TARGET_RATIO = 1.5
DEFAULT_REPEAT = 3
BASELINE = "baseline"
PIPELINE = "pipeline"
PIPELINE_MP = "pipeline-x2"
MULTI_PROCESS_FLAGS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Timing(NamedTuple):
    """Best wall and CPU time of one contender and the records it wrote per split."""
    name: str
    seconds: float
    cpu_seconds: float
    counts: dict[str, int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocess",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder of <label>/*.wav")
    parser.add_argument("--work-dir", default=None,
                        help="local folder for the runs' outputs (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help="runs of each contender; the fastest counts")
    parser.add_argument("--baseline", action="store_true",
                        help="run the plain loop once, writing to --output-dir")
    parser.add_argument("--output-dir", default=None, help="output folder of --baseline")
    return parser


# --- the baseline: what a plain script would do --------------------------------------

def run_baseline(data_dir: str, output_dir: str) -> dict[str, int]:
    """Preprocesses `data_dir` in a plain loop; returns the records written per split.

    Same labels, features, split and serialization as the pipeline's defaults (speaker
    split, waveforms stored); one uncompressed shard per split. Background-noise
    recordings are written too, as the pipeline does, so both do the same work.

    Args:
      data_dir: folder of <label>/*.wav (local or gs://).
      output_dir: where OUT/{train,val,test}/data-00000-of-00001.tfrecord go.

    Returns:
      {split: records}, with `background` when there were noise recordings.
    """
    # TensorFlow is what such a script uses for TFRecords and, with it, for paths
    # (tf.io.gfile); imported here so that the timing parent process never loads it.
    import tensorflow as tf

    base = data_dir.rstrip("/")
    if not tf.io.gfile.isdir(base):
        raise errors.UserError(f"{data_dir}: data folder not found")
    paths = sorted(tf.io.gfile.glob(f"{base}/*/*"))
    labels = dataset.label_folders(paths, base)
    if len(labels) < 2:
        raise errors.UserError(f"{data_dir}: needs at least two label folders of .wav files")
    index = {label: i for i, label in enumerate(labels)}
    out = output_dir.rstrip("/")
    counts = {split: 0 for split in contract.SPLITS}
    writers = {}
    for split in contract.SPLITS + (contract.BACKGROUND,):
        tf.io.gfile.makedirs(f"{out}/{split}")
        writers[split] = tf.io.TFRecordWriter(
            f"{out}/{split}/{contract.SHARD_PREFIX}-00000-of-00001{contract.SHARD_SUFFIX}")
    with tf.io.gfile.GFile(f"{out}/{contract.LABELS_FILE}", "w") as handle:
        handle.write(contract.format_labels(labels))
    for path in paths:
        entry = dataset.classify(path, base)
        if entry.label is None and entry.skip_reason != dataset.BACKGROUND_REASON:
            continue
        with tf.io.gfile.GFile(path, "rb") as handle:
            data = handle.read()
        try:
            if entry.label is None:
                writers[contract.BACKGROUND].write(
                    contract.serialize_background(audio.decode_wav(data), path))
                counts[contract.BACKGROUND] = counts.get(contract.BACKGROUND, 0) + 1
                continue
            clip = audio.featurize(data)
        except audio.AudioError:
            continue  # the pipeline lists these in rejected/; the timing ignores them
        speaker = dataset.speaker_id(path)
        split = dataset.split_for_speaker(speaker)
        writers[split].write(contract.serialize_example(
            clip.spectrogram, index[entry.label], entry.label, speaker, path,
            clip.num_samples, clip.waveform))
        counts[split] += 1
    for writer in writers.values():
        writer.close()
    return counts


# --- timing ----------------------------------------------------------------------------

def count_records(output_dir: Path) -> dict[str, int]:
    """Records per split (and `background` when present) in a run's uncompressed shards.

    Reads only the 12-byte TFRecord headers (length, length CRC) and skips the payloads,
    so counting a run of hundreds of MB takes milliseconds and needs no TensorFlow.
    """
    counts = {}
    for split in contract.SPLITS + (contract.BACKGROUND,):
        shards = sorted((output_dir / split).glob(f"{contract.SHARD_PREFIX}-*"))
        total = 0
        for shard in shards:
            size = shard.stat().st_size
            with open(shard, "rb") as handle:
                while header := handle.read(12):
                    length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else size
                    if handle.seek(length + 4, os.SEEK_CUR) > size:
                        raise errors.UserError(f"{shard}: truncated TFRecord file")
                    total += 1
        if split in contract.SPLITS or total:
            counts[split] = total
    return counts


def timed_run(command: list[str], output_dir: Path) -> tuple[float, float]:
    """Runs `command` as a fresh process; returns its wall and CPU time in seconds.

    The CPU time (user + system, of the process and the worker processes it waited
    for) is reported next to the wall time because it hardly moves when other work
    shares the machine, while the wall time does.
    """
    shutil.rmtree(output_dir, ignore_errors=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise errors.UserError(f"{' '.join(command[:3])} exited with {result.returncode}: "
                               f"{lines[-1]}")
    return seconds, cpu_seconds


def commands(data_dir: str, work_dir: Path) -> dict[str, tuple[list[str], Path]]:
    """The command line and output folder of each contender."""
    python = [sys.executable, "-m"]
    runs = {}
    for name in (BASELINE, PIPELINE, PIPELINE_MP):
        out = work_dir / name
        if name == BASELINE:
            command = python + ["benchmarks.preprocess", "--baseline"]
        else:
            command = python + ["pipelines.preprocess"]
        command += ["--data-dir", data_dir, "--output-dir", str(out)]
        if name == PIPELINE_MP:
            command += MULTI_PROCESS_FLAGS
        runs[name] = (command, out)
    return runs


def measure(data_dir: str, work_dir: Path, repeat: int,
            progress: Callable[[str], None] = lambda line: None) -> list[Timing]:
    """Runs every contender `repeat` times (interleaved); returns each one's best."""
    runs = commands(data_dir, work_dir)
    best = {name: float("inf") for name in runs}
    best_cpu = dict(best)
    counts = {}
    for attempt in range(1, repeat + 1):
        for name, (command, out) in runs.items():
            seconds, cpu_seconds = timed_run(command, out)
            best[name] = min(best[name], seconds)
            best_cpu[name] = min(best_cpu[name], cpu_seconds)
            counts[name] = count_records(out)
            progress(f"run {attempt}/{repeat} {name:<12} {seconds:7.2f} s wall "
                     f"{cpu_seconds:7.2f} s cpu")
    return [Timing(name, best[name], best_cpu[name], counts[name]) for name in runs]


def check_counts(timings: list[Timing]) -> None:
    """Raises UserError unless every contender wrote the baseline's records per split."""
    reference = timings[0]
    for timing in timings[1:]:
        if timing.counts != reference.counts:
            raise errors.UserError(f"{timing.name} wrote {timing.counts} records, "
                                   f"{reference.name} {reference.counts}")


def format_table(timings: list[Timing], data_dir: str, repeat: int) -> str:
    """The report: seconds, clips/s and ratio to the first (the baseline), and the target."""
    clips = sum(timings[0].counts.get(split, 0) for split in contract.SPLITS)
    baseline = timings[0]
    lines = [f"{clips} clips from {data_dir}; whole process, imports included, "
             f"best of {repeat}",
             f"{'':<14}{'seconds':>9}{'clips/s':>9}{'vs baseline':>13}"
             f"{'cpu s':>9}{'vs baseline':>13}"]
    for timing in timings:
        ratio = timing.seconds / baseline.seconds
        verdict = "" if timing is baseline else (
            "  ok" if ratio <= TARGET_RATIO else "  over target")
        lines.append(f"{timing.name:<14}{timing.seconds:>9.2f}"
                     f"{clips / timing.seconds:>9.0f}{ratio:>12.2f}x"
                     f"{timing.cpu_seconds:>9.2f}"
                     f"{timing.cpu_seconds / baseline.cpu_seconds:>12.2f}x{verdict}")
    lines.append(f"target: pipeline <= {TARGET_RATIO}x baseline")
    return "\n".join(lines)


def run(argv: Optional[list[str]] = None) -> Optional[list[Timing]]:
    """Runs the benchmark, or with --baseline the plain loop alone."""
    args = build_parser().parse_args(argv)
    if args.baseline:
        if not args.output_dir:
            raise errors.UserError("--baseline needs --output-dir")
        counts = run_baseline(args.data_dir, args.output_dir)
        print(f"wrote {counts} records to {args.output_dir}")
        return None
    if args.repeat < 1:
        raise errors.UserError(f"--repeat {args.repeat}: must be at least 1")
    if "://" in args.data_dir or not Path(args.data_dir).is_dir():
        raise errors.UserError(f"{args.data_dir}: not a local folder")
    data_dir = str(Path(args.data_dir).resolve())
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="kws-benchmark-"))
    if args.work_dir and work_dir.exists() and any(work_dir.iterdir()):
        raise errors.UserError(f"{work_dir}: not empty (the benchmark writes and removes "
                               "its own folders there)")
    try:
        timings = measure(data_dir, work_dir, args.repeat,
                          lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    check_counts(timings)
    print(format_table(timings, args.data_dir, args.repeat))
    return timings


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
