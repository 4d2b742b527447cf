"""Preprocessing: folders of WAV clips -> speaker-disjoint, sharded TFRecords.

Reads DIR/<label>/*.wav (local or gs://), computes the tutorial's STFT magnitude
spectrogram for each clip, splits by a hash of the speaker and writes
OUT/{train,val,test}/ shards, OUT/labels.txt, OUT/metadata.json and OUT/rejected/.

With --unknown-percent and --silence-percent it makes TensorFlow's keyword-spotting
classes: `_unknown_` (a sample of the words not in --labels) and `_silence_` (one-second
clips of the background noise at a random volume), each a percentage of every split.

Locally (in-memory DirectRunner, or several processes)::

    python -m pipelines.preprocess --data-dir data/sample --output-dir runs/sample/data
    python -m pipelines.preprocess --data-dir DIR --output-dir OUT --labels yes,no,up,down \\
        --unknown-percent 10 --silence-percent 10
    python -m pipelines.preprocess --data-dir DIR --output-dir OUT \\
        --direct_running_mode multi_processing --direct_num_workers 2

On Dataflow (any Beam flag passes through to PipelineOptions)::

    python -m pipelines.preprocess --data-dir gs://BUCKET/speech --output-dir gs://BUCKET/tfrecords \\
        --runner DataflowRunner --project PROJECT --region REGION \\
        --temp_location gs://BUCKET/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipelines import contract, dataset, errors, transforms

DEFAULT_MAX_REJECTED_FRACTION = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.preprocess", description=__doc__.split("\n\n")[0],
        epilog="Any other flag is passed to Beam's PipelineOptions (--runner, --project, ...).")
    parser.add_argument("--data-dir", required=True,
                        help="folder of <label>/*.wav, local or gs://")
    parser.add_argument("--output-dir", required=True, help="where the run is written")
    parser.add_argument("--labels", default=None,
                        help="comma-separated labels to keep (default: every folder not "
                             "starting with _)")
    parser.add_argument("--split", choices=[dataset.SPLIT_SPEAKER, dataset.SPLIT_RANDOM],
                        default=dataset.SPLIT_SPEAKER,
                        help="speaker: by a hash of the speaker id (default); random: per "
                             "file, seeded, like the tutorial (leaks speakers)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of --split random, of the _unknown_ sample and of the "
                             "_silence_ clips")
    parser.add_argument("--split-salt", default=dataset.DEFAULT_SPLIT_SALT,
                        help="salt of the speaker hash; '' reproduces TensorFlow's "
                             "which_set() exactly")
    parser.add_argument("--val-percent", type=float, default=10.0)
    parser.add_argument("--test-percent", type=float, default=10.0)
    parser.add_argument("--unknown-percent", type=float, default=None, metavar="P",
                        help="add an _unknown_ class: the clips of every other word "
                             "folder (and of a _unknown_ folder), sampled to P%% of each "
                             "split's wanted-word examples (default: other words skipped)")
    parser.add_argument("--silence-percent", type=float, default=None, metavar="P",
                        help="add a _silence_ class: one-second clips of the "
                             "_background_noise_ recordings at a random volume, P%% of each "
                             "split's wanted-word examples")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="shards per split (0: chosen by the runner)")
    parser.add_argument("--waveforms", action=argparse.BooleanOptionalAction, default=True,
                        help="also store each padded waveform (for audio-domain "
                             "augmentation in training; --no-waveforms halves the size)")
    parser.add_argument("--compression", choices=["none", "gzip"], default="none")
    parser.add_argument("--max-rejected-fraction", type=float,
                        default=DEFAULT_MAX_REJECTED_FRACTION,
                        help="exit non-zero after writing when more clips are rejected")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in --output-dir")
    return parser


def list_inputs(data_dir: str) -> list[str]:
    """Every file directly in DIR or in one of its sub-folders."""
    base = data_dir.rstrip("/")
    patterns = [f"{base}/*", f"{base}/*/*"]
    try:
        results = FileSystems.match(patterns)
    except Exception as error:  # pylint: disable=broad-except
        raise errors.UserError(f"{data_dir}: cannot list ({errors.first_line(error)})")
    return [meta.path for result in results for meta in result.metadata_list]


def check_inputs(data_dir: str, wanted: Optional[list[str]], unknown: bool = False,
                 silence: bool = False) -> list[str]:
    """Validates DIR and returns the sorted labels, or raises UserError.

    With `unknown` the labels include `_unknown_`, with `silence` `_silence_`.
    """
    if "://" not in data_dir and not FileSystems.exists(data_dir):
        raise errors.UserError(f"{data_dir}: data folder not found")
    paths = list_inputs(data_dir)
    if not paths:
        raise errors.UserError(f"{data_dir}: no files found")
    labels = dataset.label_folders(paths, data_dir, wanted, unknown)
    if unknown and dataset.UNKNOWN_LABEL not in labels:
        raise errors.UserError(
            f"{data_dir}: --unknown-percent needs .wav files of other words (folders not "
            f"in --labels, or {dataset.UNKNOWN_LABEL}/)")
    if silence:
        if not any(dataset.classify(path, data_dir).skip_reason == dataset.BACKGROUND_REASON
                   for path in paths):
            raise errors.UserError(
                f"{data_dir}: --silence-percent needs a {contract.BACKGROUND_NOISE_DIR}/ "
                "folder of .wav noise recordings")
        labels = sorted(labels + [dataset.SILENCE_LABEL])
    if wanted:
        missing = sorted(set(wanted) - set(labels))
        if missing:
            raise errors.UserError(
                f"{data_dir}: no .wav files for label(s) {', '.join(missing)}")
    if not labels:
        raise errors.UserError(f"{data_dir}: no label folders with .wav files "
                               "(expected DIR/<label>/*.wav)")
    if len(labels) < 2:
        raise errors.UserError(f"{data_dir}: only one label ({labels[0]}); a classifier "
                               "needs at least two label folders")
    return labels


def run_outputs(output_dir: str) -> list[str]:
    """Files of an earlier run in OUT (shards, labels, metadata, rejected)."""
    base = output_dir.rstrip("/")
    patterns = [f"{base}/{contract.METADATA_FILE}", f"{base}/{contract.LABELS_FILE}",
                f"{base}/{contract.REJECTED_DIR}/*"]
    patterns += [f"{base}/{split}/*" for split in contract.SPLITS + (contract.BACKGROUND,)]
    return [meta.path for result in FileSystems.match(patterns)
            for meta in result.metadata_list]


def prepare_output(output_dir: str, overwrite: bool) -> None:
    existing = run_outputs(output_dir)
    if existing and not overwrite:
        raise errors.UserError(f"{output_dir}: already holds a preprocessing run "
                               "(pass --overwrite to replace it)")
    if existing:
        FileSystems.delete(existing)


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8")


class WriteMetadata(beam.DoFn):
    """Writes metadata.json once every split's shards are final."""

    def __init__(self, path: str, static: contract.RunMetadata):
        self._path = path
        self._static = static

    def process(self, _, examples, rejected, skipped, background, shards, background_shards):
        counts = {split: {} for split in contract.SPLITS}
        for (split, label), count in examples.items():
            counts[split][label] = count
        # `_silence_` examples are cut from the background recordings, not read from files.
        silence = (sum(count for (_, label), count in examples.items()
                       if label == dataset.SILENCE_LABEL)
                   if self._static.silence_percent is not None else 0)
        written = sum(examples.values()) - silence
        metadata = dataclasses.replace(
            self._static, counts=counts, examples_written=written, silence_written=silence,
            rejected_by_reason=dict(rejected), skipped_by_reason=dict(skipped),
            background_recordings=background,
            files_read=(written + background + sum(rejected.values())
                        + sum(skipped.values())),
            shards=tuple(shards),
            background_shards=tuple(background_shards) if background else ())
        write_text(self._path, metadata.to_json())
        yield self._path


def _reason(line: str) -> str:
    return json.loads(line)["reason"].split(" (")[0]


def wanted_labels(args: argparse.Namespace) -> Optional[list[str]]:
    """The words of --labels, or None for every folder not starting with _."""
    return [label.strip() for label in args.labels.split(",")] if args.labels else None


def add_keyword_classes(results, args: argparse.Namespace, labels: list[str],
                        featurize_args: tuple):
    """Adds the `_unknown_` and `_silence_` examples to the featurised clips.

    Both are sized from each split's wanted-word example count (a side input), as
    TensorFlow's `prepare_data_index()` sizes them. Returns the flattened (examples,
    rejected, skipped) PCollections.
    """
    wanted_counts = (results.examples
                     | "KeyWanted" >> beam.Map(lambda example: example[0])
                     | "CountWanted" >> beam.combiners.Count.PerElement())
    examples, rejected, skipped = [results.examples], [results.rejected], [results.skipped]
    if args.unknown_percent is not None:
        sampled, not_sampled = (results[transforms.UNKNOWN]
                                | "SampleUnknown" >> transforms.SampleUnknown(
                                    wanted_counts, args.unknown_percent, args.seed))
        unknown = sampled | "FeaturizeUnknown" >> beam.ParDo(
            transforms.FeaturizeUnknown(*featurize_args)).with_outputs(
                transforms.REJECTED, main="examples")
        examples.append(unknown.examples)
        rejected.append(unknown.rejected)
        skipped.append(not_sampled)
    if args.silence_percent is not None:
        noise = results[transforms.NOISE]
        examples.append(noise | "CutSilence" >> beam.ParDo(
            transforms.CutSilence(labels.index(dataset.SILENCE_LABEL), args.silence_percent,
                                  args.val_percent, args.test_percent, args.seed,
                                  args.waveforms),
            paths=beam.pvalue.AsList(noise),
            wanted=beam.pvalue.AsDict(wanted_counts)))
    return (tuple(examples) | "AllExamples" >> beam.Flatten(),
            tuple(rejected) | "AllRejected" >> beam.Flatten(),
            tuple(skipped) | "AllSkipped" >> beam.Flatten())


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, labels: list[str],
                   static_metadata: dict) -> None:
    """Adds the preprocessing graph to `pipeline`."""
    out = args.output_dir.rstrip("/")
    base = args.data_dir.rstrip("/")
    wanted = wanted_labels(args)
    unknown = args.unknown_percent is not None
    silence = args.silence_percent is not None
    compression = (CompressionTypes.GZIP if args.compression == "gzip"
                   else CompressionTypes.UNCOMPRESSED)
    suffix = contract.SHARD_SUFFIX + (contract.GZIP_SUFFIX if args.compression == "gzip" else "")

    featurize_args = (args.data_dir, labels, args.split, args.seed, args.val_percent,
                      args.test_percent, wanted, args.split_salt, args.waveforms, unknown, silence)
    outputs = [transforms.REJECTED, transforms.SKIPPED, transforms.BACKGROUND]
    outputs += [transforms.UNKNOWN] if unknown else []
    outputs += [transforms.NOISE] if silence else []
    results = (pipeline
               | "List" >> transforms.MatchPatterns([f"{base}/*", f"{base}/*/*"])
               | "Featurize" >> beam.ParDo(transforms.FeaturizeFile(*featurize_args))
               .with_outputs(*outputs, main="examples"))
    examples, rejected, skipped = results.examples, results.rejected, results.skipped
    if unknown or silence:
        examples, rejected, skipped = add_keyword_classes(
            results, args, labels, featurize_args)

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
                num_shards=args.num_shards, compression_type=compression))
    background = (results.background
                  | "WriteBackground" >> beam.io.WriteToTFRecord(
                      f"{out}/{contract.BACKGROUND}/{contract.SHARD_PREFIX}",
                      file_name_suffix=contract.SHARD_SUFFIX, num_shards=1))
    background_count = (results.background
                        | "CountBackground" >> beam.combiners.Count.Globally())
    (rejected
     | "WriteRejected" >> beam.io.WriteToText(
         f"{out}/{contract.REJECTED_DIR}/rejected", file_name_suffix=".jsonl"))

    example_counts = (examples
                      | "KeyExamples" >> beam.Map(lambda example: (example[0], example[1]))
                      | "CountExamples" >> beam.combiners.Count.PerElement())
    rejected_counts = (rejected
                       | "KeyRejected" >> beam.Map(_reason)
                       | "CountRejected" >> beam.combiners.Count.PerElement())
    skipped_counts = skipped | "CountSkipped" >> beam.combiners.Count.PerElement()
    shard_files = written | "AllShards" >> beam.Flatten()
    (pipeline
     | "Once" >> beam.Create([None])
     | "WriteMetadata" >> beam.ParDo(
         WriteMetadata(f"{out}/{contract.METADATA_FILE}", static_metadata),
         examples=beam.pvalue.AsDict(example_counts),
         rejected=beam.pvalue.AsDict(rejected_counts),
         skipped=beam.pvalue.AsDict(skipped_counts),
         background=beam.pvalue.AsSingleton(background_count),
         shards=beam.pvalue.AsList(shard_files),
         background_shards=beam.pvalue.AsList(background)))


def summary_table(metadata: dict) -> str:
    """The console summary: examples per split and label, rejected and skipped."""
    counts = metadata["counts"]
    labels = sorted({label for split in counts.values() for label in split["per_label"]})
    width = max([len(label) for label in labels] + [10])
    header = f"{'label':<{width}}" + "".join(f"{split:>8}" for split in contract.SPLITS)
    lines = [header, "-" * len(header)]
    for label in labels:
        lines.append(f"{label:<{width}}" + "".join(
            f"{counts[split]['per_label'].get(label, 0):>8}" for split in contract.SPLITS))
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}}" + "".join(
        f"{counts[split]['total']:>8}" for split in contract.SPLITS))
    lines.append("")
    lines.append(f"files read {metadata['files_read']} = examples {metadata['examples_written']}"
                 f" + background noise {metadata['background_recordings']}"
                 f" + rejected {metadata['rejected']} + skipped {metadata['skipped']}")
    if metadata.get("silence_percent") is not None:
        lines.append(f"plus {metadata['silence_written']} {dataset.SILENCE_LABEL} examples cut "
                     "from the background noise (not files)")
    for title, key in (("rejected", "rejected_by_reason"), ("skipped", "skipped_by_reason")):
        for reason, count in metadata[key].items():
            lines.append(f"  {title:<8} {count:>6}  {reason}")
    return "\n".join(lines)


def check_keyword_options(args: argparse.Namespace, wanted: Optional[list[str]]) -> None:
    """Raises UserError for a negative percentage or a --labels that names a made class."""
    for flag, label in (("unknown_percent", dataset.UNKNOWN_LABEL),
                        ("silence_percent", dataset.SILENCE_LABEL)):
        percent = getattr(args, flag)
        if percent is None:
            continue
        name = f"--{flag.replace('_', '-')}"
        if percent < 0:
            raise errors.UserError(f"{name} must be >= 0")
        if wanted and label in wanted:
            raise errors.UserError(f"{name} makes the {label} class; leave it out of --labels")


def run(argv: Optional[list[str]] = None) -> contract.RunMetadata:
    """Runs preprocessing; returns the run's metadata. Raises UserError on bad input."""
    args, beam_args = build_parser().parse_known_args(argv)
    wanted = wanted_labels(args)
    for flag in ("val_percent", "test_percent"):
        if not 0 <= getattr(args, flag) < 100:
            raise errors.UserError(f"--{flag.replace('_', '-')} must be in [0, 100)")
    if args.val_percent + args.test_percent >= 100:
        raise errors.UserError("--val-percent + --test-percent must leave room for train")
    check_keyword_options(args, wanted)
    labels = check_inputs(args.data_dir, wanted, args.unknown_percent is not None,
                          args.silence_percent is not None)
    prepare_output(args.output_dir, args.overwrite)
    out = args.output_dir.rstrip("/")
    write_text(f"{out}/{contract.LABELS_FILE}", contract.format_labels(labels))

    keyword = args.unknown_percent is not None or args.silence_percent is not None
    static = contract.RunMetadata(
        labels=tuple(labels), data_dir=args.data_dir,
        split=contract.SplitSettings(
            method=args.split, val_percent=args.val_percent, test_percent=args.test_percent,
            salt=args.split_salt if args.split == dataset.SPLIT_SPEAKER else None,
            seed=args.seed if args.split == dataset.SPLIT_RANDOM else None),
        compression=args.compression, waveforms=args.waveforms,
        unknown_percent=args.unknown_percent, silence_percent=args.silence_percent,
        keyword_seed=args.seed if keyword else None,
        command_line="python -m pipelines.preprocess " + " ".join(
            argv if argv is not None else sys.argv[1:]))
    options = PipelineOptions(beam_args)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, args, labels, static)
    template = options.view_as(GoogleCloudOptions).template_location
    if template:
        # A Flex Template launch (or a classic template) only writes the job: it runs later.
        print(f"wrote the Dataflow job to {template}; its run writes {out}/")
        return static
    metadata = contract.RunMetadata.from_json(read_text(f"{out}/{contract.METADATA_FILE}"))
    print(summary_table(metadata))
    print(f"\nwrote {out}/{{train,val,test}}/, {contract.LABELS_FILE}, {contract.METADATA_FILE}")
    usable = metadata["examples_written"] + metadata["rejected"]
    fraction = metadata["rejected"] / usable if usable else 0.0
    if fraction > args.max_rejected_fraction:
        raise errors.TooManyRejected(
            f"{args.data_dir}: {metadata['rejected']} of {usable} clips rejected "
            f"({fraction:.1%} > --max-rejected-fraction {args.max_rejected_fraction:.1%}); "
            f"see {out}/{contract.REJECTED_DIR}/")
    return metadata


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
