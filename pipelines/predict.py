"""Batch prediction: WAV files (local or gs://) -> sharded JSON Lines of predictions.

Each file is decoded and featurised by the same code as preprocessing, the exported
model runs through tfx-bsl's `RunInference` (loaded once per worker and shared by its
threads, inputs batched), and every prediction becomes one JSON line::

    {"path": ..., "label": "yes", "probability": 0.97, "probabilities": {"down": ..., ...}}

Files that cannot be used go to OUTPUT/rejected/ with the reason.

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
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import audio, contract, errors, transforms

EXPORT_DIR = "export"  # where trainer.task writes the SavedModel inside a job directory
SIGNATURE = "examples"
PREDICTIONS = "predictions"


def find_export(model_dir: str) -> str:
    """MODEL_DIR/export or MODEL_DIR itself, whichever holds the SavedModel."""
    base = model_dir.rstrip("/")
    for candidate in (f"{base}/{EXPORT_DIR}", base):
        if FileSystems.exists(f"{candidate}/saved_model.pb"):
            if not FileSystems.exists(f"{candidate}/{contract.LABELS_FILE}"):
                raise errors.UserError(f"{candidate}: {contract.LABELS_FILE} missing beside "
                                       "the SavedModel")
            return candidate
    raise errors.UserError(f"{model_dir}: no exported model (expected {EXPORT_DIR}/"
                           "saved_model.pb from python -m trainer.task)")


class ToInferenceExample(beam.DoFn):
    """Path -> serialized tf.Example (spectrogram and path); bad files rejected.

    The path travels inside the example rather than as a key: RunInference echoes each
    input example in its PredictionLog, so FormatPrediction reads it back from there.
    """

    def __init__(self):
        self._rejected = Metrics.counter("predict", "rejected")

    def process(self, path: str):
        try:
            clip = audio.featurize(transforms.read_bytes(path))
        except audio.AudioError as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED,
                                           transforms.rejection(path, str(error)))
            return
        except (IOError, OSError) as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(transforms.REJECTED, transforms.rejection(
                path, f"cannot read ({error})"))
            return
        yield contract.serialize_spectrogram(clip.spectrogram, path)


class FormatPrediction(beam.DoFn):
    """PredictionLog -> one JSON line."""

    def __init__(self, labels: list[str]):
        self._labels = labels
        self._predicted = Metrics.counter("predict", "predicted")

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
                   labels: list[str], output: str) -> None:
    """Adds the batch-prediction graph to `pipeline`."""
    from tfx_bsl.public.beam import RunInference  # pylint: disable=import-outside-toplevel
    from tfx_bsl.public.proto import model_spec_pb2  # pylint: disable=import-outside-toplevel
    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=export_dir, signature_name=[SIGNATURE]))
    examples = (pipeline
                | "List" >> transforms.MatchPatterns([input_pattern])
                | "Featurize" >> beam.ParDo(ToInferenceExample()).with_outputs(
                    transforms.REJECTED, main="examples"))
    (examples.examples
     | "RunInference" >> RunInference(spec)
     | "Format" >> beam.ParDo(FormatPrediction(labels))
     | "WritePredictions" >> beam.io.WriteToText(f"{output}/{PREDICTIONS}",
                                                 file_name_suffix=".jsonl"))
    (examples[transforms.REJECTED]
     | "WriteRejected" >> beam.io.WriteToText(
         f"{output}/{contract.REJECTED_DIR}/rejected", file_name_suffix=".jsonl"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.predict", description=__doc__.split("\n\n")[0],
        epilog="Any other flag is passed to Beam's PipelineOptions (--runner, --project, ...).")
    parser.add_argument("--input", required=True,
                        help="file pattern of WAV files, e.g. 'gs://bucket/audio/**/*.wav'")
    parser.add_argument("--model-dir", required=True,
                        help="training job directory (or its export/ SavedModel)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    return parser


def _counter(result, name: str) -> Optional[int]:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace("predict")
                                          .with_name(name))["counters"]
    except Exception:  # pylint: disable=broad-except  # some runners report no metrics
        return None
    return sum(counter.committed or counter.attempted or 0 for counter in counters)


def run(argv: Optional[list[str]] = None) -> dict:
    args, beam_args = build_parser().parse_known_args(argv)
    export_dir = find_export(args.model_dir)
    with FileSystems.open(f"{export_dir}/{contract.LABELS_FILE}") as handle:
        labels = contract.parse_labels(handle.read().decode("utf-8"))
    if not FileSystems.match([args.input])[0].metadata_list:
        raise errors.UserError(f"{args.input}: no files match")
    output = args.output.rstrip("/")
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(pipeline, args.input, export_dir, labels, output)
    result = pipeline.run()
    result.wait_until_finish()
    counts = {"predicted": _counter(result, "predicted"),
              "rejected": _counter(result, "rejected")}
    print(f"predicted {counts['predicted']}, rejected {counts['rejected']}: "
          f"{output}/{PREDICTIONS}-*.jsonl, {output}/{contract.REJECTED_DIR}/")
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    errors.import_tensorflow_quietly()
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
