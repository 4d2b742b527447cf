"""Preprocessing: folders of WAV clips -> speaker-disjoint, sharded TFRecords.

Reads DIR/<label>/*.wav (local or gs://), computes the tutorial's STFT magnitude
spectrogram for each clip, splits by a hash of the speaker and writes
OUT/{train,val,test}/ shards, OUT/labels.txt, OUT/metadata.json and OUT/rejected/.

Every file and folder of DIR gets an outcome (example, background, rejected or skipped,
with a reason) and the run checks that files read = examples + background + rejected +
skipped, counted back from the files it wrote (`graph`). OUT may not be DIR or inside it;
`--overwrite` removes only the files a run writes (`outputs`).

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
import sys
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipelines import (batch, claim, contract, dataset, errors, graph, inputs, outputs,
                       summary, transforms)

DEFAULT_MAX_REJECTED_FRACTION = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = batch.beam_parser("python -m pipelines.preprocess", __doc__)
    parser.add_argument("--data-dir", required=True, action="append", dest="data_dirs",
                        metavar="DIR",
                        help="folder of <label>/*.wav (or .flac, .ogg, .opus, .mp3), local "
                             "or gs://; give it again to read several folders as one (a "
                             "label's clips may be in more than one)")
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
    parser.add_argument("--val-percent", type=float, default=10.0,
                        help="share of speakers (of files with --split random) in val")
    parser.add_argument("--test-percent", type=float, default=10.0,
                        help="share of speakers (of files with --split random) in test")
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
    parser.add_argument("--compression", choices=["none", "gzip"], default="none",
                        help="of the TFRecord shards")
    parser.add_argument("--max-rejected-fraction", type=float,
                        default=DEFAULT_MAX_REJECTED_FRACTION,
                        help="exit non-zero after writing when more clips are rejected")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in --output-dir (only the files a run "
                             "writes are removed; a folder holding anything else in the "
                             "run's places is refused)")
    return parser


def check_flags(args: argparse.Namespace, wanted: Optional[list[str]]) -> None:
    """Raises UserError for a flag value no run can use."""
    for flag in ("val_percent", "test_percent"):
        if not 0 <= getattr(args, flag) < 100:
            raise errors.UserError(f"--{flag.replace('_', '-')} must be in [0, 100)")
    if args.val_percent + args.test_percent >= 100:
        raise errors.UserError("--val-percent + --test-percent must leave room for train")
    if not inputs.is_utf8(args.output_dir):
        raise errors.UserError(f"{inputs.printable(args.output_dir)}: output folder name is "
                               "not valid UTF-8")
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


def run_metadata(args: argparse.Namespace, labels: list[str],
                 argv: Optional[list[str]]) -> contract.RunMetadata:
    """The run's settings, before anything is written (its counts come from the graph)."""
    keyword = args.unknown_percent is not None or args.silence_percent is not None
    return contract.RunMetadata(
        labels=tuple(labels), data_dir=args.data_dirs[0],
        extra_data_dirs=tuple(args.data_dirs[1:]),
        split=contract.SplitSettings(
            method=args.split, val_percent=args.val_percent, test_percent=args.test_percent,
            salt=args.split_salt if args.split == dataset.SPLIT_SPEAKER else None,
            seed=args.seed if args.split == dataset.SPLIT_RANDOM else None),
        compression=args.compression, waveforms=args.waveforms,
        unknown_percent=args.unknown_percent, silence_percent=args.silence_percent,
        keyword_seed=args.seed if keyword else None,
        command_line="python -m pipelines.preprocess " + " ".join(
            argv if argv is not None else sys.argv[1:]))


def featurize_config(args: argparse.Namespace, labels: list[str],
                     wanted: Optional[list[str]]) -> transforms.FeaturizeConfig:
    return transforms.FeaturizeConfig(
        data_dir=tuple(args.data_dirs), labels=tuple(labels), split=args.split,
        seed=args.seed,
        val_percent=args.val_percent, test_percent=args.test_percent,
        wanted=tuple(wanted) if wanted else None, salt=args.split_salt,
        waveforms=args.waveforms, unknown=args.unknown_percent is not None,
        noise=args.silence_percent is not None)


def run(argv: Optional[list[str]] = None) -> contract.RunMetadata:
    """Runs preprocessing; returns the run's metadata. Raises UserError on bad input."""
    args, beam_args = build_parser().parse_known_args(argv)
    options = batch.pipeline_options(beam_args)
    wanted = inputs.wanted_labels(args.labels)
    check_flags(args, wanted)
    labels, listing = inputs.check_inputs(args.data_dirs, wanted,
                                          args.unknown_percent is not None,
                                          args.silence_percent is not None)
    outputs.check_output_place(args.output_dir, args.data_dirs)
    with claim.Claim(args.output_dir, "python -m pipelines.preprocess"):
        return _run(args, argv, options, labels, wanted, listing)


def _run(args: argparse.Namespace, argv: Optional[list[str]], options: PipelineOptions,
         labels: list[str], wanted: Optional[list[str]], listing: inputs.Listing
         ) -> contract.RunMetadata:
    outputs.prepare_output(args.output_dir, args.data_dirs, args.overwrite)
    for path, reason in listing.skipped:
        print(f"skipped {inputs.printable(path)}: {reason}")
    out = args.output_dir.rstrip("/")
    outputs.write_text(f"{out}/{contract.LABELS_FILE}", contract.format_labels(labels))

    static = run_metadata(args, labels, argv)
    with beam.Pipeline(options=options) as pipeline:
        graph.build_pipeline(pipeline, featurize_config(args, labels, wanted), static,
                             listing, args.output_dir, args.num_shards)
    template = options.view_as(GoogleCloudOptions).template_location
    if template:
        # A Flex Template launch (or a classic template) only writes the job: it runs later.
        print(f"wrote the Dataflow job to {template}; its run writes {out}/")
        return static
    metadata = outputs.read_metadata(out)
    print(summary.summary_table(metadata))
    print(f"\nwrote {out}/{{train,val,test}}/, {contract.LABELS_FILE}, {contract.METADATA_FILE}")
    lost = metadata.unaccounted()
    if lost:
        # The trainer refuses this metadata.json too (`RunMetadata.from_json`).
        raise errors.PartialFailure(f"{out}: the counts do not add up, examples were lost "
                                    f"between steps: {lost[0]}")
    usable = metadata.examples_written + metadata.rejected
    fraction = metadata.rejected / usable if usable else 0.0
    if fraction > args.max_rejected_fraction:
        raise errors.TooManyRejected(
            f"{', '.join(args.data_dirs)}: {metadata.rejected} of {usable} clips rejected "
            f"({fraction:.1%} > --max-rejected-fraction {args.max_rejected_fraction:.1%}); "
            f"see {out}/{contract.REJECTED_DIR}/")
    return metadata


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
