"""Beam transforms shared by preprocessing and batch prediction.

They wire the pure functions of `audio`, `dataset` and `contract` into a graph: list
files, read and featurise each one, route bad inputs to a side output with a reason.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import audio, contract, dataset

REJECTED = "rejected"
SKIPPED = "skipped"
BACKGROUND = "background"


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
    Recordings in `_background_noise_` go, decoded whole, to the `background` output.
    """

    def __init__(self, data_dir: str, labels: list[str], split: str, seed: int,
                 val_percent: float, test_percent: float,
                 wanted: Optional[list[str]] = None,
                 salt: str = dataset.DEFAULT_SPLIT_SALT, waveforms: bool = True):
        self._data_dir = data_dir
        self._labels = list(labels)
        self._split = split
        self._seed = seed
        self._val_percent = val_percent
        self._test_percent = test_percent
        self._wanted = wanted
        self._salt = salt
        self._waveforms = waveforms
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

    def process(self, path: str):
        self._read.inc()
        entry = dataset.classify(path, self._data_dir, self._wanted)
        if entry.skip_reason == dataset.BACKGROUND_REASON:
            yield from self._background(path)
            return
        if entry.label is None or entry.label not in self._index:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, entry.skip_reason or "label not listed")
            return
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
        yield (self._split_of(path, speaker), entry.label,
               contract.serialize_example(
                   clip.spectrogram, self._index[entry.label], entry.label, speaker, path,
                   clip.num_samples, clip.waveform if self._waveforms else None))
