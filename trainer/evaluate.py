"""Evaluates a trained model on one split of a preprocessing run.

    python -m trainer.evaluate --data-dir runs/sample/data --job-dir runs/sample/job --split test

Prints accuracy, loss and per-class precision/recall/F1, and writes JOB/eval_SPLIT.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from pipelines.errors import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import artifacts, calibrate, data, detection  # noqa: E402
from trainer.report import metrics as classification, writer  # noqa: E402


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
        raise UserError(f"{files[0]}: the {split} split is empty")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a preprocessing run")
    parser.add_argument("--job-dir", required=True, help="a training run (python -m trainer.task)")
    parser.add_argument("--split", choices=contract.SPLITS, default=contract.TEST)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--streams", type=int, default=0, metavar="N",
                        help="also detect keywords in N long recordings generated from the "
                             "split (recall, false accepts per hour, DET curve)")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    job_dir = args.job_dir.rstrip("/")
    model_labels = artifacts.read_model_labels(job_dir)
    data_labels = data.read_labels(args.data_dir)
    if model_labels != data_labels:
        raise UserError(f"{args.data_dir}: labels {data_labels} differ from the model's "
                        f"{model_labels} ({job_dir})")
    metadata = data.read_metadata(args.data_dir)
    if data.split_size(metadata, args.split) == 0:
        raise UserError(f"{args.data_dir}/{args.split}: empty split (no examples)")
    files = data.check_shards(args.data_dir, metadata, [args.split])[args.split]
    net = artifacts.load_keras_model(job_dir)
    dataset = data.make_dataset(files, args.batch_size, False)
    metrics = evaluate_split(net, dataset, files, data_labels, args.split)
    metrics["data_dir"] = args.data_dir
    if args.streams > 0:
        metrics["streaming"] = calibrate.evaluate_streams(
            job_dir, args.data_dir, args.split, args.streams)
        metrics["streaming"]["summary"] = detection.format_split(metrics["streaming"])
    writer.write_json(f"{job_dir}/eval_{args.split}.json", metrics)
    print(classification.format_metrics(metrics))
    if "streaming" in metrics:
        print(f"\n{metrics['streaming']['summary']}")
    print(f"\nwrote {job_dir}/eval_{args.split}.json")
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
