"""Two workers against one process: does multi-worker training reach the same accuracy?

For each seed, trains --model on a preprocessing run twice with the same command line:

  one process    `python -m trainer.task` alone (TensorFlow's default strategy);
  two workers    a chief and a worker of `python -m trainer.task` on loopback, started
                 with TF_CONFIG as Vertex AI starts a two-replica job
                 (MultiWorkerMirroredStrategy: each reads half the training shards,
                 global batch twice the recipe's, learning rate scaled by
                 trainer.task's --lr-scaling, linear by default: times 2),

and prints each run's test accuracy (the chief's metrics.json), wall time, the mean and
spread over the seeds of each, and the difference of the means::

    python -m benchmarks.workers --data-dir OUT --work-dir W --model tutorial --seeds 42 1 2
    python -m benchmarks.workers --data-dir OUT --work-dir W2 -- --lr-scaling linear

OUT needs at least two training shards (`pipelines.preprocess --num-shards 2` or more).
The work folder must be new or empty; each run's job directory stays there.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from pipelines import errors

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a preprocessing run, >= 2 shards")
    parser.add_argument("--work-dir", required=True, help="new or empty folder for the jobs")
    parser.add_argument("--model", default="tutorial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("trainer_flags", nargs="*",
                        help="after --: more flags of trainer.task for every run, e.g. "
                             "--lr-scaling linear (one process has one replica: no change)")
    return parser


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIP_", "TF_CONFIG", "CLOUD_ML_"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def train(data_dir: str, job: Path, model: str, seed: int, epochs: Optional[int],
          workers: int, flags: tuple[str, ...] = ()) -> dict:
    """Runs trainer.task with `workers` processes; returns the chief's test accuracy."""
    command = [sys.executable, "-m", "trainer.task", "--data-dir", data_dir,
               "--job-dir", str(job), "--model", model, "--seed", str(seed),
               "--verbose", "0", "--no-report", *flags]
    if epochs:
        command += ["--epochs", str(epochs)]
    job.mkdir(parents=True)
    roles = [("chief", {})]
    if workers > 1:
        ports = free_ports(workers)
        cluster = {"chief": [f"localhost:{ports[0]}"],
                   "worker": [f"localhost:{port}" for port in ports[1:]]}
        roles = [(kind, {"TF_CONFIG": json.dumps({"cluster": cluster,
                                                  "task": {"type": kind, "index": index}})})
                 for kind, index in [("chief", 0)] + [("worker", i) for i in range(workers - 1)]]
    start = time.monotonic()
    processes = []
    for number, (kind, extra) in enumerate(roles):
        log = open(job.parent / f"{job.name}-{kind}{number}.log", "w")  # noqa: SIM115
        processes.append((subprocess.Popen(command, cwd=REPO, env=environment(**extra),
                                           stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for process, log in processes:
        if process.wait() != 0:
            failed.append(log.name)
        log.close()
    seconds = time.monotonic() - start
    if failed:
        raise errors.UserError(f"{job}: training failed, see {', '.join(failed)}")
    metrics = json.loads((job / "metrics.json").read_text())
    return {"accuracy": metrics["test_accuracy"], "seconds": seconds,
            "replicas": metrics["settings"].get("replicas", 1)}


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ({spread:.3f})"


def run(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir)
    if work.exists() and any(work.iterdir()):
        raise errors.UserError(f"{work}: not empty (the benchmark writes its jobs there)")
    results: dict[str, list[dict]] = {"one process": [], "two workers": []}
    for seed in args.seeds:
        for name, workers in (("one process", 1), ("two workers", 2)):
            job = work / f"{name.replace(' ', '-')}-seed{seed}"
            row = train(args.data_dir, job, args.model, seed, args.epochs, workers,
                        tuple(args.trainer_flags))
            results[name].append({"seed": seed, **row})
            print(f"seed {seed:>4}  {name:<12} replicas {row['replicas']}  test accuracy "
                  f"{row['accuracy']:.4f}  {row['seconds']:6.1f} s", file=sys.stderr, flush=True)
    print(f"{args.model}, {len(args.seeds)} seeds ({' '.join(map(str, args.seeds))})"
          + (f", flags {' '.join(args.trainer_flags)}" if args.trainer_flags else ""))
    print(f"{'':<12} {'test accuracy per seed':<28} {'mean (spread)':>15} {'wall time':>10}")
    for name, rows in results.items():
        accuracies = [row["accuracy"] for row in rows]
        print(f"{name:<12} {' '.join(f'{a:.3f}' for a in accuracies):<28} "
              f"{summary(accuracies):>15} {statistics.mean(r['seconds'] for r in rows):9.0f}s")
    one = statistics.mean(row["accuracy"] for row in results["one process"])
    two = statistics.mean(row["accuracy"] for row in results["two workers"])
    print(f"two workers - one process: {two - one:+.3f} (mean test accuracy)")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
