"""Evaluation of a model on a split, and the artifacts a run writes beside the model."""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from pipelines import audio, contract
from trainer import data, metrics as classification, report

NUM_EXAMPLES_SHOWN = 9


def evaluate_split(net: keras.Model, dataset: tf.data.Dataset, files: list[str],
                   labels: list[str], split: str = contract.TEST) -> dict:
    """Accuracy, loss (cross-entropy on logits), per-class scores and confusion matrix.

    Streams `dataset` once; only labels and predictions are kept.
    """
    predict = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    y_true, y_pred, losses = [], [], []

    def loop():
        for spectrogram, label in dataset:
            logits = predict(spectrogram)
            losses.append(keras.losses.sparse_categorical_crossentropy(
                label, logits, from_logits=True).numpy())
            y_true.append(label.numpy())
            y_pred.append(tf.argmax(logits, axis=-1).numpy())

    data.guard_corruption(files, loop)
    if not y_true:
        raise data.UserError(f"{files[0]}: the {split} split is empty")
    y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
    scores = classification.classification_metrics(y_true, y_pred, labels)
    return {
        f"{split}_accuracy": float(scores["accuracy"]),
        f"{split}_loss": float(np.concatenate(losses).mean()),
        f"{split}_examples": int(y_true.shape[0]),
        "split": split,
        "labels": labels,
        "per_class": scores["per_class"],
        "macro_f1": scores["macro_f1"],
        "confusion_matrix": scores["confusion_matrix"],
    }


def format_metrics(metrics: dict) -> str:
    """A console table: the headline figures and per-class precision/recall/F1."""
    split = metrics.get("split", contract.TEST)
    lines = [f"{split} accuracy {metrics[f'{split}_accuracy']:.4f}  "
             f"loss {metrics[f'{split}_loss']:.4f}  "
             f"({metrics[f'{split}_examples']} examples)"]
    width = max(len(label) for label in metrics["per_class"]) + 2
    lines.append(f"{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for label, scores in metrics["per_class"].items():
        lines.append(f"{label:<{width}}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
                     f"{scores['f1']:>10.3f}{scores['support']:>9d}")
    return "\n".join(lines)


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
    return report.write_report(job_dir, metrics=metrics, history=history, labels=labels,
                               examples=examples, prediction=prediction)
