"""Batch detection's Beam steps: a long recording as chunks of windows, scored apart and
fired together.

Each recording is cut into chunks of windows (`PlanChunks`, from its header), so the
chunks of one long file spread over workers. A chunk reads its own audio plus the few
windows before it that smoothing needs (the overlap) and scores its windows with the
exported model, loaded once per worker and shared by its threads (`ScoreChunk`). Chunks
return candidates (windows whose smoothed keyword score reached its threshold); the
candidates of a file are then gathered and fired in order (`FireEvents`), so events that
straddle a chunk edge come out once, and every event equals `trainer.detect`'s on the
same file.

The elements and steps live here rather than in the command's module: a pipeline
started as `python -m pipelines.detect` runs that module as `__main__`, and elements of
a class defined there could not be unpickled by the workers of the multi-process
DirectRunner or Dataflow.
"""

from __future__ import annotations

import json
import math
import sys
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
import soundfile
import soxr
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipelines import audio, batch, contract, errors, events, inputs, scoring, transforms

EVENTS = "events"
CHUNK_SECONDS = 60.0
NAMESPACE = "detect"
# Around a chunk, this much more source audio is read on each side: the resampler of a
# file at another rate then gives the chunk the samples of the whole file resampled, and
# a compressed format's decoder (MP3's bit reservoir) has settled before the chunk starts.
MARGIN_SECONDS = 0.2


class Chunk(NamedTuple):
    """Windows first..stop-1 of a recording, and what its header says.

    The path travels as `inputs.path_bytes` (a name that is not UTF-8 cannot be encoded
    between steps as text).
    """
    raw_path: bytes
    first: int
    stop: int
    total: int  # the recording's windows
    info: audio.AudioInfo

    @property
    def path(self) -> str:
        """The path to open (undecodable bytes as surrogate escapes)."""
        return self.raw_path.decode("utf-8", "surrogateescape")

    @property
    def num_samples(self) -> int:
        """The recording's length at 16 kHz."""
        return audio.resampled_length(self.info.frames, self.info.sample_rate)


class ChunkResult(NamedTuple):
    """What scoring one chunk gave: candidates, or the reason it could not be read."""
    first: int
    candidates: Optional[events.Candidates]
    error: Optional[str]


def read_range(path: str, start: int, stop: int, info: audio.AudioInfo) -> np.ndarray:
    """Samples start..stop-1 of a recording, mono at 16 kHz, as `audio.read_blocks` gives.

    The file is read with a margin on each side (`MARGIN_SECONDS`), starting on a whole
    resampling period, and resampled when its rate is not 16 kHz, so the samples match
    the whole file decoded and resampled, up to the filter's rounding.
    """
    target = contract.SAMPLE_RATE
    rate = info.sample_rate
    period_in, period_out = rate // math.gcd(rate, target), target // math.gcd(rate, target)
    margin = math.ceil(MARGIN_SECONDS * target / period_out)
    first_period = max(0, start // period_out - margin)
    source_start, out_start = first_period * period_in, first_period * period_out
    source_stop = (math.ceil(stop / period_out) + margin) * period_in
    source_stop = min(source_stop, info.frames)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        try:
            with soundfile.SoundFile(handle) as recording:
                skip_to(recording, source_start)
                samples = recording.read(max(0, source_stop - source_start), dtype="float32",
                                         always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
            errors.INTERRUPTS.check()
            raise audio.AudioError(f"unreadable audio ({error})") from None
    errors.INTERRUPTS.check()
    if not np.all(np.isfinite(samples)):
        raise audio.AudioError("NaN or infinite samples")
    mono = samples.mean(axis=1) if info.channels > 1 else samples[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != target:
        mono = soxr.resample(mono, rate, target, quality="HQ")
    return np.clip(mono[start - out_start:stop - out_start], -1.0, 1.0).astype(np.float32)


def skip_to(recording: soundfile.SoundFile, frame: int) -> None:
    """Moves to `frame`: a seek, or for an encoding libsndfile cannot seek in (GSM 6.10
    in WAV, for one) reads and drops the frames before it, a block at a time."""
    if recording.seekable():
        recording.seek(frame)
        return
    block = max(1, recording.samplerate * 10)
    while frame > 0:
        skipped = len(recording.read(min(block, frame), dtype="float32", always_2d=True))
        if not skipped:
            return
        frame -= skipped


class PlanChunks(beam.DoFn):
    """Path (bytes) -> its chunks (from the header); unreadable files rejected."""

    def __init__(self, config: events.Config, chunk_windows: int):
        self._config = config
        self._chunk_windows = chunk_windows
        self._rejected = Metrics.counter(NAMESPACE, "rejected")
        self._files = Metrics.counter(NAMESPACE, "files")

    def process(self, raw_path: bytes):
        self._files.inc()
        path = inputs.printable(raw_path)
        try:
            info = audio.probe(raw_path.decode("utf-8", "surrogateescape"))
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
        total = events.num_windows(num_samples, self._config.window, self._config.hop)
        for first in range(0, total, self._chunk_windows):
            yield Chunk(raw_path, first, min(first + self._chunk_windows, total), total, info)


class SharedScorer:
    """Holds a `scoring.SavedModelScorer` (Beam's Shared needs a weak-referenceable object)."""

    def __init__(self, model_dir: str):
        self.scorer = scoring.SavedModelScorer(model_dir)


class ScoreChunk(beam.DoFn):
    """Chunk -> (path, ChunkResult): the chunk's candidates, model loaded once per worker."""

    def __init__(self, model_dir: str, config: events.Config, labels: list[str],
                 shared_handle: shared.Shared):
        self._model_dir = model_dir
        self._config = config
        self._labels = labels
        self._shared = shared_handle
        self._scorer = None
        self._chunks = Metrics.counter(NAMESPACE, "chunks")

    def setup(self):
        errors.import_tensorflow_quietly()
        self._scorer = self._shared.acquire(lambda: SharedScorer(self._model_dir)).scorer

    def process(self, chunk: Chunk):
        config = self._config
        context = min(chunk.first, config.smoothing - 1)  # windows smoothing looks back on
        first = chunk.first - context
        start = first * config.hop
        stop = min((chunk.stop - 1) * config.hop + config.window, chunk.num_samples)
        try:
            samples = read_range(chunk.path, start, stop, chunk.info)
        except (audio.AudioError, IOError, OSError) as error:
            yield chunk.raw_path, ChunkResult(chunk.first, None, (
                f"chunk at {chunk.first * config.hop / contract.SAMPLE_RATE:.1f} s: "
                f"{errors.first_line(error)}"))
            return
        probabilities = self._scorer.score_span(samples, start, first, chunk.stop - first,
                                                config)
        smoothed = events.smooth(probabilities[context:], config.smoothing,
                                 probabilities[:context])
        times = events.window_times(chunk.first, chunk.stop - chunk.first,
                                    chunk.num_samples, config.window, config.hop)
        columns, thresholds = events.threshold_vector(config, self._labels)
        self._chunks.inc()
        # Progress: Beam runners show a worker's stderr (DirectRunner: the terminal).
        print(f"{inputs.printable(chunk.raw_path)}: windows {chunk.first}-{chunk.stop - 1} "
              f"of {chunk.total} scored", file=sys.stderr, flush=True)
        yield chunk.raw_path, ChunkResult(chunk.first, events.find_candidates(
            smoothed, chunk.first, times, columns, thresholds), None)


class FireEvents(beam.DoFn):
    """(path, every ChunkResult of the file) -> its events as JSON lines, in time order."""

    def __init__(self, config: events.Config, labels: list[str]):
        self._config = config
        self._keywords = [labels[i] for i in events.threshold_vector(config, labels)[0]]
        self._detected = Metrics.counter(NAMESPACE, "detected")
        self._rejected = Metrics.counter(NAMESPACE, "rejected")
        self._events = Metrics.counter(NAMESPACE, "events")

    def process(self, element):
        raw_path, results = element
        path = inputs.printable(raw_path)
        results = sorted(results, key=lambda result: result.first)
        failures = [result.error for result in results if result.error]
        if failures:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED,
                                           transforms.rejection(path, failures[0]))
            return
        candidates = events.concat_candidates(result.candidates for result in results)
        fired, _ = events.fire(candidates, self._keywords, self._config.refractory_ms / 1000)
        self._detected.inc()
        self._events.inc(len(fired))
        for event in fired:
            yield json.dumps({"path": path, "label": event.label, "time": event.time,
                              "score": event.score})


def build_pipeline(pipeline: beam.Pipeline, input_pattern: str, model_dir: str,
                   labels: list[str], config: events.Config, output: str,
                   chunk_seconds: float = CHUNK_SECONDS) -> None:
    """Adds the detection graph to `pipeline`."""
    chunk_windows = max(1, int(round(chunk_seconds * 1000 / config.hop_ms)))
    chunks = (pipeline
              | "List" >> transforms.MatchPatterns([input_pattern], as_bytes=True)
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
