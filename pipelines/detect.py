"""Keyword detection at scale: long recordings (local or gs://) -> JSON Lines of events.

Each recording is cut into chunks of `--chunk-seconds` of windows, so the chunks of one
long file spread over workers. A chunk reads its own audio plus the few windows before
it that smoothing needs (the overlap), and scores its windows with the exported model,
loaded once per worker and shared by its threads. Chunks return candidates (windows
whose smoothed keyword score reached its threshold); the candidates of a file are then
gathered and fired in order, so events that straddle a chunk edge come out once, and
every event equals `trainer.detect`'s on the same file. Each event is one JSON line::

    {"path": ..., "label": "yes", "time": 12.3, "score": 0.97}

Files that cannot be read go to OUTPUT/rejected/ with the reason. The events and
rejections are counted back from the shards written and must equal what the run made (else
exit 1). An OUTPUT holding an earlier run's shards is refused; `--overwrite` removes those
shards, and only those, first.

Locally::

    python -m pipelines.detect --input 'recordings/*.wav' --model-dir runs/kws/job \\
        --output runs/kws/detections

On Dataflow::

    python -m pipelines.detect --input 'gs://BUCKET/audio/**/*.wav' --model-dir gs://BUCKET/job \\
        --output gs://BUCKET/detections/run1 --runner DataflowRunner --project PROJECT \\
        --region REGION --temp_location gs://BUCKET/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
import soundfile
import soxr
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from pipelines import audio, batch, contract, errors, outputs, transforms
from trainer import detection

EVENTS = "events"
CHUNK_SECONDS = 60.0
NAMESPACE = "detect"
# Around a chunk of a file at another rate, the resampler is given this much more source
# audio on each side, so the chunk's samples equal those of the whole file resampled.
RESAMPLE_MARGIN_SECONDS = 0.2


class Chunk(NamedTuple):
    """Windows first..stop-1 of a recording, and what its header says."""
    path: str
    first: int
    stop: int
    info: audio.AudioInfo

    @property
    def num_samples(self) -> int:
        """The recording's length at 16 kHz."""
        return audio.resampled_length(self.info.frames, self.info.sample_rate)


class ChunkResult(NamedTuple):
    """What scoring one chunk gave: candidates, or the reason it could not be read."""
    first: int
    candidates: Optional[detection.Candidates]
    error: Optional[str]


def read_range(path: str, start: int, stop: int, info: audio.AudioInfo) -> np.ndarray:
    """Samples start..stop-1 of a recording, mono at 16 kHz, as `audio.read_blocks` gives.

    A 16 kHz file is read from `start` directly. A file at another rate is read with a
    margin on each side, starting on a whole resampling period, and resampled, so the
    samples match the whole file resampled up to the filter's rounding.
    """
    target = contract.SAMPLE_RATE
    rate = info.sample_rate
    period_in, period_out = rate // math.gcd(rate, target), target // math.gcd(rate, target)
    if rate == target:
        source_start, source_stop, out_start = start, stop, start
    else:
        margin = math.ceil(RESAMPLE_MARGIN_SECONDS * target / period_out)
        first_period = max(0, start // period_out - margin)
        source_start, out_start = first_period * period_in, first_period * period_out
        source_stop = (math.ceil(stop / period_out) + margin) * period_in
    source_stop = min(source_stop, info.frames)
    with FileSystems.open(path) as handle:
        try:
            with soundfile.SoundFile(handle) as wav:
                wav.seek(source_start)
                samples = wav.read(max(0, source_stop - source_start), dtype="float32",
                                   always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
            raise audio.AudioError(f"unreadable WAV ({error})") from None
    if not np.all(np.isfinite(samples)):
        raise audio.AudioError("NaN or infinite samples")
    mono = samples.mean(axis=1) if info.channels > 1 else samples[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != target:
        mono = soxr.resample(mono, rate, target, quality="HQ")
    return np.clip(mono[start - out_start:stop - out_start], -1.0, 1.0).astype(np.float32)


class PlanChunks(beam.DoFn):
    """Path -> its chunks (from the WAV header); unreadable files rejected."""

    def __init__(self, config: detection.Config, chunk_windows: int):
        self._config = config
        self._chunk_windows = chunk_windows
        self._rejected = Metrics.counter(NAMESPACE, "rejected")
        self._files = Metrics.counter(NAMESPACE, "files")

    def process(self, path: str):
        self._files.inc()
        try:
            info = audio.probe(path)
        except audio.AudioError as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED,
                                           transforms.rejection(path, str(error)))
            return
        except (IOError, OSError) as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED, transforms.rejection(
                path, f"cannot read ({errors.first_line(error)})"))
            return
        num_samples = audio.resampled_length(info.frames, info.sample_rate)
        total = detection.num_windows(num_samples, self._config.window, self._config.hop)
        for first in range(0, total, self._chunk_windows):
            yield Chunk(path, first, min(first + self._chunk_windows, total), info)


class _SharedScorer:
    """Holds a `trainer.detect.Scorer` (Beam's Shared needs a weak-referenceable object)."""

    def __init__(self, model_dir: str):
        from trainer import detect  # pylint: disable=import-outside-toplevel
        self.scorer = detect.Scorer(model_dir)


class ScoreChunk(beam.DoFn):
    """Chunk -> (path, ChunkResult): the chunk's candidates, model loaded once per worker."""

    def __init__(self, model_dir: str, config: detection.Config, labels: list[str],
                 shared_handle: shared.Shared):
        self._model_dir = model_dir
        self._config = config
        self._labels = labels
        self._shared = shared_handle
        self._scorer = None
        self._chunks = Metrics.counter(NAMESPACE, "chunks")

    def setup(self):
        errors.import_tensorflow_quietly()
        self._scorer = self._shared.acquire(lambda: _SharedScorer(self._model_dir)).scorer

    def process(self, chunk: Chunk):
        config = self._config
        context = min(chunk.first, config.smoothing - 1)  # windows smoothing looks back on
        first = chunk.first - context
        start = first * config.hop
        stop = min((chunk.stop - 1) * config.hop + config.window, chunk.num_samples)
        try:
            samples = read_range(chunk.path, start, stop, chunk.info)
        except (audio.AudioError, IOError, OSError) as error:
            yield chunk.path, ChunkResult(chunk.first, None, (
                f"chunk at {chunk.first * config.hop / contract.SAMPLE_RATE:.1f} s: "
                f"{errors.first_line(error)}"))
            return
        probabilities = self._scorer.score_span(samples, start, first, chunk.stop - first,
                                                config)
        smoothed = detection.smooth(probabilities[context:], config.smoothing,
                                    probabilities[:context])
        times = detection.window_times(chunk.first, chunk.stop - chunk.first,
                                       chunk.num_samples, config.window, config.hop)
        columns, thresholds = detection.threshold_vector(config, self._labels)
        self._chunks.inc()
        yield chunk.path, ChunkResult(chunk.first, detection.find_candidates(
            smoothed, chunk.first, times, columns, thresholds), None)


class FireEvents(beam.DoFn):
    """(path, every ChunkResult of the file) -> its events as JSON lines, in time order."""

    def __init__(self, config: detection.Config, labels: list[str]):
        self._config = config
        self._keywords = [labels[i] for i in detection.threshold_vector(config, labels)[0]]
        self._detected = Metrics.counter(NAMESPACE, "detected")
        self._rejected = Metrics.counter(NAMESPACE, "rejected")
        self._events = Metrics.counter(NAMESPACE, "events")

    def process(self, element):
        path, results = element
        results = sorted(results, key=lambda result: result.first)
        failures = [result.error for result in results if result.error]
        if failures:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED,
                                           transforms.rejection(path, failures[0]))
            return
        candidates = detection.concat_candidates(result.candidates for result in results)
        events, _ = detection.fire(candidates, self._keywords,
                                   self._config.refractory_ms / 1000)
        self._detected.inc()
        self._events.inc(len(events))
        for event in events:
            yield json.dumps({"path": path, "label": event.label, "time": event.time,
                              "score": event.score})


def build_pipeline(pipeline: beam.Pipeline, input_pattern: str, model_dir: str,
                   labels: list[str], config: detection.Config, output: str,
                   chunk_seconds: float = CHUNK_SECONDS) -> None:
    """Adds the detection graph to `pipeline`."""
    chunk_windows = max(1, int(round(chunk_seconds * 1000 / config.hop_ms)))
    chunks = (pipeline
              | "List" >> transforms.MatchPatterns([input_pattern])
              | "Plan" >> beam.ParDo(PlanChunks(config, chunk_windows)).with_outputs(
                  transforms.REJECTED, main="chunks"))
    fired = (chunks.chunks
             | "SpreadChunks" >> beam.Reshuffle()
             | "Score" >> beam.ParDo(ScoreChunk(model_dir, config, labels, shared.Shared()))
             | "GroupByFile" >> beam.GroupByKey()
             | "Fire" >> beam.ParDo(FireEvents(config, labels)).with_outputs(
                 transforms.REJECTED, main="events"))
    (fired.events
     | "WriteEvents" >> batch.write_shards(f"{output}/{EVENTS}"))
    ((chunks[transforms.REJECTED], fired[transforms.REJECTED])
     | "MergeRejected" >> beam.Flatten()
     | "WriteRejected" >> batch.write_shards(batch.rejected_prefix(output)))


def load_config(export_dir: str, labels: list[str], threshold: Optional[float]
                ) -> detection.Config:
    """export/detection.json (or the default), `threshold` applied; notes on stderr."""
    path = f"{export_dir}/{detection.CONFIG_FILE}"
    text = outputs.read_text(path) if FileSystems.exists(path) else None
    try:
        config, notes = detection.operating_point(text, labels, threshold, export_dir)
    except (ValueError, TypeError, KeyError) as error:
        raise errors.UserError(f"{path}: not a detection config ({error})") from None
    for note in notes:
        print(note, file=sys.stderr)
    return config


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = batch.batch_parser("python -m pipelines.detect", __doc__)
    parser.add_argument("--threshold", type=detection.threshold_arg, default=None,
                        help="one threshold for every keyword, instead of detection.json's")
    parser.add_argument("--chunk-seconds", type=_positive, default=CHUNK_SECONDS,
                        help=f"audio per unit of work (default {CHUNK_SECONDS:g})")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove an earlier run's events and rejected shards in OUTPUT "
                             "first (nothing else there is touched)")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    args, beam_args = build_parser().parse_known_args(argv)
    export_dir, labels = batch.load_export(args.model_dir)
    config = load_config(export_dir, labels, args.threshold)
    batch.count_inputs(args.input)
    output = args.output.rstrip("/")
    events, rejected = (batch.shards_of(f"{output}/{EVENTS}"),
                        batch.shards_of(batch.rejected_prefix(output)))
    batch.prepare_output(output, (events, rejected), args.overwrite)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(pipeline, args.input, export_dir, labels, config, output,
                   args.chunk_seconds)
    result = pipeline.run()
    result.wait_until_finish()
    counts = {name: batch.counter(result, NAMESPACE, name)
              for name in ("files", "detected", "rejected", "chunks", "events")}
    written = {"events": batch.count_lines(events), "rejected": batch.count_lines(rejected)}
    print(f"files {counts['files']} = detected {counts['detected']} + rejected "
          f"{written['rejected']}; "
          f"{written['events']} events from {counts['chunks']} chunks: "
          f"{events}, {rejected}")
    lost = [f"{name}: {counts[name]} made, {written[name]} in the shards"
            for name in written if counts[name] is not None and counts[name] != written[name]]
    if counts["files"] is not None and counts["detected"] is not None and (
            counts["detected"] + written["rejected"] != counts["files"]):
        lost.append(f"files: {counts['files']} read, {counts['detected']} detected + "
                    f"{written['rejected']} rejected")
    if lost:
        raise errors.PartialFailure(f"{output}: what was written differs from what the "
                                    f"run made ({'; '.join(lost)}); it lost or repeated some")
    return {**counts, **written}


def main(argv: Optional[list[str]] = None) -> int:
    errors.import_tensorflow_quietly()
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
