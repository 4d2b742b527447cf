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

dataflow_flags "kws-preprocess-${RUN}"

"$PYTHON" -m pipelines.preprocess \
  --data-dir "$DATA_DIR" \
  --output-dir "$OUTPUT_DIR" \
  "${BEAM_FLAGS[@]}" "$@"
