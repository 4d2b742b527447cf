"""Loading what a training run left in its job directory, with clear errors."""

from __future__ import annotations

import json

import keras
import tensorflow as tf

from pipelines import contract
from pipelines.errors import UserError, first_line
from trainer import models  # noqa: F401  (registers the custom layers model.keras uses)


def read_model_labels(job_dir: str) -> list[str]:
    for path in (f"{job_dir}/{contract.LABELS_FILE}",
                 f"{job_dir}/{contract.EXPORT_DIR}/{contract.LABELS_FILE}"):
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "r") as handle:
                return contract.parse_labels(handle.read())
    raise UserError(f"{job_dir}: not a training job directory ({contract.LABELS_FILE} "
                    "missing; train with python -m trainer.task first)")


def load_keras_model(job_dir: str) -> keras.Model:
    path = f"{job_dir.rstrip('/')}/model.keras"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{job_dir}: not a training job directory (model.keras missing)")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # pylint: disable=broad-except  # keras raises many kinds
        raise UserError(f"{path}: cannot load the model ({first_line(error)})") from None


def read_job_metrics(job_dir: str) -> dict:
    """A finished job's metrics.json (UserError when the job has none)."""
    path = f"{job_dir.rstrip('/')}/metrics.json"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{job_dir}: not a finished training job (metrics.json missing)")
    with tf.io.gfile.GFile(path, "r") as handle:
        try:
            return json.loads(handle.read())
        except ValueError as error:
            raise UserError(f"{path}: not JSON ({error})") from None


def job_model_name(job_dir: str) -> str:
    """The architecture a job trained, from its metrics.json."""
    name = read_job_metrics(job_dir).get("model")
    if name not in models.names():
        raise UserError(f"{job_dir}/metrics.json: unknown model {name!r}")
    return name
