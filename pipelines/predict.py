"""Batch prediction: WAV files (local or gs://) -> sharded JSON Lines of predictions.

Each file is decoded and featurised by the same code as preprocessing, the exported
model runs through tfx-bsl's `RunInference` (loaded once per worker and shared by its
threads, inputs batched), and every prediction becomes one JSON line::

    {"path": ..., "label": "yes", "probability": 0.97, "probabilities": {"down": ..., ...}}

Files that cannot be used go to OUTPUT/rejected/ with the reason. Only a file's first
second is read and classified (`pipelines.detect` finds keywords in long recordings). A
path that is not valid UTF-8 is written with its undecodable bytes as `\\xNN` escapes.
Every file listed gets one line, in one place or the other; the command checks that
the lines written add up to the files listed.

An OUTPUT that already holds results (`predictions-*-of-*.jsonl`, `rejected/rejected-*`)
is refused; `--overwrite` removes those files, and only those, before the run.

Locally::

    python -m pipelines.predict --input 'data/sample/**/*.wav' --model-dir runs/sample/job \\
        --output runs/sample/predictions

On Dataflow::

    python -m pipelines.predict --input 'gs://BUCKET/audio/**/*.wav' --model-dir gs://BUCKET/job \\
        --output gs://BUCKET/predictions/run1 --runner DataflowRunner --project PROJECT \\
        --region REGION --temp_location gs://BUCKET/tmp --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import audio, batch, claim, contract, errors, inputs, transforms

SIGNATURE = "examples"
PREDICTIONS = "predictions"
NAMESPACE = "predict"


def result_prefixes(output: str) -> dict[str, str]:
    """The prefix of each kind of shard a run writes under `output`, by kind."""
    return {PREDICTIONS: f"{output}/{PREDICTIONS}",
            contract.REJECTED_DIR: batch.rejected_prefix(output)}


class ToInferenceExample(beam.DoFn):
    """Path bytes -> serialized tf.Example (spectrogram and path); bad files rejected.

    The path travels inside the example rather than as a key: RunInference echoes each
    input example in its PredictionLog, so FormatPrediction reads it back from there.
    """

    def __init__(self):
        self._read = Metrics.counter(NAMESPACE, "files")
        self._rejected = Metrics.counter(NAMESPACE, "rejected")

    def process(self, raw: bytes):
        self._read.inc()
        path, shown = raw.decode("utf-8", "surrogateescape"), inputs.printable(raw)
        try:
            clip = audio.featurize(path)  # reads the first second only
        except audio.AudioError as error:
            reason = str(error)
        except (IOError, OSError) as error:
            reason = f"cannot read ({errors.first_line(error)})"
        else:
            yield contract.serialize_spectrogram(clip.spectrogram, shown)
            return
        self._rejected.inc()
        yield beam.pvalue.TaggedOutput(transforms.REJECTED, transforms.rejection(shown, reason))


class FormatPrediction(beam.DoFn):
    """PredictionLog -> one JSON line."""

    def __init__(self, labels: list[str]):
        self._labels = labels
        self._predicted = Metrics.counter(NAMESPACE, "predicted")

    def process(self, log):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        request = next(iter(log.predict_log.request.inputs.values())).string_val[0]
        path = tf.train.Example.FromString(request).features.feature[
            contract.PATH].bytes_list.value[0].decode()
        outputs = log.predict_log.response.outputs
        probabilities = tf.make_ndarray(outputs["probabilities"]).reshape(-1)
        best = int(probabilities.argmax())
        self._predicted.inc()
        yield json.dumps({
            "path": path, "label": self._labels[best], "probability": float(probabilities[best]),
            "probabilities": {label: float(p) for label, p in zip(self._labels, probabilities)},
        })


def build_pipeline(pipeline: beam.Pipeline, input_pattern: str, export_dir: str,
                   labels: list[str], output: str, num_shards: int = 0) -> None:
    """Adds the batch-prediction graph to `pipeline` (`num_shards` 0: the runner decides)."""
    from tfx_bsl.public.beam import RunInference  # pylint: disable=import-outside-toplevel
    from tfx_bsl.public.proto import model_spec_pb2  # pylint: disable=import-outside-toplevel
    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=export_dir, signature_name=[SIGNATURE]))
    examples = (pipeline
                | "List" >> transforms.MatchPatterns([input_pattern], as_bytes=True)
                | "Featurize" >> beam.ParDo(ToInferenceExample()).with_outputs(
                    transforms.REJECTED, main="examples"))
    (examples.examples
     | "RunInference" >> RunInference(spec)
     | "Format" >> beam.ParDo(FormatPrediction(labels))
     | "WritePredictions" >> batch.write_shards(f"{output}/{PREDICTIONS}", num_shards))
    (examples[transforms.REJECTED]
     | "WriteRejected" >> batch.write_shards(batch.rejected_prefix(output), num_shards))


def build_parser() -> argparse.ArgumentParser:
    parser = batch.batch_parser("python -m pipelines.predict", __doc__)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --output (only the "
                        "files named as this command names its shards are removed)")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="shards per output (default: the runner decides)")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if args.num_shards < 0:
        parser.error(f"--num-shards must be 0 or more, got {args.num_shards}")
    options = batch.pipeline_options(beam_args)
    export_dir, labels = batch.load_export(args.model_dir)
    listed = batch.count_inputs(args.input)
    output = args.output.rstrip("/")
    prefixes = result_prefixes(output)
    with claim.Claim(output, "python -m pipelines.predict"):
        batch.prepare_output(output, prefixes.values(), args.overwrite)
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, args.input, export_dir, labels, output, args.num_shards)
        result = batch.run_pipeline(pipeline, output, prefixes.values())
        files = batch.counter(result, NAMESPACE, "files")
        patterns = {kind: batch.shards_of(prefix) for kind, prefix in prefixes.items()}
        counts = {"files": listed if files is None else files,
                  "predicted": batch.count_lines(patterns[PREDICTIONS]),
                  "rejected": batch.count_lines(patterns[contract.REJECTED_DIR])}
    print(f"files read {counts['files']} = predicted {counts['predicted']} + rejected "
          f"{counts['rejected']}: {patterns[PREDICTIONS]}, {patterns[contract.REJECTED_DIR]}")
    if counts["predicted"] + counts["rejected"] != counts["files"]:
        raise errors.PartialFailure(
            f"{output}: {counts['predicted'] + counts['rejected']} lines written for "
            f"{counts['files']} files read; the run lost or repeated some")
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    errors.import_tensorflow_quietly()
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
