"""Training-input and prediction-latency benchmark.

    python -m benchmarks.training --data-dir runs/subset/data --job-dir runs/subset/job [--epochs 3]

1. Epoch time of the tutorial model fed by streaming TFRecords (`trainer.data`, as
   `trainer.task` feeds it) against the same model fed from an in-memory cached dataset
   (the tutorial's `.cache().shuffle(10000)`), measured in the same run, alternating the
   two so that background load hits both alike; warm-up (cache-filling) epochs are not
   counted. Target: streaming at most 1.1x in-memory.
2. Single-clip prediction latency of the exported model(s), WAV file to label with a
   warm model: p50 and p95 over the test clips, the median of `--latency-rounds`
   rounds that take the loaded models in turn, in an order that rotates each round (a
   small machine's latency swings between rounds and with the position in a round),
   and each model's p50 as a ratio of the first one's.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Optional

from pipelines.errors import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract  # noqa: E402
from pipelines.errors import run_cli  # noqa: E402
from trainer import data, models, predict, scoring  # noqa: E402
from trainer.models import tutorial  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _fit_epochs(net: keras.Model, dataset: tf.data.Dataset, epochs: int,
                steps: Optional[int]) -> list[float]:
    """Seconds of each epoch of one `fit` call, its first one (iterator start) left out."""
    timer = EpochTimer()
    net.fit(dataset, epochs=epochs + 1, steps_per_epoch=steps, verbose=0,
            callbacks=[timer], shuffle=False)
    return timer.times[1:]


def epoch_times(data_dir: str, epochs: int, batch_size: int, seed: int,
                rounds: int = 2) -> dict:
    """Median seconds per epoch for streaming and in-memory input (same model, same data).

    Each input is fed the way training uses it: the streamed shards as `trainer.task`
    does (an endless dataset, `steps_per_epoch` steps an epoch, so the shuffle buffer
    never drains), the in-memory cache as the tutorial does (`.cache().shuffle(10000)`
    and a fresh pass every epoch). The two alternate in `rounds` fit calls of
    `epochs` + 1 epochs each, so that background load hits both alike.
    """
    metadata = data.read_metadata(data_dir)
    labels = data.read_labels(data_dir)
    files = data.shard_files(data_dir, contract.TRAIN)
    size = data.split_size(metadata, contract.TRAIN)
    # The epoch length trainer.task gives the tutorial model's endless stream.
    steps = models.get_recipe(tutorial.NAME).with_overrides(
        batch_size=batch_size).steps_per_epoch(size)
    streaming = data.make_dataset(files, batch_size, True, seed=seed, repeat=True)
    # The tutorial's way: everything parsed once, then held in memory.
    in_memory = (data.make_dataset(files, batch_size, False)
                 .unbatch().cache().shuffle(10_000, seed=seed).batch(batch_size)
                 .apply(tf.data.experimental.assert_cardinality(steps))
                 .prefetch(tf.data.AUTOTUNE))
    nets = {}
    for name in ("streaming", "in_memory"):
        keras.utils.set_random_seed(seed)
        nets[name] = models.build_model(tutorial.NAME, len(labels))
        nets[name].compile(optimizer="adam", metrics=["accuracy"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    datasets = {"streaming": streaming, "in_memory": in_memory}
    # The endless stream needs the epoch length; the cached dataset ends by itself.
    epoch_steps = {"streaming": steps, "in_memory": None}
    for name in nets:  # warm-up: tracing, and filling the cache
        _fit_epochs(nets[name], datasets[name], 1, epoch_steps[name])
    times = {name: [] for name in nets}
    for _ in range(rounds):
        for name in nets:
            times[name] += _fit_epochs(nets[name], datasets[name], epochs, epoch_steps[name])
    return {name: float(np.median(values)) for name, values in times.items()} | {
        "examples": size, "rounds": rounds, "epochs": len(times["streaming"]),
        "in_memory_epochs": len(times["in_memory"])}


def _clip_times(predictor: predict.Predictor, paths: list[str]) -> list[float]:
    """Milliseconds per clip from WAV file to label."""
    gc.collect()  # not during the timed calls
    samples = []
    for path in paths:
        start = time.perf_counter()
        with scoring.open_recording(path) as handle:
            probabilities = predictor.probabilities(handle)
        predictor.labels[int(np.argmax(probabilities))]
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def interleaved_latency(job_dirs: dict[str, str], paths: list[str], rounds: int,
                        warmup: int = 5) -> dict[str, dict]:
    """Median over `rounds` of each model's p50/p95, the models measured in turn.

    Every model is loaded and warmed up once, then measured once per round. The order
    rotates from round to round, so each model runs first, second, ... equally often:
    on a small shared machine the position in a round alone moved a model's time by
    10-25%.
    """
    predictors = {name: predict.Predictor(job_dir) for name, job_dir in job_dirs.items()}
    for predictor in predictors.values():
        _clip_times(predictor, paths[:warmup])
    names = list(job_dirs)
    samples = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times = _clip_times(predictors[name], paths)
            samples[name].append({"p50_ms": float(np.percentile(times, 50)),
                                  "p95_ms": float(np.percentile(times, 95))})
    return {name: {key: statistics.median(s[key] for s in runs)
                   for key in ("p50_ms", "p95_ms")} | {"clips": len(paths), "rounds": rounds}
            for name, runs in samples.items()}


def test_clip_paths(data_dir: str, limit: int) -> list[str]:
    files = data.shard_files(data_dir, contract.TEST)
    dataset = data.make_dataset(files, 256, False, keep_features=True)
    paths = [p.decode() for batch in dataset for p in batch[contract.PATH].numpy()]
    return [p for p in paths if tf.io.gfile.exists(p)][:limit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--job-dir", action="append", default=[],
                        help="trained job(s) whose exported model's latency is measured")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per input mode")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clips", type=int, default=200, help="clips for the latency")
    parser.add_argument("--latency-rounds", type=int, default=5,
                        help="latency rounds (rotating order); the median is reported")
    parser.add_argument("--seed", type=int, default=42)
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.latency_rounds < 1 or args.clips < 1:
        parser.error("--latency-rounds and --clips must be at least 1")
    results = {"epochs": epoch_times(args.data_dir, args.epochs, args.batch_size, args.seed)}
    epochs = results["epochs"]
    ratio = epochs["streaming"] / epochs["in_memory"]
    print(f"Training input, tutorial model, {epochs['examples']} training examples, "
          f"median of {epochs['epochs']} epochs ({epochs['rounds']} alternating runs of "
          f"{args.epochs}, each after a warm-up epoch):")
    print(f"  {'in-memory cache (tutorial)':<30}{epochs['in_memory']:>8.2f} s/epoch")
    print(f"  {'streaming TFRecords':<30}{epochs['streaming']:>8.2f} s/epoch")
    print(f"  ratio streaming / in-memory   {ratio:>8.2f}x   (target <= 1.10x)")
    results["ratio"] = ratio
    if args.job_dir:
        paths = test_clip_paths(args.data_dir, args.clips)
        print(f"\nSingle-clip prediction latency, WAV file to label, warm model, "
              f"{len(paths)} test clips, median of {args.latency_rounds} rounds in rotating order:")
        results["latency"] = interleaved_latency(
            {job_dir: job_dir for job_dir in args.job_dir}, paths, args.latency_rounds)
        base = results["latency"][args.job_dir[0]]["p50_ms"]
        for job_dir, figures in results["latency"].items():
            print(f"  {job_dir:<40} p50 {figures['p50_ms']:7.2f} ms   "
                  f"p95 {figures['p95_ms']:7.2f} ms   p50 {figures['p50_ms'] / base:5.2f}x")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
