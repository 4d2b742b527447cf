"""Beam transforms shared by preprocessing and batch prediction.

They wire the pure functions of `audio`, `dataset` and `contract` into a graph: list
files, read and featurise each one, route bad inputs to a side output with a reason;
for the keyword-spotting setting, sample the `_unknown_` clips and cut `_silence_` ones.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import audio, contract, dataset

REJECTED = "rejected"
SKIPPED = "skipped"
BACKGROUND = "background"
UNKNOWN = "unknown"  # (split, path) of an unknown-word clip, before sampling
NOISE = "noise"  # path of a background-noise recording that decodes


def rejection(path: str, reason: str) -> str:
    """One line of `rejected/*.jsonl`."""
    return json.dumps({"path": path, "reason": reason})


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


@beam.ptransform_fn
def MatchPatterns(pipeline, patterns: Iterable[str]):  # pylint: disable=invalid-name
    """Lists every file matching any of `patterns`, spread out for parallel reading."""
    return (pipeline
            | "Patterns" >> beam.Create(list(patterns))
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Spread" >> beam.Reshuffle())


class FeaturizeFile(beam.DoFn):
    """Path -> (split, label_name, serialized tf.Example).

    Files that are not clips go to the `skipped` output as a reason string; clips that
    cannot be decoded go to `rejected` as a JSON line naming the path and the reason.
    Recordings in `_background_noise_` go, decoded whole, to the `background` output
    (and, with `noise`, their paths to `noise`). With `unknown`, clips of words
    that are not wanted go to `unknown` as (split, path), to be sampled before decoding.
    """

    def __init__(self, data_dir: str, labels: list[str], split: str, seed: int,
                 val_percent: float, test_percent: float,
                 wanted: Optional[list[str]] = None,
                 salt: str = dataset.DEFAULT_SPLIT_SALT, waveforms: bool = True,
                 unknown: bool = False, noise: bool = False):
        self._data_dir = data_dir
        self._labels = list(labels)
        self._split = split
        self._seed = seed
        self._val_percent = val_percent
        self._test_percent = test_percent
        self._wanted = wanted
        self._salt = salt
        self._waveforms = waveforms
        self._unknown = unknown
        self._noise = noise
        self._index = {}
        self._read = Metrics.counter("preprocess", "files_read")
        self._written = Metrics.counter("preprocess", "examples")
        self._rejected = Metrics.counter("preprocess", "rejected")
        self._skipped = Metrics.counter("preprocess", "skipped")

    def setup(self):
        self._index = {label: i for i, label in enumerate(self._labels)}

    def _split_of(self, path: str, speaker: str) -> str:
        if self._split == dataset.SPLIT_RANDOM:
            return dataset.split_for_file(path, self._seed, self._val_percent,
                                          self._test_percent)
        return dataset.split_for_speaker(speaker, self._val_percent, self._test_percent,
                                         self._salt)

    def _background(self, path: str):
        try:
            waveform = audio.decode_wav(read_bytes(path))
        except (audio.AudioError, IOError, OSError) as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(path, str(error)))
            return
        yield beam.pvalue.TaggedOutput(BACKGROUND, contract.serialize_background(waveform, path))
        if self._noise:
            yield beam.pvalue.TaggedOutput(NOISE, path)

    def process(self, path: str):
        self._read.inc()
        entry = dataset.classify(path, self._data_dir, self._wanted, self._unknown)
        if entry.skip_reason == dataset.BACKGROUND_REASON:
            yield from self._background(path)
            return
        if entry.label is None or entry.label not in self._index:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, entry.skip_reason or "label not listed")
            return
        if self._unknown and entry.label == dataset.UNKNOWN_LABEL:
            speaker = dataset.speaker_id(path)
            yield beam.pvalue.TaggedOutput(UNKNOWN, (self._split_of(path, speaker), path))
            return
        yield from self._example(path, entry.label)

    def _example(self, path: str, label: str):
        try:
            clip = audio.featurize(read_bytes(path))
        except audio.AudioError as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(path, str(error)))
            return
        except (IOError, OSError) as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(path, f"cannot read ({error})"))
            return
        speaker = dataset.speaker_id(path)
        self._written.inc()
        yield (self._split_of(path, speaker), label,
               contract.serialize_example(
                   clip.spectrogram, self._index[label], label, speaker, path,
                   clip.num_samples, clip.waveform if self._waveforms else None))


class FeaturizeUnknown(FeaturizeFile):
    """(split, path) of a sampled unknown-word clip -> (split, "_unknown_", tf.Example).

    Built with the same arguments as `FeaturizeFile`; the clip keeps its speaker's split.
    """

    def process(self, element):
        _, path = element
        yield from self._example(path, dataset.UNKNOWN_LABEL)


def _rank(candidate, seed: int):
    split, path = candidate
    return split, dataset.sampling_rank(path, seed)


def _threshold(split_ranks, percent: float, wanted: dict):
    split, ranks = split_ranks
    return split, dataset.sample_threshold(ranks, wanted.get(split, 0), percent)


class _KeepSampled(beam.DoFn):
    def __init__(self, seed: int):
        self._seed = seed

    def process(self, candidate, thresholds):
        split, path = candidate
        if dataset.sampling_rank(path, self._seed) <= thresholds[split]:
            yield candidate
        else:
            yield beam.pvalue.TaggedOutput(SKIPPED, dataset.UNKNOWN_NOT_SAMPLED)


class SampleUnknown(beam.PTransform):
    """(split, path) unknown-word clips -> (sampled, skipped reasons).

    Per split, keeps the `dataset.share(wanted, percent)` clips of lowest
    `dataset.sampling_rank`, where `wanted` is that split's wanted-word example count
    (a side input): the ranks of a split are grouped to find the threshold, which goes
    back to every clip as a side input. Clips are only decoded once sampled.
    """

    def __init__(self, wanted_counts, percent: float, seed: int):
        super().__init__()
        self._wanted_counts = wanted_counts
        self._percent = percent
        self._seed = seed

    def expand(self, candidates):
        thresholds = (candidates
                      | "Rank" >> beam.Map(_rank, self._seed)
                      | "GroupBySplit" >> beam.GroupByKey()
                      | "Threshold" >> beam.Map(
                          _threshold, self._percent,
                          wanted=beam.pvalue.AsDict(self._wanted_counts)))
        results = candidates | "Keep" >> beam.ParDo(
            _KeepSampled(self._seed), thresholds=beam.pvalue.AsDict(thresholds)).with_outputs(
                SKIPPED, main="sampled")
        return results.sampled, results[SKIPPED]


class CutSilence(beam.DoFn):
    """Path of a noise recording -> its share of the `_silence_` examples.

    Side inputs: the paths of all the recordings (the clips are dealt to them in turn)
    and each split's wanted-word example count. The recording is decoded again here
    rather than passed along: it is megabytes, its path is bytes (and passing the arrays
    on made the multi-process DirectRunner drop examples). Each clip is featurised
    with the same functions as a real clip (`audio.pad_or_trim`, `audio.spectrogram`).
    """

    def __init__(self, label: int, percent: float, val_percent: float, test_percent: float,
                 seed: int, waveforms: bool = True):
        self._label = label
        self._percent = percent
        self._val_percent = val_percent
        self._test_percent = test_percent
        self._seed = seed
        self._waveforms = waveforms
        self._written = Metrics.counter("preprocess", "silence")

    def process(self, path, paths, wanted):
        waveform = audio.decode_wav(read_bytes(path))
        ordered = sorted(paths)
        for split in contract.SPLITS:
            count = dataset.share(wanted.get(split, 0), self._percent)
            for crop in dataset.silence_crops(
                    ordered.index(path), len(ordered), waveform.shape[0], split, count,
                    self._val_percent, self._test_percent, self._seed):
                samples = waveform[crop.start:crop.start + crop.length] * np.float32(crop.gain)
                padded = audio.pad_or_trim(samples)
                self._written.inc()
                yield (split, dataset.SILENCE_LABEL, contract.serialize_example(
                    audio.spectrogram(padded), self._label, dataset.SILENCE_LABEL,
                    dataset.SILENCE_LABEL, dataset.silence_path(path, crop), crop.length,
                    padded if self._waveforms else None))
