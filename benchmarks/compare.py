"""Accuracy table: trains each model with several seeds and measures what a user sees.

    python -m benchmarks.compare --data-dir runs/subset/data --work-dir runs/compare \\
        --models tutorial --seeds 42 1 2 --reference

For every model and seed it runs the real training command (`python -m trainer.task`,
as a separate process, timed whole), reads the test accuracy from its metrics.json, and
then measures single-clip prediction latency (WAV file to label, warm model) of each
model's first-seed export, in rounds with a rotating order so every model sees the same
machine load. `--reference` adds the tutorial notebook's own code on the same split
(`benchmarks.reference`). Prints one row per model: parameters, test accuracy per seed,
mean and spread, training time, latency (and its ratio to the tutorial model's when
that is in the table); writes WORK/results.json. `--reuse` keeps finished runs of an
earlier call (their recorded training time included) instead of training them again.
Flags it does not know go to `trainer.task`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Optional

import tensorflow as tf

from pipelines.errors import UserError, run_cli
from benchmarks import reference, training as benchmark
from trainer import models
from trainer.models import tutorial


RUN_FILE = "compare_run.json"
LATENCY_ROUNDS = 5  # a 2-core machine's latency swings by 1.5x between rounds


def train(data_dir: str, job_dir: str, model: str, seed: int, extra: list[str],
          reuse: bool = False) -> dict:
    command = [sys.executable, "-m", "trainer.task", "--data-dir", data_dir, "--job-dir",
               job_dir, "--model", model, "--seed", str(seed), "--verbose", "0",
               "--no-report"] + extra
    shown = " ".join(["python"] + command[1:])
    if reuse and tf.io.gfile.exists(f"{job_dir}/{RUN_FILE}"):
        with tf.io.gfile.GFile(f"{job_dir}/{RUN_FILE}", "r") as handle:
            record = json.load(handle)
        if record.get("command") == shown:
            return record
        print(f"note: {job_dir} was trained with another command; training again")
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise UserError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")
    with tf.io.gfile.GFile(f"{job_dir}/metrics.json", "r") as handle:
        metrics = json.load(handle)
    record = {"seed": seed, "test_accuracy": metrics["test_accuracy"],
              "parameters": metrics["parameters"], "train_seconds": seconds,
              "command": shown}
    with tf.io.gfile.GFile(f"{job_dir}/{RUN_FILE}", "w") as handle:
        json.dump(record, handle, indent=2)
    return record


def summarize(name: str, runs: list[dict]) -> dict:
    accuracies = [run["test_accuracy"] for run in runs]
    return {"model": name, "runs": runs, "mean_accuracy": statistics.mean(accuracies),
            "min_accuracy": min(accuracies), "max_accuracy": max(accuracies),
            "parameters": runs[0].get("parameters"),
            "train_seconds": statistics.mean(run.get("train_seconds", 0) for run in runs)}


def format_table(rows: list[dict]) -> str:
    base = next((row.get("latency", {}).get("p50_ms") for row in rows
                 if row["model"] == tutorial.NAME), None)
    lines = [f"{'model':<22}{'params':>10}  {'test accuracy per seed':<26}{'mean':>7}"
             f"{'spread':>8}{'train':>9}{'p50 ms':>8}{'p95 ms':>8}"
             + (f"{'p50 / tutorial':>16}" if base else "")]
    for row in rows:
        seeds = " ".join(f"{run['test_accuracy']:.3f}" for run in row["runs"])
        latency = row.get("latency") or {}
        params = f"{row['parameters']:,}" if row.get("parameters") else "-"
        train_time = f"{row['train_seconds'] / 60:.1f} min" if row.get("train_seconds") else "-"
        lines.append(
            f"{row['model']:<22}{params:>10}  {seeds:<26}{row['mean_accuracy']:>7.3f}"
            f"{row['max_accuracy'] - row['min_accuracy']:>8.3f}{train_time:>9}"
            f"{latency.get('p50_ms', float('nan')):>8.2f}{latency.get('p95_ms', float('nan')):>8.2f}"
            + (f"{latency['p50_ms'] / base:>15.2f}x" if base and latency else ""))
    return "\n".join(lines)


def run(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--models", nargs="+", default=[models.DEFAULT_MODEL],
                        choices=models.names())
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--reference", action="store_true",
                        help="also run the tutorial notebook's own code on the same split")
    parser.add_argument("--clips", type=int, default=200, help="clips for the latency")
    parser.add_argument("--reuse", action="store_true",
                        help="keep runs an earlier call finished in WORK")
    args, extra = parser.parse_known_args(argv)
    rows = []
    paths = benchmark.test_clip_paths(args.data_dir, args.clips)
    for model in args.models:
        runs = []
        for seed in args.seeds:
            job = f"{args.work_dir.rstrip('/')}/{model}-seed{seed}"
            runs.append(train(args.data_dir, job, model, seed, extra, args.reuse))
            print(f"{model} seed {seed}: test accuracy {runs[-1]['test_accuracy']:.4f} "
                  f"({runs[-1]['train_seconds']:.0f} s)", flush=True)
        rows.append(summarize(model, runs))
    latencies = benchmark.interleaved_latency(
        {model: f"{args.work_dir.rstrip('/')}/{model}-seed{args.seeds[0]}"
         for model in args.models}, paths, LATENCY_ROUNDS)
    for row in rows:
        row["latency"] = latencies[row["model"]]
    if args.reference:
        runs = [{"seed": seed, "test_accuracy": reference.tutorial_accuracy(args.data_dir, seed)}
                for seed in args.seeds]
        rows.append(summarize("tutorial notebook code", runs))
    print()
    print(format_table(rows))
    tf.io.gfile.makedirs(args.work_dir)
    with tf.io.gfile.GFile(f"{args.work_dir}/results.json", "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
