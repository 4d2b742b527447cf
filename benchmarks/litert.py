"""LiteRT benchmark: size, single-clip latency and test accuracy of the three engines.

    python -m benchmarks.litert --data-dir runs/bench/data --job-dir runs/bench/kws

For the SavedModel (its XLA-compiled `waveform` signature), export/model.tflite and
export/model_int8.tflite of one training job, on one CPU thread each:

- file size (the SavedModel: saved_model.pb and variables/);
- single-clip latency, decoded one-second clip to probabilities with a warm model:
  p50 and p95 over `--clips` test clips, the median of `--rounds` rounds that take the
  engines in turn in an order that rotates each round, and each p50 as a ratio of the
  SavedModel's measured in the same rounds;
- test accuracy over the whole test split, the label agreement with the SavedModel and
  the largest probability difference from it;
- the streaming files' time per 32 ms call, when the job has them (their scores are
  the clip models' on the last second, tests/test_litert.py);
- the int8 model's tensor arena (`flatbuffer.arena_bytes`) and which ops run in
  which type.

With `--front-end-study` (needs the job's model.keras and the run's training clips) an
int8 model whose front end is quantised too is converted and measured alongside, to
show what keeping the STFT and log-mel float buys. Targets (issue): int8 accuracy
within 1 point of the SavedModel's, int8 file <= 0.4x the float file, int8 p50 <= 0.5x
the SavedModel's.
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import sys
import time
from typing import Callable, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract, scoring  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import artifacts, data, models  # noqa: E402
from trainer.litert import convert, flatbuffer, runtime  # noqa: E402
from trainer.litert import export as litert_export  # noqa: E402

SAVEDMODEL = "savedmodel"
FRONT_END_INT8 = "tflite-int8, int8 front end"


def test_split(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms float32 [n, 16000] and labels [n] of the run's test split."""
    if not data.read_metadata(data_dir).get("waveforms", False):
        raise UserError(f"{data_dir}: stores no waveforms (preprocessed with --no-waveforms)")
    files = data.shard_files(data_dir, contract.TEST)
    dataset = data.make_dataset(files, 256, False, waveform=True)
    batches = data.guard_corruption(files, lambda: [(w.numpy(), y.numpy())
                                                    for w, y in dataset])
    return (np.concatenate([w for w, _ in batches]).astype(np.float32),
            np.concatenate([y for _, y in batches]))


def savedmodel_engine(job_dir: str) -> Callable[[np.ndarray], np.ndarray]:
    serve = scoring.load_saved_model(contract.find_export(job_dir)).signatures[
        contract.SIGNATURE_WAVEFORM]
    return lambda clip: serve(waveform=tf.constant(clip[None, :]))["probabilities"][0].numpy()


def savedmodel_bytes(export_dir: str) -> int:
    total = tf.io.gfile.stat(f"{export_dir}/saved_model.pb").length
    for root, _, names in tf.io.gfile.walk(f"{export_dir}/variables"):
        total += sum(tf.io.gfile.stat(f"{root}/{name}").length for name in names)
    return total


def _clip_times(engine: Callable, clips: np.ndarray) -> list[float]:
    """Milliseconds per clip."""
    gc.collect()  # not during the timed calls
    times = []
    for clip in clips:
        start = time.perf_counter()
        engine(clip)
        times.append((time.perf_counter() - start) * 1000)
    return times


def rotating_latency(engines: dict[str, Callable], clips: np.ndarray, rounds: int,
                     warmup: int = 10) -> dict[str, dict]:
    """Median over `rounds` of each engine's p50/p95; the order rotates every round."""
    for engine in engines.values():
        _clip_times(engine, clips[:warmup])
    names = list(engines)
    samples = collections.defaultdict(list)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times = _clip_times(engines[name], clips)
            samples[name].append((np.percentile(times, 50), np.percentile(times, 95)))
    return {name: {"p50_ms": statistics.median(p50 for p50, _ in runs),
                   "p95_ms": statistics.median(p95 for _, p95 in runs)}
            for name, runs in samples.items()}


def op_summary(content: bytes) -> dict[str, list[str]]:
    """Op names by the type they compute in (an op's input type; QUANTIZE converts)."""
    by_type = collections.defaultdict(list)
    for op, data_in, data_out in flatbuffer.op_types(content):
        kind = f"{data_in}->{data_out}" if op in ("QUANTIZE", "DEQUANTIZE") else data_in
        if op not in by_type[kind]:
            by_type[kind].append(op)
    return dict(by_type)


def one_thread() -> bool:
    """Runs TensorFlow on one thread; False when its thread pools had already started."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.litert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the preprocessing run")
    parser.add_argument("--job-dir", required=True, help="a training job with export/")
    parser.add_argument("--clips", type=int, default=200, help="test clips for the latency")
    parser.add_argument("--rounds", type=int, default=5,
                        help="latency rounds (rotating order); the median is reported")
    parser.add_argument("--front-end-study", action="store_true",
                        help="also measure an int8 model with an int8 front end")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.clips < 1:
        parser.error("--rounds and --clips must be at least 1")
    if not one_thread():
        print("note: TensorFlow was already running; the SavedModel is timed on its "
              "default threads")
    job_dir = args.job_dir.rstrip("/")
    export_dir = contract.find_export(job_dir)
    labels = artifacts.read_model_labels(export_dir)
    waveforms, truth = test_split(args.data_dir)
    contents, sizes = {}, {SAVEDMODEL: savedmodel_bytes(export_dir)}
    engines = {SAVEDMODEL: savedmodel_engine(job_dir)}
    for engine in runtime.ENGINE_FILES:
        model, model_labels = runtime.load_engine(job_dir, engine)
        if model_labels != labels:
            raise UserError(f"{runtime.engine_file(job_dir, engine)}: labels differ from "
                            f"{export_dir}/{contract.LABELS_FILE}")
        engines[engine] = model.probabilities
        contents[engine] = model.content
        sizes[engine] = len(model.content)
    if args.front_end_study:
        recipe = models.get_recipe(artifacts.job_model_name(job_dir))
        serving = recipe.serving_model(artifacts.load_keras_model(job_dir))
        content = convert.convert_int8(serving, litert_export.representative_clips(args.data_dir),
                                      front_end="int8")
        engines[FRONT_END_INT8] = runtime.LiteRTModel(content=content).probabilities
        contents[FRONT_END_INT8] = content
        sizes[FRONT_END_INT8] = len(content)

    probabilities = {name: np.stack([engine(clip) for clip in waveforms])
                     for name, engine in engines.items()}
    streams = {}  # per 32 ms call, on each clip's last 512 samples
    for kind, name in (("stream", runtime.STREAM_FLOAT_FILE),
                       ("stream-int8", runtime.STREAM_INT8_FILE)):
        if tf.io.gfile.exists(f"{export_dir}/{name}"):
            model = runtime.StreamingModel(f"{export_dir}/{name}")
            streams[kind] = lambda clip, step=model.step: step(
                clip[-runtime.FRAME_SAMPLES:])
            sizes[kind] = len(model.content)
    reference = probabilities[SAVEDMODEL]
    quality = {name: {
        "accuracy": float((p.argmax(axis=1) == truth).mean()),
        "agreement": float((p.argmax(axis=1) == reference.argmax(axis=1)).mean()),
        "max_abs_diff": float(np.abs(p - reference).max())}
        for name, p in probabilities.items()}
    clips = waveforms[:args.clips]
    latency = rotating_latency(engines | streams, clips, args.rounds)
    base = latency[SAVEDMODEL]["p50_ms"]

    print(f"LiteRT engines of {job_dir}: {len(truth)} test clips for accuracy; latency "
          f"over {len(clips)} of them, one thread, decoded clip to probabilities, warm, "
          f"median of {args.rounds} rounds in rotating order")
    print(f"  {'engine':<30}{'size KB':>9}{'x SM':>7}{'p50 ms':>9}{'p95 ms':>9}"
          f"{'p50 x SM':>10}{'test acc':>10}{'agree':>8}{'max |dp|':>10}")
    for name in engines:
        q, t = quality[name], latency[name]
        print(f"  {name:<30}{sizes[name] / 1024:>9.1f}{sizes[name] / sizes[SAVEDMODEL]:>6.2f}x"
              f"{t['p50_ms']:>9.3f}{t['p95_ms']:>9.3f}{t['p50_ms'] / base:>9.2f}x"
              f"{q['accuracy']:>10.4f}{q['agreement']:>8.4f}{q['max_abs_diff']:>10.2e}")
    for name in streams:
        t = latency[name]
        print(f"  {name + ', per 32 ms call':<30}{sizes[name] / 1024:>9.1f}"
              f"{sizes[name] / sizes[SAVEDMODEL]:>6.2f}x{t['p50_ms']:>9.3f}{t['p95_ms']:>9.3f}"
              f"{t['p50_ms'] / base:>9.2f}x{'(scores = the clip model on the last second)':>46}")
    arena = flatbuffer.arena_bytes(contents["tflite-int8"])
    int8_part = flatbuffer.arena_bytes(contents["tflite-int8"], first_op=[
        op for op, _, _ in flatbuffer.op_types(contents["tflite-int8"])].index("QUANTIZE"))
    results = {"sizes": sizes, "latency": latency, "quality": quality, "arena_bytes": arena,
               "int8_part_arena_bytes": int8_part,
               "test_clips": len(truth), "latency_clips": len(clips)}
    size_ratio = sizes["tflite-int8"] / sizes["tflite"]
    speed_ratio = latency["tflite-int8"]["p50_ms"] / base
    points = 100 * (quality["tflite-int8"]["accuracy"] - quality[SAVEDMODEL]["accuracy"])
    print(f"\n  int8 file / float file        {size_ratio:6.2f}x   (target <= 0.40x)")
    print(f"  int8 p50 / SavedModel p50     {speed_ratio:6.2f}x   (target <= 0.50x)")
    print(f"  int8 - SavedModel accuracy   {points:+6.2f} points (target within 1)")
    print(f"  int8 tensor arena            {arena / 1024:7.1f} KB (float model: "
          f"{flatbuffer.arena_bytes(contents['tflite']) / 1024:.1f} KB; the int8 part alone, "
          f"from its QUANTIZE on: {int8_part / 1024:.1f} KB)")
    print("  int8 model, ops by type:")
    for kind, ops in op_summary(contents["tflite-int8"]).items():
        print(f"    {kind:<18}{', '.join(ops)}")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
