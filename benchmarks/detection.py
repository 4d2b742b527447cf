"""Keyword-detection benchmark: streaming accuracy, speed and memory.

    python -m benchmarks.detection --data-dir OUT --job-dir JOB [--job-dir JOB2 ...]

1. Accuracy: for each job, `--streams` recordings of `--stream-seconds` built from the
   test split (stream seeds 0, 1, ...: keywords and `_unknown_` clips over background
   noise, see `trainer.streams`), detected at the job's stored operating point
   (JOB/export/detection.json, chosen on validation streams when it was trained):
   recall, false accepts per hour, wrong-label rate and mean delay, then the mean over
   the jobs (training seeds). Target: recall >= 0.90 at <= 6 false accepts per hour.
2. Speed: the first job finds the keywords of a generated `--speed-seconds` WAV file
   (read from disk in blocks, as `trainer.detect` does) on one thread pinned to one
   core, model load excluded: CPU seconds, wall seconds and real time over CPU time.
   Target: at least 100x real time.
3. Memory: peak resident memory of `trainer.detect` on a 1-minute and a 1-hour generated
   file, each in a fresh process. Target: the hour within 10% of the minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from pipelines import events  # noqa: E402
from trainer import calibrate, detection, scoring, streams  # noqa: E402

RATE = contract.SAMPLE_RATE
REPO = pathlib.Path(__file__).resolve().parents[1]
TARGET_RECALL, TARGET_FA_PER_HOUR = 0.90, 6.0
TARGET_KEYWORD_FREE = 1.0  # false accepts per hour on an hour of other words and noise
TARGET_SPEED = 100.0
TARGET_MEMORY_RATIO = 1.10
BUDGETS = (1.0, 6.0, 20.0)  # false accepts per hour at which the test DET curve is read


def accuracy(job_dirs: list[str], data_dir: str, count: int, seconds: float,
             calibration_minutes: Optional[float] = None) -> dict:
    """Streaming metrics of each job on test streams, at its stored operating point or,
    with `calibration_minutes`, at one chosen afresh on that much of `data_dir`'s val
    recordings (the same for every job, whatever run it was trained on)."""
    generated = calibrate.split_streams(data_dir, contract.TEST, count, seconds)
    keyword_free = calibrate.keyword_free_recordings(data_dir)
    val = None
    if calibration_minutes:
        val = calibrate.streams_for_minutes(data_dir, contract.VAL, calibration_minutes)
    rows = {}
    for job_dir in job_dirs:
        scorer = scoring.Scorer(job_dir)
        if val is not None:
            base = events.default_config(scorer.labels)
            config, _ = detection.choose_operating_point(
                calibrate.score_streams(val, scorer, base), scorer.labels, base)
        else:
            config = scoring.read_config(scorer)
        if config is None:
            raise UserError(f"{job_dir}: no {events.CONFIG_FILE} (train a model with "
                            "_unknown_ with python -m trainer.task to choose one)")
        scored = calibrate.score_streams(generated, scorer, config)
        metrics = detection.evaluate(scored, scorer.labels, config)
        curve = detection.det_curve(scored, scorer.labels, config)
        metrics["recall_at"] = {str(budget): detection.best_row(curve, budget)["recall"]
                                for budget in BUDGETS}
        metrics["det_curve"] = curve
        metrics["keyword_free"] = calibrate.keyword_free_metrics(scorer, config,
                                                                 keyword_free)
        metrics["threshold"] = sorted(set(config.thresholds.values()))
        metrics["smoothing"] = config.smoothing
        metrics["chosen_on"] = config.chosen_on
        rows[job_dir] = metrics
    mean = {key: statistics.fmean(row[key] for row in rows.values())
            for key in ("recall", "false_accepts_per_hour", "wrong_label_rate")}
    mean["keyword_free_false_accepts_per_hour"] = statistics.fmean(
        row["keyword_free"]["false_accepts_per_hour"] for row in rows.values())
    mean["recall_at_6"] = statistics.fmean(row["recall_at"]["6.0"] for row in rows.values())
    delays = [row["mean_delay_s"] for row in rows.values() if row["mean_delay_s"] is not None]
    mean["mean_delay_s"] = statistics.fmean(delays) if delays else None
    return {"jobs": rows, "mean": mean, "streams": count, "stream_seconds": seconds,
            "keywords_per_job": next(iter(rows.values()))["keywords"]}


def _per_label(scored: list, labels: list[str], config: events.Config,
               budget: float) -> events.Config:
    """Greedy per-keyword thresholds on `scored`: lowers, one keyword at a time, the
    threshold that raises recall most while false accepts keep within the budget."""
    thresholds = dict(config.thresholds)
    best = detection.evaluate(scored, labels, config)
    while True:
        step = None
        for label in thresholds:
            for value in (t for t in detection.THRESHOLD_GRID if t < thresholds[label]):
                trial = dataclasses.replace(config, thresholds={**thresholds, label: value})
                metrics = detection.evaluate(scored, labels, trial)
                if (metrics["false_accepts_per_hour"] <= budget
                        and metrics["recall"] > (step or best)["recall"]):
                    step = {**metrics, "label": label, "value": value}
        if step is None:
            return dataclasses.replace(config, thresholds=thresholds)
        thresholds[step["label"]], best = step["value"], step


def study(job_dirs: list[str], data_dir: str, count: int, seconds: float) -> dict:
    """Operating points chosen on val streams for each smoothing, measured on test streams."""
    budget = detection.MAX_FALSE_ACCEPTS_PER_HOUR
    val = calibrate.split_streams(data_dir, contract.VAL, count, seconds)
    test = calibrate.split_streams(data_dir, contract.TEST, count, seconds)
    rows = []
    print(f"\nStudy: threshold chosen on {count} val streams (<= {budget:g} FA/h), measured "
          f"on {count} test streams of {seconds / 60:g} min:")
    for job_dir in job_dirs:
        scorer = scoring.Scorer(job_dir)
        base = events.default_config(scorer.labels)
        scored = {name: calibrate.score_streams(generated, scorer, base)
                  for name, generated in (("val", val), ("test", test))}
        variants = []
        for smoothing in (1, 3, 5, 7):
            chosen, _ = detection.choose_operating_point(
                scored["val"], scorer.labels, base, smoothing_choices=(smoothing,))
            variants.append((f"smoothing {smoothing}", chosen))
        chosen, _ = detection.choose_operating_point(scored["val"], scorer.labels, base)
        variants.append((f"smoothing {chosen.smoothing}, thresholds per keyword",
                         _per_label(scored["val"], scorer.labels, chosen, budget)))
        for name, config in variants:
            on_val = detection.evaluate(scored["val"], scorer.labels, config)
            on_test = detection.evaluate(scored["test"], scorer.labels, config)
            values = sorted(set(config.thresholds.values()))
            row = {"job": job_dir, "variant": name, "thresholds": values,
                   "val": on_val, "test": on_test}
            rows.append(row)
            print(f"  {job_dir:32s} {name:38s} threshold {values[0]:.3f}"
                  + (f"..{values[-1]:.3f}" if len(values) > 1 else "")
                  + f"  val recall {on_val['recall']:.3f} FA/h "
                  f"{on_val['false_accepts_per_hour']:5.1f}  test recall "
                  f"{on_test['recall']:.3f} FA/h {on_test['false_accepts_per_hour']:5.1f}")
    return {"rows": rows}


def write_stream_wav(path: str, data_dir: str, seconds: float, seed: int = 100) -> None:
    """A test-split stream of `seconds` written in 10-minute pieces (never held whole)."""
    keywords, unknowns = calibrate.split_clips(data_dir, contract.TEST)
    noises = calibrate.background_recordings(data_dir)
    with soundfile.SoundFile(path, "w", RATE, 1, "PCM_16") as wav:
        written, number = 0.0, 0
        while written < seconds:
            length = min(600.0, seconds - written)
            wav.write(streams.build_stream(keywords, unknowns, noises, length,
                                           seed + number).audio)
            written, number = written + length, number + 1


def _load(job_dir: str):
    scorer = scoring.Scorer(job_dir)
    config = scoring.read_config(scorer) or \
        events.default_config(scorer.labels)
    return scorer, config


def _speed_probe(job_dir: str, wav_path: str) -> dict:
    """CPU and wall time of detecting one file on one thread (model loaded beforehand)."""
    one_core()
    scorer, config = _load(job_dir)
    warm_up = f"{wav_path}.warm_up.wav"  # first file read: imports, first model calls
    soundfile.write(warm_up, np.zeros(10 * RATE, np.float32), RATE, subtype="PCM_16")
    scoring.detect_file(warm_up, scorer, config)
    os.remove(warm_up)
    wall, cpu = time.perf_counter(), time.process_time()
    found = scoring.detect_file(wav_path, scorer, config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    seconds = found.num_samples / RATE
    return {"audio_seconds": seconds, "cpu_seconds": cpu, "wall_seconds": wall,
            "x_real_time_cpu": seconds / cpu, "x_real_time_wall": seconds / wall,
            "events": len(found.events)}


def _rss_probe(job_dir: str, wav_path: str) -> dict:
    scorer, config = _load(job_dir)
    scoring.detect_file(wav_path, scorer, config)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


PROBES = {"speed": _speed_probe, "rss": _rss_probe}


def probe(kind: str, job_dir: str, wav_path: str) -> dict:
    """Runs a probe in a fresh process: one thread for speed, a clean peak for memory."""
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.detection", "--probe", kind, wav_path,
         "--job-dir", job_dir, "--data-dir", "-"],
        check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def one_core() -> None:
    """Pins this process to one core and TensorFlow to one thread per pool."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the reference preprocessing run")
    parser.add_argument("--job-dir", action="append", required=True,
                        help="a training job (repeat for several seeds)")
    parser.add_argument("--streams", type=int, default=calibrate.NUM_STREAMS)
    parser.add_argument("--stream-seconds", type=float, default=calibrate.STREAM_SECONDS)
    parser.add_argument("--calibration-minutes", type=float, default=None,
                        help="choose each job's operating point afresh on this many minutes "
                             "of --data-dir's val recordings (default: the stored one)")
    parser.add_argument("--speed-seconds", type=float, default=600.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "speed", "memory"])
    parser.add_argument("--study", action="store_true",
                        help="also compare smoothings and per-keyword thresholds (val -> test)")
    parser.add_argument("--output", default=None, help="also write the figures as JSON here")
    parser.add_argument("--probe", nargs=2, default=None, help=argparse.SUPPRESS)
    return parser


def _print_accuracy(result: dict) -> None:
    print(f"Streaming accuracy, test split, {result['streams']} streams of "
          f"{result['stream_seconds'] / 60:g} min ({result['keywords_per_job']} keywords), "
          "at each job's stored operating point:")
    for job, row in result["jobs"].items():
        delay = row["mean_delay_s"]
        at = "  ".join(f"<={budget}/h {recall:.3f}" for budget, recall in row["recall_at"].items())
        print(f"  {job:40s} recall {row['recall']:.3f}  FA/h {row['false_accepts_per_hour']:5.1f}"
              f"  wrong label {row['wrong_label_rate']:.3f}  delay "
              + ("-" if delay is None else f"{delay:.2f} s")
              + f"  (threshold {row['threshold']}, smoothing {row['smoothing']}; "
              f"test DET recall {at})")
        free = row["keyword_free"]
        print(f"      keyword-free test audio: {free['false_accepts']} false accepts in "
              f"{free['minutes']:g} min = {free['false_accepts_per_hour']:.1f} per hour")
        print("      recall per keyword: " + "  ".join(
            f"{label} {recall:.2f}" for label, recall in row["recall_per_keyword"].items())
            + "   test DET (threshold: recall, FA/h): " + "  ".join(
                f"{r['threshold']:g}: {r['recall']:.3f}, {r['false_accepts_per_hour']:.0f}"
                for r in row["det_curve"][::4]))
    mean = result["mean"]
    met = (mean["recall"] >= TARGET_RECALL
           and mean["false_accepts_per_hour"] <= TARGET_FA_PER_HOUR)
    free_met = mean["keyword_free_false_accepts_per_hour"] <= TARGET_KEYWORD_FREE
    print(f"  mean over {len(result['jobs'])} jobs: recall {mean['recall']:.3f}, FA/h "
          f"{mean['false_accepts_per_hour']:.1f}, wrong label {mean['wrong_label_rate']:.3f}"
          f"   (target recall >= {TARGET_RECALL} at <= {TARGET_FA_PER_HOUR:g} FA/h: "
          + ("met" if met else "NOT met") + f"); keyword-free FA/h "
          f"{mean['keyword_free_false_accepts_per_hour']:.1f} (target <= "
          f"{TARGET_KEYWORD_FREE:g}: " + ("met" if free_met else "NOT met") + ")")


def run(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.probe:
        kind, wav_path = args.probe
        print(json.dumps(PROBES[kind](args.job_dir[0], wav_path)))
        return {}
    if args.streams < 1 or args.stream_seconds <= 0 or args.speed_seconds <= 0:
        raise UserError("--streams, --stream-seconds and --speed-seconds must be positive")
    results = {}
    if "accuracy" not in args.skip:
        results["accuracy"] = accuracy(args.job_dir, args.data_dir, args.streams,
                                       args.stream_seconds, args.calibration_minutes)
        _print_accuracy(results["accuracy"])
    if args.study:
        results["study"] = study(args.job_dir, args.data_dir, args.streams, args.stream_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        if "speed" not in args.skip:
            path = f"{tmp}/speed.wav"
            write_stream_wav(path, args.data_dir, args.speed_seconds)
            results["speed"] = row = probe("speed", args.job_dir[0], path)
            print(f"\nSpeed, {args.speed_seconds / 60:g}-minute WAV, one thread on one core, "
                  f"model load excluded ({args.job_dir[0]}):\n"
                  f"  CPU {row['cpu_seconds']:.2f} s = {row['x_real_time_cpu']:.0f}x real time"
                  f"   wall {row['wall_seconds']:.2f} s = {row['x_real_time_wall']:.0f}x"
                  f"   (target >= {TARGET_SPEED:g}x)")
        if "memory" not in args.skip:
            sizes = {}
            for seconds in (60, 3600):
                path = f"{tmp}/memory_{seconds}.wav"
                write_stream_wav(path, args.data_dir, seconds)
                sizes[seconds] = probe("rss", args.job_dir[0], path)["peak_rss_mb"]
                os.remove(path)
            ratio = sizes[3600] / sizes[60]
            results["memory"] = {"peak_rss_mb_1min": sizes[60], "peak_rss_mb_1h": sizes[3600],
                                 "ratio": ratio}
            print(f"\nPeak resident memory of trainer.detect, fresh process each:\n"
                  f"  1-minute file {sizes[60]:.0f} MB   1-hour file {sizes[3600]:.0f} MB"
                  f"   ratio {ratio:.3f}   (target <= {TARGET_MEMORY_RATIO})")
    if args.output:
        with tf.io.gfile.GFile(args.output, "w") as handle:
            handle.write(json.dumps(results, indent=2, default=float) + "\n")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
