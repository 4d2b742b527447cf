"""Submits a Vertex AI hyperparameter tuning job: trials of submit.py's training job, each
with other values of the recipe's learning rate and weight decay (or of any trainer.task
flag given with --param), compared on the validation accuracy the trainer reports::

    python deploy/vertex/tune.py --project PROJECT --region europe-west1 \\
        --image europe-west1-docker.pkg.dev/PROJECT/kws/trainer:TAG \\
        --data-dir gs://BUCKET/runs/RUN/data --base-output-dir gs://BUCKET/runs/RUN/tune-1 \\
        --model kws --max-trials 16 --parallel-trials 4 -- --epochs 60
    python deploy/vertex/tune.py ... --param learning_rate=0.001:0.02:log \\
        --param batch_size=32,64,128 --dry-run      # print the job, submit nothing

Each trial runs `python -m trainer.task --model MODEL --hypertune` plus the trial's
values as `--NAME=VALUE`; the trainer reports `val_accuracy` after every epoch through
cloudml-hypertune, and the study keeps each trial's last report (its final model).
Trial T writes to BASE_OUTPUT_DIR/T/model/. Every option of submit.py (machine,
accelerators, --replicas) applies to each trial.

The default search is around the recipe of --model: its learning rate from a quarter to
four times, on a log scale, and for AdamW recipes its weight decay likewise. A --param
of the same name replaces the default one: NAME=MIN:MAX[:log] (a range; whole numbers
make an integer range) or NAME=A,B,C (those values).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Optional

import submit

METRIC = "val_accuracy"  # trainer.distribute.TUNING_METRIC, reported by trainer.task
SPREAD = 4.0  # default ranges: the recipe's value divided and multiplied by this
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def build_parser() -> argparse.ArgumentParser:
    parser = submit.build_parser()
    parser.prog = "python deploy/vertex/tune.py"
    parser.description = __doc__.split("\n\n")[0]
    parser.set_defaults(display_name="kws-tune")
    parser.add_argument("--model", default=None,
                        help="architecture whose recipe centres the search (default: "
                             "trainer.task's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                        help="a trainer.task flag to search: NAME=MIN:MAX[:log] or "
                             "NAME=A,B,C (repeatable)")
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--parallel-trials", type=int, default=3)
    parser.add_argument("--max-failed-trials", type=int, default=0,
                        help="stop the study after this many failed trials (0: Vertex "
                             "AI's default)")
    parser.add_argument("--algorithm", default="ALGORITHM_UNSPECIFIED",
                        choices=["ALGORITHM_UNSPECIFIED", "GRID_SEARCH", "RANDOM_SEARCH"],
                        help="ALGORITHM_UNSPECIFIED is Vertex AI's Bayesian optimisation")
    return parser


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if re.fullmatch(r"[+-]?\d+", text.strip()) else value


def parse_param(text: str) -> dict:
    """One --param as a StudySpec ParameterSpec (REST JSON); ValueError if malformed."""
    name, _, spec = text.partition("=")
    if not _NAME.match(name) or not spec:
        raise ValueError(f"--param {text}: expected NAME=MIN:MAX[:log] or NAME=A,B,C with a "
                         "trainer.task flag name in lower case and underscores")
    if "," in spec:
        values = sorted(float(value) for value in spec.split(","))
        return {"parameterId": name, "discreteValueSpec": {"values": values}}
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "linear")):
        raise ValueError(f"--param {text}: a range is MIN:MAX or MIN:MAX:log")
    low, high = _number(parts[0]), _number(parts[1])
    if not low < high:
        raise ValueError(f"--param {text}: MIN must be below MAX")
    scale = "UNIT_LOG_SCALE" if parts[2:] == ["log"] else "UNIT_LINEAR_SCALE"
    if scale == "UNIT_LOG_SCALE" and low <= 0:
        raise ValueError(f"--param {text}: a log scale needs MIN > 0")
    kind = ("integerValueSpec" if isinstance(low, int) and isinstance(high, int)
            else "doubleValueSpec")
    return {"parameterId": name, kind: {"minValue": low, "maxValue": high},
            "scaleType": scale}


def recipe_params(model: Optional[str]) -> tuple[str, list[dict]]:
    """The model's name and the default search around its recipe."""
    from trainer import models  # TensorFlow is loaded only to read the recipe
    name = model or models.DEFAULT_MODEL
    recipe = models.get_recipe(name)
    centres = {"learning_rate": recipe.learning_rate}
    if recipe.optimizer == "adamw" and recipe.weight_decay > 0:
        centres["weight_decay"] = recipe.weight_decay
    return name, [{"parameterId": key,
                   "doubleValueSpec": {"minValue": value / SPREAD, "maxValue": value * SPREAD},
                   "scaleType": "UNIT_LOG_SCALE"} for key, value in centres.items()]


def check_flags(names: list[str]) -> None:
    """ValueError unless every name is a flag of trainer.task (in underscore form)."""
    from trainer import task
    flags = task.build_parser()._option_string_actions  # pylint: disable=protected-access
    unknown = [name for name in names if f"--{name.replace('_', '-')}" not in flags]
    if unknown:
        raise ValueError(f"--param {', '.join(unknown)}: not a flag of trainer.task")


def tuning_spec(args: argparse.Namespace, model: str, defaults: list[dict]) -> dict:
    """The HyperparameterTuningJob (REST JSON) that `args` describe."""
    params = {spec["parameterId"]: spec for spec in defaults}
    for text in args.param:
        spec = parse_param(text)
        params[spec["parameterId"]] = spec
    check_flags(list(params))
    args.trainer_args = ["--model", model, "--hypertune"] + list(args.trainer_args)
    trial = submit.job_spec(args)
    if args.service_account:
        trial["serviceAccount"] = args.service_account
    job = {
        "displayName": args.display_name,
        "studySpec": {
            "metrics": [{"metricId": METRIC, "goal": "MAXIMIZE"}],
            "parameters": list(params.values()),
            "algorithm": args.algorithm,
            "measurementSelectionType": "LAST_MEASUREMENT",
        },
        "maxTrialCount": args.max_trials,
        "parallelTrialCount": args.parallel_trials,
        "trialJobSpec": trial,
    }
    if args.max_failed_trials:
        job["maxFailedTrialCount"] = args.max_failed_trials
    return job


def submit_tuning(args: argparse.Namespace, job: dict) -> None:
    """Creates the tuning job from exactly the JSON that --dry-run prints."""
    from google.cloud import aiplatform_v1
    client = aiplatform_v1.JobServiceClient(
        client_options={"api_endpoint": f"{args.region}-aiplatform.googleapis.com"})
    created = client.create_hyperparameter_tuning_job(
        parent=f"projects/{args.project}/locations/{args.region}",
        hyperparameter_tuning_job=aiplatform_v1.HyperparameterTuningJob.from_json(
            json.dumps(job)))
    print(f"{created.name}: trials in {args.base_output_dir.rstrip('/')}/TRIAL/model/")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    submit.check_args(parser, args)
    if not 1 <= args.parallel_trials <= args.max_trials:
        parser.error("--parallel-trials must be between 1 and --max-trials")
    try:
        model, defaults = recipe_params(args.model)
        job = tuning_spec(args, model, defaults)
    except ValueError as error:
        parser.error(str(error))
    if args.dry_run:
        print(json.dumps(job, indent=2))
        return 0
    submit_tuning(args, job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
