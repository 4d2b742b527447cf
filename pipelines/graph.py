"""The preprocessing graph: list, featurise, route, write each split, then the metadata.

::

    List -> Featurize -> [SampleUnknown, FeaturizeUnknown] [CutSilence] -> Route
         -> WriteTrain, WriteVal, WriteTest   WriteBackground   WriteRejected
         -> CountWritten (records read back from every written file)
         -> WriteMetadata (once every shard is final)

What was written is counted from the files themselves, and the files listed as they are
listed, so an element lost anywhere between the two shows in metadata.json
(`RunMetadata.unaccounted`) instead of passing unnoticed.
"""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pipelines import contract, dataset, inputs, outputs, transforms


def count_written(path: str):
    """A written file -> (its place, the records or lines it holds)."""
    place = path.replace("\\", "/").rstrip("/").split("/")[-2]
    if place == contract.REJECTED_DIR:
        yield place, outputs.count_lines(path)
    else:
        yield place, outputs.count_records(path)


class WriteMetadata(beam.DoFn):
    """Writes metadata.json once every file is final and counted."""

    def __init__(self, path: str, static: contract.RunMetadata, listing_skipped: int):
        self._path = path
        self._static = static
        self._listing_skipped = listing_skipped

    def process(self, _, examples, rejected, skipped, background, shards, background_shards,
                listed, written):
        counts = {split: {} for split in contract.SPLITS}
        for (split, label), count in examples.items():
            counts[split][label] = count
        # `_silence_` examples are cut from the background recordings, not read from files.
        silence = (sum(count for (_, label), count in examples.items()
                       if label == dataset.SILENCE_LABEL)
                   if self._static.silence_percent is not None else 0)
        metadata = dataclasses.replace(
            self._static, counts=counts, silence_written=silence,
            examples_written=sum(examples.values()) - silence,
            rejected_by_reason=dict(rejected), skipped_by_reason=dict(skipped),
            background_recordings=background,
            files_read=listed + self._listing_skipped,
            shards=tuple(shards),
            background_shards=tuple(background_shards) if background else (),
            records_in_shards={place: written.get(place, 0) for place in
                               contract.SPLITS + (contract.BACKGROUND, contract.REJECTED_DIR)})
        outputs.write_text(self._path, metadata.to_json())
        yield self._path


def _reason(line: str) -> str:
    return json.loads(line)["reason"].split(" (")[0]


def add_keyword_classes(results, config: transforms.FeaturizeConfig,
                        metadata: contract.RunMetadata):
    """Adds the `_unknown_` and `_silence_` examples to the featurised clips.

    Both are sized from each split's wanted-word example count (a side input), as
    TensorFlow's `prepare_data_index()` sizes them. Returns the flattened (examples,
    rejected, skipped) PCollections.
    """
    wanted_counts = (results.examples
                     | "KeyWanted" >> beam.Map(lambda example: example[0])
                     | "CountWanted" >> beam.combiners.Count.PerElement())
    examples, rejected, skipped = [results.examples], [results.rejected], [results.skipped]
    if metadata.unknown_percent is not None:
        sampled, not_sampled = (results[transforms.UNKNOWN]
                                | "SampleUnknown" >> transforms.SampleUnknown(
                                    wanted_counts, metadata.unknown_percent, config.seed))
        unknown = sampled | "FeaturizeUnknown" >> beam.ParDo(
            transforms.FeaturizeUnknown(config)).with_outputs(
                transforms.REJECTED, main="examples")
        examples.append(unknown.examples)
        rejected.append(unknown.rejected)
        skipped.append(not_sampled)
    if metadata.silence_percent is not None:
        noise = results[transforms.NOISE]
        examples.append(noise | "CutSilence" >> beam.ParDo(
            transforms.CutSilence(config, metadata.silence_percent),
            paths=beam.pvalue.AsList(noise),
            wanted=beam.pvalue.AsDict(wanted_counts)))
    return (tuple(examples) | "AllExamples" >> beam.Flatten(),
            tuple(rejected) | "AllRejected" >> beam.Flatten(),
            tuple(skipped) | "AllSkipped" >> beam.Flatten())


def build_pipeline(pipeline: beam.Pipeline, config: transforms.FeaturizeConfig,
                   metadata: contract.RunMetadata, listing: inputs.Listing,
                   output_dir: str, num_shards: int = 0) -> None:
    """Adds the preprocessing graph to `pipeline`.

    Args:
      pipeline: the pipeline to add to.
      config: how each file is featurised (data folder, labels, split, ...).
      metadata: the run's settings; its counts are filled in by the graph's last step.
      listing: the data folder's patterns and the entries skipped while listing it.
      output_dir: where the run is written.
      num_shards: shards per split (0: chosen by the runner).
    """
    out = output_dir.rstrip("/")
    gzip = metadata.compression == "gzip"
    compression = CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED
    suffix = contract.SHARD_SUFFIX + (contract.GZIP_SUFFIX if gzip else "")
    keyword = config.unknown or config.noise

    tags = [transforms.REJECTED, transforms.SKIPPED, transforms.BACKGROUND]
    tags += [transforms.UNKNOWN] if config.unknown else []
    tags += [transforms.NOISE] if config.noise else []
    paths, bad_names, listed = pipeline | "List" >> transforms.ListFiles(listing.patterns)
    results = (paths
               | "Featurize" >> beam.ParDo(transforms.FeaturizeFile(config))
               .with_outputs(*tags, main="examples"))
    examples, rejected, skipped = results.examples, results.rejected, results.skipped
    if keyword:
        examples, rejected, skipped = add_keyword_classes(results, config, metadata)
    rejected = (rejected, bad_names) | "AllRejectedNames" >> beam.Flatten()
    if listing.skipped:
        skipped = ((skipped, pipeline | "ListingSkipped" >> beam.Create(
            [reason for _, reason in listing.skipped])) | "AllSkippedEntries" >> beam.Flatten())

    by_split = examples | "Route" >> beam.Partition(
        lambda example, _: contract.SPLITS.index(example[0]), len(contract.SPLITS))
    written = []
    for split, split_examples in zip(contract.SPLITS, by_split):
        title = split.capitalize()
        written.append(
            split_examples
            | f"Records{title}" >> beam.Map(lambda example: example[2])
            | f"Write{title}" >> beam.io.WriteToTFRecord(
                f"{out}/{split}/{contract.SHARD_PREFIX}", file_name_suffix=suffix,
                num_shards=num_shards, compression_type=compression))
    background = (results.background
                  | "WriteBackground" >> beam.io.WriteToTFRecord(
                      f"{out}/{contract.BACKGROUND}/{contract.SHARD_PREFIX}",
                      file_name_suffix=contract.SHARD_SUFFIX, num_shards=1))
    background_count = (results.background
                        | "CountBackground" >> beam.combiners.Count.Globally())
    rejected_files = (rejected
                      | "WriteRejected" >> beam.io.WriteToText(
                          f"{out}/{contract.REJECTED_DIR}/{contract.REJECTED_PREFIX}",
                          file_name_suffix=contract.REJECTED_SUFFIX))

    example_counts = (examples
                      | "KeyExamples" >> beam.Map(lambda example: (example[0], example[1]))
                      | "CountExamples" >> beam.combiners.Count.PerElement())
    rejected_counts = (rejected
                       | "KeyRejected" >> beam.Map(_reason)
                       | "CountRejected" >> beam.combiners.Count.PerElement())
    skipped_counts = skipped | "CountSkipped" >> beam.combiners.Count.PerElement()
    shard_files = written | "AllShards" >> beam.Flatten()
    written_counts = ((shard_files, background, rejected_files)
                      | "AllWritten" >> beam.Flatten()
                      | "CountWritten" >> beam.FlatMap(count_written)
                      | "SumWritten" >> beam.CombinePerKey(sum))
    (pipeline
     | "Once" >> beam.Create([None])
     | "WriteMetadata" >> beam.ParDo(
         WriteMetadata(f"{out}/{contract.METADATA_FILE}", metadata, len(listing.skipped)),
         examples=beam.pvalue.AsDict(example_counts),
         rejected=beam.pvalue.AsDict(rejected_counts),
         skipped=beam.pvalue.AsDict(skipped_counts),
         background=beam.pvalue.AsSingleton(background_count),
         shards=beam.pvalue.AsList(shard_files),
         background_shards=beam.pvalue.AsList(background),
         listed=beam.pvalue.AsSingleton(listed),
         written=beam.pvalue.AsDict(written_counts)))
