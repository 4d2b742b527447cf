"""Keyword detection at scale: long recordings (local or gs://) -> JSON Lines of events.

Each recording is cut into chunks of `--chunk-seconds` of windows, so the chunks of one
long file spread over workers (`pipelines.chunks`); every event equals
`trainer.detect`'s on the same file. Each event is one JSON line::

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
import sys
from typing import Optional

import apache_beam as beam

from pipelines import batch, chunks, claim, errors, events, scoring

EVENTS = chunks.EVENTS
NAMESPACE = chunks.NAMESPACE
CHUNK_SECONDS = chunks.CHUNK_SECONDS


def load_config(export_dir: str, labels: list[str], threshold: Optional[float]
                ) -> events.Config:
    """export/detection.json (or the default), `threshold` applied; notes on stderr."""
    _, config, notes = scoring.read_operating_point(export_dir, labels, threshold)
    for note in notes:
        print(note, file=sys.stderr)
    return config


MAX_CHUNK_SECONDS = 3600.0


def build_parser() -> argparse.ArgumentParser:
    parser = batch.batch_parser("python -m pipelines.detect", __doc__)
    parser.add_argument("--threshold", type=events.threshold_arg, default=None,
                        help="one threshold for every keyword, instead of detection.json's")
    parser.add_argument("--chunk-seconds", type=events.positive_at_most(MAX_CHUNK_SECONDS),
                        default=CHUNK_SECONDS,
                        help=f"audio per unit of work (default {CHUNK_SECONDS:g})")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove an earlier run's events and rejected shards in OUTPUT "
                             "first (nothing else there is touched)")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    args, beam_args = build_parser().parse_known_args(argv)
    options = batch.pipeline_options(beam_args)
    export_dir, labels = batch.load_export(args.model_dir)
    config = load_config(export_dir, labels, args.threshold)
    batch.count_inputs(args.input)
    output = args.output.rstrip("/")
    prefixes = (f"{output}/{EVENTS}", batch.rejected_prefix(output))
    found, rejected = (batch.shards_of(prefix) for prefix in prefixes)
    with claim.Claim(output, "python -m pipelines.detect"):
        batch.prepare_output(output, prefixes, args.overwrite)
        pipeline = beam.Pipeline(options=options)
        chunks.build_pipeline(pipeline, args.input, export_dir, labels, config, output,
                              args.chunk_seconds)
        result = batch.run_pipeline(pipeline, output, prefixes)
        counts = {name: batch.counter(result, NAMESPACE, name)
                  for name in ("files", "detected", "rejected", "chunks", "events")}
        written = {"events": batch.count_lines(found),
                   "rejected": batch.count_lines(rejected)}
    print(f"files {counts['files']} = detected {counts['detected']} + rejected "
          f"{written['rejected']}; "
          f"{written['events']} events from {counts['chunks']} chunks: "
          f"{found}, {rejected}")
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
