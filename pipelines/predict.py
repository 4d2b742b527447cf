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
import re
import sys
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import audio, contract, errors, transforms

SIGNATURE = "examples"
PREDICTIONS = "predictions"
REJECTED_PREFIX = "rejected"
SHARDS_SUFFIX = ".jsonl"
# The names WriteToText gives its shards with the default template: PREFIX-00000-of-00003.
_SHARD_NAME = re.compile(r"-\d{5,}-of-\d{5,}" + re.escape(SHARDS_SUFFIX) + "$")


def result_patterns(output: str) -> dict[str, str]:
    """Glob of each kind of file a run writes under `output`, by kind."""
    return {PREDICTIONS: f"{output}/{PREDICTIONS}-*-of-*{SHARDS_SUFFIX}",
            REJECTED_PREFIX: f"{output}/{contract.REJECTED_DIR}/{REJECTED_PREFIX}-*-of-*"
                             f"{SHARDS_SUFFIX}"}


def earlier_results(output: str) -> list[str]:
    """The files under `output` named as this command names its shards, sorted."""
    found = []
    for pattern in result_patterns(output).values():
        for match in FileSystems.match([pattern])[0].metadata_list:
            if _SHARD_NAME.search(match.path):
                found.append(match.path)
    return sorted(found)


def path_bytes(path: str) -> bytes:
    """A path as bytes: local names that are not UTF-8 arrive with surrogate escapes,
    which Beam's str coder cannot encode; bytes travel between steps unchanged."""
    return path.encode("utf-8", "surrogateescape")


def shown_path(raw: bytes) -> str:
    """The path as written in the output: valid UTF-8, undecodable bytes as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


@beam.ptransform_fn
def ListFiles(pipeline, pattern: str):  # pylint: disable=invalid-name
    """Every file matching `pattern`, as the bytes of its path, spread out for reading."""
    return (pipeline
            | "Pattern" >> beam.Create([pattern])
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: path_bytes(metadata.path))
            | "Spread" >> beam.Reshuffle())


class ToInferenceExample(beam.DoFn):
    """Path bytes -> serialized tf.Example (spectrogram and path); bad files rejected.

    The path travels inside the example rather than as a key: RunInference echoes each
    input example in its PredictionLog, so FormatPrediction reads it back from there.
    """

    def __init__(self):
        self._read = Metrics.counter("predict", "files")
        self._rejected = Metrics.counter("predict", "rejected")

    def process(self, raw: bytes):
        self._read.inc()
        path, shown = raw.decode("utf-8", "surrogateescape"), shown_path(raw)
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
                   labels: list[str], output: str, num_shards: int = 0) -> None:
    """Adds the batch-prediction graph to `pipeline` (`num_shards` 0: the runner decides)."""
    from tfx_bsl.public.beam import RunInference  # pylint: disable=import-outside-toplevel
    from tfx_bsl.public.proto import model_spec_pb2  # pylint: disable=import-outside-toplevel
    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=export_dir, signature_name=[SIGNATURE]))
    examples = (pipeline
                | "List" >> ListFiles(input_pattern)
                | "Featurize" >> beam.ParDo(ToInferenceExample()).with_outputs(
                    transforms.REJECTED, main="examples"))
    (examples.examples
     | "RunInference" >> RunInference(spec)
     | "Format" >> beam.ParDo(FormatPrediction(labels))
     | "WritePredictions" >> beam.io.WriteToText(
         f"{output}/{PREDICTIONS}", file_name_suffix=SHARDS_SUFFIX, num_shards=num_shards))
    (examples[transforms.REJECTED]
     | "WriteRejected" >> beam.io.WriteToText(
         f"{output}/{contract.REJECTED_DIR}/{REJECTED_PREFIX}", file_name_suffix=SHARDS_SUFFIX,
         num_shards=num_shards))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.predict", description=__doc__.split("\n\n")[0],
        epilog="Any other flag is passed to Beam's PipelineOptions (--runner, --project, ...).")
    parser.add_argument("--input", required=True,
                        help="file pattern of WAV files, e.g. 'gs://bucket/audio/**/*.wav'")
    parser.add_argument("--model-dir", required=True,
                        help="training job directory (or its export/ SavedModel)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --output (only the "
                        "files named as this command names its shards are removed)")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="shards per output (default: the runner decides)")
    return parser


def _counter(result, name: str) -> Optional[int]:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace("predict")
                                          .with_name(name))["counters"]
    except Exception:  # pylint: disable=broad-except  # some runners report no metrics
        return None
    return sum(counter.committed or counter.attempted or 0 for counter in counters)


def count_lines(pattern: str) -> int:
    """Lines in the files matching `pattern` (the written shards, read back)."""
    total = 0
    for match in FileSystems.match([pattern])[0].metadata_list:
        if _SHARD_NAME.search(match.path):
            with FileSystems.open(match.path) as handle:
                total += sum(1 for line in handle if line.strip())
    return total


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuses an output holding earlier results; with `overwrite`, removes just those."""
    earlier = earlier_results(output)
    if not earlier:
        return
    if not overwrite:
        names = ", ".join(path[len(output) + 1:] for path in earlier[:3])
        more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
        raise errors.UserError(f"{output}: holds the results of an earlier run ({names}{more}); "
                               "pass --overwrite to replace them, or choose another --output")
    FileSystems.delete(earlier)


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if args.num_shards < 0:
        parser.error(f"--num-shards must be 0 or more, got {args.num_shards}")
    export_dir = contract.find_export(args.model_dir)
    with FileSystems.open(f"{export_dir}/{contract.LABELS_FILE}") as handle:
        labels = contract.parse_labels(handle.read().decode("utf-8"))
    listed = len(FileSystems.match([args.input])[0].metadata_list)
    if not listed:
        raise errors.UserError(f"{args.input}: no files match")
    output = args.output.rstrip("/")
    prepare_output(output, args.overwrite)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(pipeline, args.input, export_dir, labels, output, args.num_shards)
    result = pipeline.run()
    result.wait_until_finish()
    files = _counter(result, "files")
    patterns = result_patterns(output)
    counts = {"files": listed if files is None else files,
              "predicted": count_lines(patterns[PREDICTIONS]),
              "rejected": count_lines(patterns[REJECTED_PREFIX])}
    print(f"files read {counts['files']} = predicted {counts['predicted']} + rejected "
          f"{counts['rejected']}: {patterns[PREDICTIONS]}, {patterns[REJECTED_PREFIX]}")
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
