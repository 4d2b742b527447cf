"""Submits the Vertex AI training job with the google-cloud-aiplatform SDK (as submit.sh does
with gcloud), from the same spec, deploy/vertex/job.yaml::

    python deploy/vertex/submit.py --project PROJECT --region europe-west1 \\
        --image europe-west1-docker.pkg.dev/PROJECT/kws/trainer:TAG \\
        --data-dir gs://BUCKET/runs/RUN/data --base-output-dir gs://BUCKET/runs/RUN/train-1 \\
        -- --epochs 30
    python deploy/vertex/submit.py ... --dry-run    # print the worker pools, submit nothing
    python deploy/vertex/submit.py ... --replicas 3 \\
        --accelerator-type NVIDIA_TESLA_T4 --accelerator-count 2 --image .../trainer-gpu:TAG

Arguments after `--` are passed to `python -m trainer.task`. The trainer writes to
BASE_OUTPUT_DIR/model/ (AIP_MODEL_DIR).

With --replicas N the job has two worker pools: the chief, and N - 1 workers on the same
machine type with the same accelerators. Vertex AI gives each replica a TF_CONFIG that
names them all; trainer.task then trains with MultiWorkerMirroredStrategy (the recipe's
batch per replica; see trainer/distribute.py), and only the chief writes the model.
A GPU needs the image built by `deploy/build_image.sh trainer-gpu`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import string
import sys
from pathlib import Path
from typing import Any, Optional

SPEC = Path(__file__).resolve().parent / "job.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python deploy/vertex/submit.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--image", required=True, help="the trainer image (deploy/vertex/)")
    parser.add_argument("--data-dir", required=True, help="a preprocessing run (gs:// or /gcs/)")
    parser.add_argument("--base-output-dir", required=True,
                        help="gs:// folder; the model goes to its model/ sub-folder")
    parser.add_argument("--machine-type", default="n1-standard-8")
    parser.add_argument("--accelerator-type", default="ACCELERATOR_TYPE_UNSPECIFIED")
    parser.add_argument("--accelerator-count", type=int, default=0,
                        help="accelerators per replica")
    parser.add_argument("--replicas", type=int, default=1,
                        help="machines training together: the chief and N - 1 workers "
                             "(a second worker pool)")
    parser.add_argument("--display-name", default="kws-train")
    parser.add_argument("--service-account", default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the worker pool specs as JSON and stop")
    parser.add_argument("trainer_args", nargs="*", help="after --: flags of trainer.task")
    return parser


def snake_case(value: Any) -> Any:
    """job.yaml's REST (camelCase) keys as the SDK's proto field names."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): snake_case(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [snake_case(item) for item in value]
    return value


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with one usage line (code 2) for a count Vertex AI would refuse."""
    if args.replicas < 1:
        parser.error(f"--replicas {args.replicas}: must be at least 1")
    if args.accelerator_count < 0:
        parser.error(f"--accelerator-count {args.accelerator_count}: must be 0 or more")
    if args.accelerator_count and args.accelerator_type == "ACCELERATOR_TYPE_UNSPECIFIED":
        parser.error("--accelerator-count needs --accelerator-type (e.g. NVIDIA_TESLA_T4)")


def job_spec(args: argparse.Namespace) -> dict:
    """job.yaml with the values of `args` filled in, as submit.sh renders it."""
    import yaml
    text = string.Template(SPEC.read_text()).substitute(
        MACHINE_TYPE=args.machine_type, ACCELERATOR_TYPE=args.accelerator_type,
        ACCELERATOR_COUNT=args.accelerator_count, TRAINER_IMAGE=args.image,
        DATA_DIR=args.data_dir, BASE_OUTPUT_DIR=args.base_output_dir)
    spec = yaml.safe_load(text)
    for pool in spec["workerPoolSpecs"]:
        if args.accelerator_count == 0:
            for key in ("acceleratorType", "acceleratorCount"):
                pool["machineSpec"].pop(key, None)
        pool["containerSpec"]["args"] += args.trainer_args
    if args.replicas > 1:
        workers = copy.deepcopy(spec["workerPoolSpecs"][0])
        workers["replicaCount"] = args.replicas - 1
        spec["workerPoolSpecs"].append(workers)
    return spec


def submit(args: argparse.Namespace, spec: dict) -> None:
    """Creates the custom job and returns once Vertex AI has accepted it."""
    from google.cloud import aiplatform
    aiplatform.init(project=args.project, location=args.region)
    job = aiplatform.CustomJob(
        display_name=args.display_name,
        worker_pool_specs=snake_case(spec["workerPoolSpecs"]),
        base_output_dir=spec["baseOutputDirectory"]["outputUriPrefix"])
    job.submit(service_account=args.service_account)
    print(f"{job.resource_name}: model in {args.base_output_dir.rstrip('/')}/model/")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    spec = job_spec(args)
    if args.dry_run:
        print(json.dumps(snake_case(spec), indent=2))
        return 0
    submit(args, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
