#!/usr/bin/env bash
# Batch prediction on Dataflow, launched from this machine (the project's virtualenv):
# every WAV matching INPUT -> OUTPUT/predictions-SSSSS-of-NNNNN.jsonl and OUTPUT/rejected/.
#
#   MODEL_DIR=gs://BUCKET/runs/RUN/vertex/model deploy/dataflow/run_predict.sh
#   INPUT='gs://BUCKET/new-audio/**/*.wav' PREDICTION_RUN=run2 MODEL_DIR=... \
#       deploy/dataflow/run_predict.sh
#
# MODEL_DIR is a training job directory (the trainer's --job-dir, on Vertex AI the
# AIP_MODEL_DIR of the job, i.e. BASE_OUTPUT_DIR/model) or its export/ folder.
# Extra arguments go to `python -m pipelines.predict`.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$DEPLOY/env.sh"

MODEL_DIR="${MODEL_DIR:?set MODEL_DIR to the training job directory (gs://...)}"
INPUT="${INPUT:-gs://${BUCKET}/speech/**/*.wav}"
PREDICTION_RUN="${PREDICTION_RUN:-$(date +%Y%m%d-%H%M%S)}"
OUTPUT="${OUTPUT:-gs://${BUCKET}/predictions/${PREDICTION_RUN}}"
MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-4}"   # RunInference keeps one model per worker
MAX_WORKERS="${MAX_WORKERS:-10}"
PYTHON="${PYTHON:-python}"

cd "$(dirname "$DEPLOY")"

dataflow_flags "kws-predict-${PREDICTION_RUN}"

"$PYTHON" -m pipelines.predict \
  --input "$INPUT" \
  --model-dir "$MODEL_DIR" \
  --output "$OUTPUT" \
  "${BEAM_FLAGS[@]}" "$@"
