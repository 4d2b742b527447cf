"""The 10x data test: how preprocessing and training input grow with the data.

For each factor k (1, 4 and 10 by default) it builds a folder of k times the clips of
--data-dir: the originals, and k - 1 copies of each clip under a new speaker id (so the
speaker split spreads them over train, val and test like new people), each copy shifted
in time by up to 100 ms and changed in gain by up to 6 dB. Then, each as a fresh process
timed wall-clock from start to exit, it measures:

  preprocess     `python -m pipelines.preprocess` on the in-memory DirectRunner;
  preprocess x2  the same on the multi-process DirectRunner with 2 workers;
  input          one epoch of trainer.task's training input (the recipe of --model:
                 shuffle buffer, parse, augmentation) read from the first one's shards,
                 timed from its first batch (the shuffle buffer's fill included),

with the peak memory of each (the resident memory of the process and its children,
summed, sampled every 50 ms) and the TFRecord bytes written. Ratios are against the 1x
run of the same kind measured here: time per clip (target: at most 1.05x, i.e. 10x the
data in at most 10.5x the time) and peak memory (target: within 1.15x)::

    python -m benchmarks.scale --data-dir /tmp/data/speech_commands_subset --work-dir /tmp/scale
    python -m benchmarks.scale --data-dir data/sample --factors 1 2 --model tutorial

The work folder (default: a temporary one, removed at the end) holds the generated
clips and one run at a time; preprocessing outputs are removed once measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile

from pipelines import contract, dataset, errors

FACTORS = (1, 4, 10)
MAX_SHIFT_MS = 100
MAX_GAIN_DB = 6.0
TIME_TARGET = 1.05    # time per clip, against the 1x run
MEMORY_TARGET = 1.15  # peak memory, against the 1x run
SAMPLE_SECONDS = 0.05
MULTI_PROCESS_FLAGS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="local folder of <label>/*.wav")
    parser.add_argument("--work-dir", default=None,
                        help="local folder for the scaled data and runs (default: temporary)")
    parser.add_argument("--factors", type=int, nargs="+", default=list(FACTORS),
                        help="data sizes, in multiples of --data-dir; the first is the "
                             "baseline of the ratios")
    parser.add_argument("--model", default=None,
                        help="whose training input is read (default: trainer.task's)")
    parser.add_argument("--input-only", default=None, metavar="RUN",
                        help="(internal) read one epoch of RUN's training input and print "
                             "JSON")
    return parser


# --- making more data -------------------------------------------------------------------

def copy_speaker(speaker: str, copy: int) -> str:
    """A new 8-hex-digit speaker id for copy `copy` of `speaker` (stable, collision-free
    in practice, and parsed by `dataset.speaker_id` like a real one)."""
    return hashlib.sha1(f"{speaker}/copy-{copy}".encode()).hexdigest()[:8]


def vary(waveform: np.ndarray, rng: np.random.Generator, rate: int = contract.SAMPLE_RATE
         ) -> np.ndarray:
    """`waveform` (float in [-1, 1]) shifted by up to MAX_SHIFT_MS either way (the gap
    filled with silence) and scaled by up to MAX_GAIN_DB either way, clipped to [-1, 1]."""
    limit = rate * MAX_SHIFT_MS // 1000
    shift = int(rng.integers(-limit, limit + 1))
    moved = np.zeros_like(waveform)
    if shift >= 0:
        moved[shift:] = waveform[:len(waveform) - shift]
    else:
        moved[:shift] = waveform[-shift:]
    gain = 10.0 ** (rng.uniform(-MAX_GAIN_DB, MAX_GAIN_DB) / 20.0)
    return np.clip(moved * gain, -1.0, 1.0)


def source_clips(data_dir: Path) -> list[Path]:
    """The .wav clips of the label folders (background noise is not multiplied)."""
    clips = sorted(path for path in data_dir.glob("*/*.wav")
                   if path.parent.name != contract.BACKGROUND_NOISE_DIR)
    if not clips:
        raise errors.UserError(f"{data_dir}: no <label>/*.wav clips")
    return clips


def write_copy(clips: list[Path], data_dir: Path, out: Path, copy: int) -> None:
    """Writes copy `copy` of every clip to out/<label>/ (16-bit PCM, as the originals)."""
    for path in clips:
        speaker = dataset.speaker_id(path.name)
        name = path.name.replace(speaker, copy_speaker(speaker, copy), 1)
        target = out / path.parent.name / name
        target.parent.mkdir(parents=True, exist_ok=True)
        waveform, rate = soundfile.read(path, dtype="float32")
        seed = int.from_bytes(hashlib.sha1(f"{path.relative_to(data_dir)}/{copy}".encode())
                              .digest()[:8], "little")
        soundfile.write(target, vary(waveform, np.random.default_rng(seed), rate), rate,
                        subtype="PCM_16")


def link_tree(source: Path, target: Path) -> None:
    """Hard links (copies across file systems) of source's files under target."""
    for path in source.rglob("*"):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def make_scaled(data_dir: Path, work_dir: Path, factor: int) -> Path:
    """A folder of `factor` times the clips of data_dir (copies made once, then linked)."""
    clips = source_clips(data_dir)
    folder = work_dir / f"data-x{factor}"
    shutil.rmtree(folder, ignore_errors=True)
    for label in sorted({path.parent for path in clips}):
        link_tree(label, folder / label.name)
    noise = data_dir / contract.BACKGROUND_NOISE_DIR
    if noise.is_dir():
        link_tree(noise, folder / noise.name)
    for copy in range(1, factor):
        copies = work_dir / "copies" / f"copy-{copy}"
        if not copies.is_dir():
            partial = copies.with_name(copies.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write_copy(clips, data_dir, partial, copy)
            partial.rename(copies)
        link_tree(copies, folder)
    return folder


# --- measuring --------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                tree.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # the process ended while being read
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    tree, total, todo = _children(), 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(tree.get(current, []))
    return total


@dataclasses.dataclass
class Measure:
    """Wall time and peak resident memory (the process tree's) of one command."""
    seconds: float
    peak_bytes: int
    stdout: str


def measured_run(command: list[str]) -> Measure:
    """Runs `command` as a fresh process, sampling its memory; UserError if it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    peak, done = [0], threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def sample():
        while not done.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        lines = (stderr or stdout).strip().splitlines() or ["no output"]
        raise errors.UserError(f"{' '.join(command[1:4])} exited with {process.returncode}: "
                               f"{lines[-1]}")
    return Measure(seconds, peak[0], stdout)


def tfrecord_bytes(run_dir: Path) -> int:
    return sum(path.stat().st_size for split in contract.SPLITS
               for path in (run_dir / split).glob(f"{contract.SHARD_PREFIX}-*"))


def read_input(run_dir: str, model: Optional[str]) -> dict:
    """One epoch of the training input of trainer.task for `model`, timed in-process."""
    from trainer import data, models, settings
    name = model or models.DEFAULT_MODEL
    recipe = models.get_recipe(name)
    metadata = data.read_metadata(run_dir)
    size = data.split_size(metadata, contract.TRAIN)
    run = settings.RunSettings(data_dir=run_dir, job_dir=None, model=name)
    files = data.shard_files(run_dir, contract.TRAIN)
    steps = recipe.steps_per_epoch(size)
    dataset = recipe.train_dataset(files, run, data.read_labels(run_dir)).take(steps)
    start = time.perf_counter()  # the shuffle buffer's fill is part of the epoch
    examples = sum(int(labels.shape[0]) for _, labels in dataset)
    return {"model": name, "examples": examples, "steps": steps,
            "seconds": time.perf_counter() - start}


@dataclasses.dataclass
class Row:
    """The figures of one data size."""
    factor: int
    clips: int
    prep: Measure
    prep_x2: Measure
    tfrecord_bytes: int
    input_seconds: float
    input_examples: int
    input: Measure
    model: str


def measure(data_dir: Path, work_dir: Path, factor: int, model: Optional[str],
            progress) -> Row:
    folder = make_scaled(data_dir, work_dir, factor)
    python = [sys.executable, "-m"]
    runs, counts = {}, {}
    for name, extra in (("prep", []), ("prep_x2", MULTI_PROCESS_FLAGS)):
        out = work_dir / f"run-x{factor}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        runs[name] = measured_run(python + ["pipelines.preprocess", "--data-dir", str(folder),
                                            "--output-dir", str(out)] + extra)
        metadata = json.loads((out / contract.METADATA_FILE).read_text())
        counts[name] = (metadata["examples_written"], metadata["background_recordings"],
                        metadata["rejected"], metadata["skipped"], metadata["files_read"])
        progress(f"x{factor} {name:<8} {runs[name].seconds:7.1f} s  "
                 f"{runs[name].peak_bytes / 2**20:7.0f} MB  {counts[name]}")
        if name == "prep":
            size = tfrecord_bytes(out)
        else:
            shutil.rmtree(out)
    if counts["prep"] != counts["prep_x2"]:
        raise errors.UserError(f"x{factor}: the runners disagree: (written, background, "
                               f"rejected, skipped, read) {counts['prep']} and "
                               f"{counts['prep_x2']}")
    written, background, rejected, skipped, read = counts["prep"]
    if written + background + rejected + skipped != read:
        raise errors.UserError(f"x{factor}: {read} files read but {written} written + "
                               f"{background} background + {rejected} rejected + "
                               f"{skipped} skipped")
    first = work_dir / f"run-x{factor}-prep"
    command = python + ["benchmarks.scale", "--data-dir", str(folder), "--input-only",
                        str(first)] + (["--model", model] if model else [])
    reading = measured_run(command)
    result = json.loads(reading.stdout.strip().splitlines()[-1])
    progress(f"x{factor} input    {result['seconds']:7.1f} s  "
             f"{reading.peak_bytes / 2**20:7.0f} MB  {result['examples']} examples")
    shutil.rmtree(first)
    shutil.rmtree(folder)
    return Row(factor, written, runs["prep"], runs["prep_x2"], size, result["seconds"],
               result["examples"], reading, result["model"])


def format_table(rows: list[Row]) -> str:
    """Seconds, peak MB and the ratios to the first row, with the targets."""
    base = rows[0]

    def per_clip(row: Row, seconds: float, base_seconds: float) -> float:
        return (seconds / row.clips) / (base_seconds / base.clips)

    header = (f"{'data':>5}{'clips':>8} | {'prep s':>7}{'x/clip':>7}{'MB':>7}{'x':>6} | "
              f"{'prep x2 s':>9}{'x/clip':>7}{'MB':>7}{'x':>6} | {'TFRecord MB':>11} | "
              f"{'input ex/s':>10}{'x/clip':>7}{'MB':>7}{'x':>6}")
    lines = [header, "-" * len(header)]
    worst_time, worst_memory = 0.0, 0.0
    for row in rows:
        cells = [f"{row.factor:>4}x{row.clips:>8} |"]
        for measured, base_measured in ((row.prep, base.prep), (row.prep_x2, base.prep_x2)):
            time_ratio = per_clip(row, measured.seconds, base_measured.seconds)
            memory_ratio = measured.peak_bytes / base_measured.peak_bytes
            worst_time, worst_memory = max(worst_time, time_ratio), max(worst_memory,
                                                                       memory_ratio)
            width = 7 if measured is row.prep else 9
            cells.append(f"{measured.seconds:>{width}.1f}{time_ratio:>6.2f}x"
                         f"{measured.peak_bytes / 2**20:>7.0f}{memory_ratio:>5.2f}x |")
        cells.append(f"{row.tfrecord_bytes / 2**20:>11.0f} |")
        input_ratio = ((row.input_seconds / row.input_examples)
                       / (base.input_seconds / base.input_examples))
        memory_ratio = row.input.peak_bytes / base.input.peak_bytes
        cells.append(f"{row.input_examples / row.input_seconds:>10.0f}{input_ratio:>6.2f}x"
                     f"{row.input.peak_bytes / 2**20:>7.0f}{memory_ratio:>5.2f}x")
        lines.append(" ".join(cells))
    lines.append(f"prep: whole process (imports included); input: one epoch of the "
                 f"{base.model} "
                 "recipe's training input; x/clip: time per clip against the first row; "
                 "x: peak memory against it")
    lines.append(f"targets: time per clip <= {TIME_TARGET}x, peak memory <= {MEMORY_TARGET}x "
                 f"(preprocessing: worst {worst_time:.2f}x time, {worst_memory:.2f}x memory)")
    return "\n".join(lines)


def run(argv: Optional[list[str]] = None) -> Optional[list[Row]]:
    args = build_parser().parse_args(argv)
    if args.input_only:
        print(json.dumps(read_input(args.input_only, args.model)))
        return None
    data_dir = Path(args.data_dir)
    if "://" in args.data_dir or not data_dir.is_dir():
        raise errors.UserError(f"{args.data_dir}: not a local folder")
    if min(args.factors) < 1:
        raise errors.UserError(f"--factors {args.factors}: each must be at least 1")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="kws-scale-"))
    if args.work_dir and work_dir.exists() and any(work_dir.iterdir()):
        raise errors.UserError(f"{work_dir}: not empty (the benchmark writes and removes "
                               "its own folders there)")
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for factor in args.factors:
            rows.append(measure(data_dir.resolve(), work_dir, factor, args.model,
                                lambda line: print(line, file=sys.stderr, flush=True)))
    finally:
        for path in work_dir.iterdir():  # everything in it is ours: it started empty
            shutil.rmtree(path, ignore_errors=True)
        if not args.work_dir:
            work_dir.rmdir()
    print(format_table(rows))
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
