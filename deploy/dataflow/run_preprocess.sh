#!/usr/bin/env bash
# Preprocessing on Dataflow, launched from this machine (the project's virtualenv):
# gs://BUCKET/speech/<label>/*.wav -> gs://BUCKET/runs/RUN/data/{train,val,test}/ ...
#
#   deploy/dataflow/run_preprocess.sh
#   DATA_DIR=gs://other/speech RUN=v2 deploy/dataflow/run_preprocess.sh --labels yes,no
#   WORKER_IMAGE= deploy/dataflow/run_preprocess.sh    # stock Beam image + --setup_file
#
# Extra arguments go to `python -m pipelines.preprocess` (its flags and Beam's). The
# command waits for the job, then prints the per-split counts from metadata.json.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$DEPLOY/env.sh"

RUN="${RUN:-$(date +%Y%m%d-%H%M%S)}"
DATA_DIR="${DATA_DIR:-gs://${BUCKET}/speech}"
OUTPUT_DIR="${OUTPUT_DIR:-gs://${BUCKET}/runs/${RUN}/data}"
MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-4}"
MAX_WORKERS="${MAX_WORKERS:-10}"
PYTHON="${PYTHON:-python}"   # the interpreter of the project's virtualenv

# --setup_file ./setup.py is resolved from the repository root.
cd "$(dirname "$DEPLOY")"

BEAM_FLAGS=(
  --runner DataflowRunner
  --project "$PROJECT"
  --region "$REGION"
  --job_name "kws-preprocess-${RUN}"
  --temp_location "gs://${BUCKET}/tmp"
  --staging_location "gs://${BUCKET}/staging"
  --machine_type "$MACHINE_TYPE"
  --max_num_workers "$MAX_WORKERS"
  --setup_file ./setup.py
)
# Workers start in seconds from the image of deploy/dataflow/Dockerfile; without it they
# install the package's dependencies (TensorFlow included) from setup.py at start-up.
if [[ -n "${WORKER_IMAGE}" ]]; then
  BEAM_FLAGS+=(--sdk_container_image "$WORKER_IMAGE" --sdk_location container)
fi
if [[ -n "$SERVICE_ACCOUNT" ]]; then
  BEAM_FLAGS+=(--service_account_email "$SERVICE_ACCOUNT")
fi

"$PYTHON" -m pipelines.preprocess \
  --data-dir "$DATA_DIR" \
  --output-dir "$OUTPUT_DIR" \
  "${BEAM_FLAGS[@]}" "$@"
