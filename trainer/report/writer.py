"""Writes a training run's metrics files and its report (figures and report.html)."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from pipelines import audio, contract
from trainer import data
from trainer.report import page

NUM_EXAMPLES_SHOWN = 9


def write_json(path: str, obj) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _examples(files: list[str], count: int, has_waveforms: bool) -> list[dict]:
    """The first `count` clips of the shards, with a waveform to draw."""
    batch = next(iter(data.make_dataset(files, count, False, waveform=has_waveforms,
                                        keep_features=True).take(1)))
    examples = []
    for i in range(int(batch[contract.LABEL].shape[0])):
        path = batch[contract.PATH][i].numpy().decode()
        waveform = (batch[contract.WAVEFORM][i].numpy() if has_waveforms
                    else _read_waveform(path))
        examples.append({"spectrogram": batch[contract.SPECTROGRAM][i].numpy(),
                         "waveform": waveform, "path": path,
                         "label": batch[contract.LABEL_NAME][i].numpy().decode()})
    return examples


def _read_waveform(path: str) -> np.ndarray:
    # Runs made with --no-waveforms do not store it; read the source clip if reachable.
    try:
        with tf.io.gfile.GFile(path, "rb") as handle:
            return audio.pad_or_trim(audio.decode_wav(handle.read()))
    except (tf.errors.OpError, audio.AudioError):
        return np.zeros(contract.CLIP_SAMPLES, np.float32)


def write_run_report(job_dir: str, export_dir: str, test_files: list[str], metrics: dict,
                     history: dict, labels: list[str], has_waveforms: bool) -> str:
    """Plots and report.html; the prediction chart runs the exported raw-audio signature."""
    examples = _examples(test_files, NUM_EXAMPLES_SHOWN, has_waveforms)
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    first = examples[0]
    outputs = serving(waveform=tf.constant(first["waveform"][None, :]))
    prediction = {"path": first["path"], "label": first["label"],
                  "probabilities": outputs["probabilities"][0].numpy().tolist()}
    return page.write_report(job_dir, metrics=metrics, history=history, labels=labels,
                               examples=examples, prediction=prediction)
