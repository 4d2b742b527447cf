"""Writes a job's LiteRT files beside its SavedModel, and converts an older job.

`write_models` writes every file of `KINDS` into JOB/export/ (see
`trainer.litert.runtime` for what each takes and returns); the int8 ones are calibrated
on training clips, so a run preprocessed with --no-waveforms gets the float ones only.
Training calls `export_run`; a job trained before these files existed gets them with::

    python -m trainer.litert --job-dir JOB --data-dir OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import artifacts, data, models  # noqa: E402
from trainer.litert import convert, runtime, stream  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Kind:
    """One LiteRT file of a job: its name and how it is made from the serving model."""
    file: str
    make: Callable[[keras.Model, Optional[np.ndarray]], bytes]
    calibrated: bool  # needs representative clips (int8)


KINDS = {
    "float": Kind(runtime.FLOAT_FILE, lambda model, _: convert.convert_float(model), False),
    "int8": Kind(runtime.INT8_FILE, convert.convert_int8, True),
    "stream_float": Kind(runtime.STREAM_FLOAT_FILE,
                         lambda model, _: stream.convert_stream_float(model), False),
    "stream_int8": Kind(runtime.STREAM_INT8_FILE, stream.convert_stream_int8, True),
}


def write_models(model: keras.Model, labels: list[str], export_dir: str,
                 representative_clips: Optional[np.ndarray],
                 kinds: tuple[str, ...] = tuple(KINDS)) -> dict[str, str]:
    """Writes the LiteRT files of the serving `model` into `export_dir`.

    Args:
      model: the serving model (e.g. the recipe's `serving_model`), |STFT| in, logits out.
      labels: its labels, in output order (labels.txt is written beside the models if
        the SavedModel export has not written it).
      export_dir: local or gs:// folder, usually JOB/export.
      representative_clips: float32 [n, 16000] training clips (see
        `convert.CALIBRATION_CLIPS`); None writes the float files only.
      kinds: which of `KINDS` to write.

    Returns:
      {kind: path} of the files written.
    """
    # A Sequential model reloaded or resumed may have no symbolic output: ask for the shape.
    outputs = int(model.compute_output_shape((1,) + contract.SPECTROGRAM_SHAPE)[-1])
    if outputs != len(labels):
        raise ValueError(f"the model has {outputs} outputs but there are {len(labels)} labels")
    export_dir = export_dir.rstrip("/")
    tf.io.gfile.makedirs(export_dir)
    paths = {}
    for name in kinds:
        kind = KINDS[name]
        if kind.calibrated and representative_clips is None:
            continue
        paths[name] = f"{export_dir}/{kind.file}"
        content = kind.make(model, representative_clips)
        with tf.io.gfile.GFile(paths[name], "wb") as handle:
            handle.write(content)
    labels_path = f"{export_dir}/{contract.LABELS_FILE}"
    if not tf.io.gfile.exists(labels_path):
        with tf.io.gfile.GFile(labels_path, "w") as handle:
            handle.write(contract.format_labels(labels))
    return paths


def export_run(model: keras.Model, labels: list[str], export_dir: str, data_dir: str,
               seed: int = 42, count: int = convert.CALIBRATION_CLIPS) -> dict[str, str]:
    """The LiteRT files of a training run, int8 calibrated on its training clips.

    A run preprocessed with --no-waveforms has no clips to calibrate on: it gets the
    float files and a note.
    """
    clips = None
    if data.read_metadata(data_dir).get("waveforms", False):
        clips = representative_clips(data_dir, count, seed)
    else:
        print(f"note: {data_dir} stores no waveforms (--no-waveforms), so there are no "
              f"clips to calibrate the int8 models on; writing the float ones only")
    return write_models(model, labels, export_dir, clips)


def representative_clips(data_dir: str, count: int = convert.CALIBRATION_CLIPS,
                         seed: int = 42) -> np.ndarray:
    """`count` training clips of a preprocessing run, drawn across its shards and labels."""
    files = data.shard_files(data_dir, contract.TRAIN)
    dataset = data.make_dataset(files, 64, True, seed=seed, waveform=True,
                                shuffle_buffer=4 * count)
    return data.guard_corruption(files, lambda: convert.representative_sample(dataset, count))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.litert",
        description=f"Writes a training job's LiteRT files ({', '.join(runtime.FILES)}) "
                    "into its export/ folder.")
    parser.add_argument("--job-dir", required=True, help="a training job (model.keras, export/)")
    parser.add_argument("--data-dir", required=True,
                        help="the preprocessing run it was trained on (calibration clips)")
    parser.add_argument("--clips", type=int, default=convert.CALIBRATION_CLIPS,
                        help=f"training clips to calibrate the int8 models on "
                             f"(default {convert.CALIBRATION_CLIPS})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace LiteRT files the job already has")
    return parser


def run(argv: Optional[list[str]] = None) -> dict[str, str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    job_dir = args.job_dir.rstrip("/")
    export_dir = contract.find_export(job_dir)
    existing = [name for name in runtime.FILES if tf.io.gfile.exists(f"{export_dir}/{name}")]
    if existing and not args.overwrite:
        raise UserError(f"{export_dir}: already holds {', '.join(existing)} (use --overwrite "
                        "to replace)")
    model_name = artifacts.job_model_name(job_dir)
    net = artifacts.load_keras_model(job_dir)
    labels = artifacts.read_model_labels(job_dir)
    paths = export_run(models.get_recipe(model_name).serving_model(net), labels, export_dir,
                       args.data_dir, count=args.clips)
    for kind, path in paths.items():
        print(f"{kind:<13}{path}")
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
