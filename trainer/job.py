"""Writes a finished job: what every command that trains a model leaves in its job folder.

    JOB/model.keras              the trained Keras model
    JOB/export/                  SavedModel, LiteRT files, labels.txt, detection.json
    JOB/labels.txt  JOB/metrics.json  JOB/history.json  JOB/report.html (+ figures)

`trainer.task` and `trainer.mine` train in their own ways and then call `write_job`;
`trainer.enroll`, measured on held-back utterances rather than a test split, calls
`export_job` for the same files. So a job is the same whichever made it:
`trainer.detect`, `trainer.predict`, `pipelines.detect` and the live page run any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from pipelines import contract
from trainer import calibrate, data, detection, evaluate, export
from trainer.litert import export as litert_export
from trainer.report import metrics as classification, writer


@dataclasses.dataclass
class Finished:
    """A trained model and what it was trained on, ready to be written as a job.

    Attributes:
      net: the trained Keras model (logits out).
      serving: the model to export (`Recipe.serving_model(net)`).
      labels: its labels, in output order.
      data_dir: the preprocessing run (test split, calibration clips, recordings).
      settings: what made it, for metrics.json ("settings").
      history: per-epoch metrics (history.json).
      seed: of the LiteRT calibration sample.
      extra_metrics: more top-level entries for metrics.json.
    """
    net: keras.Model
    serving: keras.Model
    labels: list[str]
    data_dir: str
    settings: dict
    history: dict
    seed: int = 42
    extra_metrics: Optional[dict] = None


def export_job(job_dir: str, net: keras.Model, serving: keras.Model, labels: list[str],
               data_dir: str, seed: int) -> str:
    """JOB/model.keras, the SavedModel and LiteRT files (int8 calibrated on `data_dir`'s
    training clips) in JOB/export, and JOB/labels.txt; returns the export folder."""
    job_dir = job_dir.rstrip("/")
    tf.io.gfile.makedirs(job_dir)
    net.save(f"{job_dir}/model.keras")
    export_dir = export.export_model(serving, labels, f"{job_dir}/{contract.EXPORT_DIR}")
    litert_export.export_run(serving, labels, export_dir, data_dir, seed=seed)
    with tf.io.gfile.GFile(f"{job_dir}/{contract.LABELS_FILE}", "w") as handle:
        handle.write(contract.format_labels(labels))
    return export_dir


def write_job(job_dir: str, done: Finished, report: bool = True,
              calibration_minutes: float = calibrate.CALIBRATION_MINUTES) -> dict:
    """Exports, evaluates on test, chooses the detection operating point (a model with
    `_unknown_`), and writes metrics, history and report; returns the metrics."""
    job_dir = job_dir.rstrip("/")
    export_dir = export_job(job_dir, done.net, done.serving, done.labels, done.data_dir,
                            done.seed)
    metadata = data.read_metadata(done.data_dir)
    test_files = data.shard_files(done.data_dir, contract.TEST)
    test_ds = data.make_dataset(test_files, 128, False,
                                num_examples=data.split_size(metadata, contract.TEST))
    metrics = evaluate.evaluate_split(done.net, test_ds, test_files, done.labels)
    metrics.update({
        "model": done.settings.get("model"), "parameters": int(done.net.count_params()),
        "counts": {split: data.split_size(metadata, split) for split in contract.SPLITS},
        "settings": done.settings, "export_dir": export_dir, **(done.extra_metrics or {})})
    if calibrate.wanted_after_training(done.labels, metadata.waveforms):
        metrics["streaming"] = calibrate.evaluate_after_training(job_dir, done.data_dir,
                                                                 calibration_minutes)
        print(detection.format_streaming(metrics["streaming"]))
    writer.write_json(f"{job_dir}/metrics.json", metrics)
    writer.write_json(f"{job_dir}/history.json", done.history)
    print(classification.format_metrics(metrics))
    if report:
        page = writer.write_run_report(job_dir, export_dir, test_files, metrics, done.history,
                                       done.labels, metadata.waveforms)
        print(f"\nreport: {page}")
    print(f"model: {job_dir}/model.keras  export: {export_dir}")
    return metrics
