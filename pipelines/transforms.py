"""Beam transforms shared by preprocessing and batch prediction.

They wire the pure functions of `audio`, `dataset` and `contract` into a graph: list
files, read and featurise each one, route bad inputs to a side output with a reason;
for the keyword-spotting setting, sample the `_unknown_` clips and cut `_silence_` ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Optional, Union

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import audio, contract, dataset, inputs

REJECTED = "rejected"
SKIPPED = "skipped"
BACKGROUND = "background"
UNKNOWN = "unknown"  # (split, path) of an unknown-word clip, before sampling
NOISE = "noise"  # path of a background-noise recording that decodes
NOT_A_FILE = "not a regular file (a FIFO, socket or device would block or fail the read)"


def rejection(path: str, reason: str) -> str:
    """One line of `rejected/*.jsonl`."""
    return json.dumps({"path": path, "reason": reason})


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def is_readable_file(path: str) -> bool:
    """False for a local path that is not a regular file (opening a FIFO blocks)."""
    return "://" in path or os.path.isfile(path)


@beam.ptransform_fn
def MatchPatterns(pipeline, patterns: Iterable[str],  # pylint: disable=invalid-name
                  as_bytes: bool = False):
    """Lists every file matching any of `patterns`, spread out for parallel reading.

    With `as_bytes`, each path is `inputs.path_bytes` of it, so names that are not UTF-8
    travel too.
    """
    path = inputs.path_bytes if as_bytes else (lambda text: text)
    return (pipeline
            | "Patterns" >> beam.Create(list(patterns))
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: path(metadata.path))
            | "Spread" >> beam.Reshuffle())


class _CheckNames(beam.DoFn):
    """FileMetadata -> its path; a name that is not valid UTF-8 -> `rejected`.

    Such a name (bytes the OS could not decode) cannot be encoded between steps nor
    stored in the `path` feature, so it is rejected here, before any step boundary.
    """

    def process(self, metadata):
        if inputs.is_utf8(metadata.path):
            yield metadata.path
        else:
            yield beam.pvalue.TaggedOutput(
                REJECTED, rejection(inputs.printable(metadata.path), inputs.NAME_REASON))


class ListFiles(beam.PTransform):
    """Patterns -> (paths spread out for parallel reading, rejected names, files listed).

    The count is taken as the files are listed, before any other step, so that every
    later outcome can be checked against it.
    """

    def __init__(self, patterns: Iterable[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pipeline):
        listed = (pipeline
                  | "Patterns" >> beam.Create(self._patterns)
                  | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW))
        count = listed | "CountListed" >> beam.combiners.Count.Globally()
        names = listed | "Names" >> beam.ParDo(_CheckNames()).with_outputs(
            REJECTED, main="paths")
        return names.paths | "Spread" >> beam.Reshuffle(), names[REJECTED], count


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig:
    """What `FeaturizeFile` needs to turn a path into an example, or a reason not to.

    Attributes:
      data_dir: the data folder, or a tuple of them; labels are their sub-folders.
      labels: every label of the run, in index order (labels.txt).
      split: `dataset.SPLIT_SPEAKER` or `dataset.SPLIT_RANDOM`.
      seed: seed of the random split.
      val_percent, test_percent: the split's shares.
      wanted: the labels of --labels, or None for every folder not starting with _.
      salt: salt of the speaker hash.
      waveforms: also store the padded waveform.
      unknown: clips of other words go to the `unknown` output (--unknown-percent).
      noise: paths of the background recordings go to the `noise` output
        (--silence-percent).
    """
    data_dir: Union[str, tuple[str, ...]]
    labels: tuple[str, ...]
    split: str = dataset.SPLIT_SPEAKER
    seed: int = 42
    val_percent: float = 10.0
    test_percent: float = 10.0
    wanted: Optional[tuple[str, ...]] = None
    salt: str = dataset.DEFAULT_SPLIT_SALT
    waveforms: bool = True
    unknown: bool = False
    noise: bool = False

    def split_of(self, path: str) -> str:
        """The split of one clip: by its speaker, or per file with --split random."""
        if self.split == dataset.SPLIT_RANDOM:
            return dataset.split_for_file(path, self.seed, self.val_percent,
                                          self.test_percent)
        return dataset.split_for_speaker(dataset.speaker_id(path), self.val_percent,
                                         self.test_percent, self.salt)


class FeaturizeFile(beam.DoFn):
    """Path -> (split, label_name, serialized tf.Example).

    Files that are not clips go to the `skipped` output as a reason string; clips that
    cannot be decoded go to `rejected` as a JSON line naming the path and the reason.
    Recordings in `_background_noise_` go, decoded whole, to the `background` output
    (and, with `config.noise`, their paths to `noise`). With `config.unknown`, clips of
    words that are not wanted go to `unknown` as (split, path), to be sampled before
    decoding. Only the first second of a clip is read, whatever the file's length.
    """

    def __init__(self, config: FeaturizeConfig):
        self._config = config
        self._index = {}
        self._read = Metrics.counter("preprocess", "files_read")
        self._written = Metrics.counter("preprocess", "examples")
        self._rejected = Metrics.counter("preprocess", "rejected")
        self._skipped = Metrics.counter("preprocess", "skipped")

    def setup(self):
        self._index = {label: i for i, label in enumerate(self._config.labels)}

    def _reject(self, path: str, reason: str):
        self._rejected.inc()
        yield beam.pvalue.TaggedOutput(REJECTED, rejection(path, reason))

    def _background(self, path: str):
        if not is_readable_file(path):
            yield from self._reject(path, NOT_A_FILE)
            return
        try:
            waveform = audio.decode_wav(path)
        except (audio.AudioError, IOError, OSError) as error:
            yield from self._reject(path, str(error))
            return
        yield beam.pvalue.TaggedOutput(BACKGROUND, contract.serialize_background(waveform, path))
        if self._config.noise:
            yield beam.pvalue.TaggedOutput(NOISE, path)

    def process(self, path: str):
        self._read.inc()
        config = self._config
        entry = dataset.classify(path, config.data_dir, config.wanted, config.unknown)
        if entry.skip_reason == dataset.BACKGROUND_REASON:
            yield from self._background(path)
            return
        if entry.label is None or entry.label not in self._index:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, entry.skip_reason or "label not listed")
            return
        if config.unknown and entry.label == dataset.UNKNOWN_LABEL:
            yield beam.pvalue.TaggedOutput(UNKNOWN, (config.split_of(path), path))
            return
        yield from self._example(path, entry.label)

    def _example(self, path: str, label: str):
        if not is_readable_file(path):
            yield from self._reject(path, NOT_A_FILE)
            return
        try:
            clip = audio.featurize(path)
        except audio.AudioError as error:
            yield from self._reject(path, str(error))
            return
        except (IOError, OSError) as error:
            yield from self._reject(path, f"cannot read ({error})")
            return
        self._written.inc()
        yield (self._config.split_of(path), label,
               contract.serialize_example(
                   clip.spectrogram, self._index[label], label, dataset.speaker_id(path),
                   path, clip.num_samples,
                   clip.waveform if self._config.waveforms else None))


class FeaturizeUnknown(FeaturizeFile):
    """(split, path) of a sampled unknown-word clip -> (split, "_unknown_", tf.Example).

    Built with the same config as `FeaturizeFile`; the clip keeps its speaker's split.
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
    rather than passed along from `FeaturizeFile`: its path is a few bytes, its samples
    megabytes. Each clip is featurised with the same functions as a real clip
    (`audio.pad_or_trim`, `audio.spectrogram`).
    """

    def __init__(self, config: FeaturizeConfig, percent: float):
        self._config = config
        self._label = config.labels.index(dataset.SILENCE_LABEL)
        self._percent = percent
        self._written = Metrics.counter("preprocess", "silence")

    def process(self, path, paths, wanted):
        config = self._config
        waveform = audio.decode_wav(path)
        ordered = sorted(paths)
        for split in contract.SPLITS:
            count = dataset.share(wanted.get(split, 0), self._percent)
            for crop in dataset.silence_crops(
                    ordered.index(path), len(ordered), waveform.shape[0], split, count,
                    config.val_percent, config.test_percent, config.seed):
                samples = waveform[crop.start:crop.start + crop.length] * np.float32(crop.gain)
                padded = audio.pad_or_trim(samples)
                self._written.inc()
                yield (split, dataset.SILENCE_LABEL, contract.serialize_example(
                    audio.spectrogram(padded), self._label, dataset.SILENCE_LABEL,
                    dataset.SILENCE_LABEL, dataset.silence_path(path, crop), crop.length,
                    padded if config.waveforms else None))
