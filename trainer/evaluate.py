"""Evaluates a trained model on one split of a preprocessing run.

    python -m trainer.evaluate --data-dir runs/sample/data --job-dir runs/sample/job --split test

Prints accuracy, loss and per-class precision/recall/F1, and writes JOB/eval_SPLIT.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import artifacts, data, evaluation  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a preprocessing run")
    parser.add_argument("--job-dir", required=True, help="a training run (python -m trainer.task)")
    parser.add_argument("--split", choices=contract.SPLITS, default=contract.TEST)
    parser.add_argument("--batch-size", type=int, default=128)
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
    files = data.shard_files(args.data_dir, args.split)
    net = artifacts.load_keras_model(job_dir)
    dataset = data.make_dataset(files, args.batch_size, False)
    metrics = evaluation.evaluate_split(net, dataset, files, data_labels, args.split)
    metrics["data_dir"] = args.data_dir
    evaluation.write_json(f"{job_dir}/eval_{args.split}.json", metrics)
    print(evaluation.format_metrics(metrics))
    print(f"\nwrote {job_dir}/eval_{args.split}.json")
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
