#!/usr/bin/env bash
# Trains on Vertex AI: a custom job running the image of deploy/vertex/Dockerfile on a
# preprocessing run, with the spec of job.yaml.
#
#   RUN=20260101-120000 deploy/vertex/submit.sh                  # gs://BUCKET/runs/RUN/data
#   RUN=... deploy/vertex/submit.sh --epochs 30 --model tutorial  # extra trainer.task flags
#   RUN=... ACCELERATOR_TYPE=NVIDIA_TESLA_T4 ACCELERATOR_COUNT=1 MACHINE_TYPE=n1-standard-8 \
#       deploy/vertex/submit.sh      # a GPU: runs TRAINER_GPU_IMAGE (build_image.sh trainer-gpu)
#   RUN=... REPLICAS=3 ACCELERATOR_TYPE=NVIDIA_TESLA_T4 ACCELERATOR_COUNT=2 \
#       deploy/vertex/submit.sh      # 3 machines of 2 GPUs: the chief and a pool of 2 workers
#   DRY_RUN=1 RUN=... deploy/vertex/submit.sh                     # print the spec, submit nothing
#
# The model, metrics and report land in BASE_OUTPUT_DIR/model/ (AIP_MODEL_DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../env.sh"

if [[ -z "${DATA_DIR:-}" ]]; then
  RUN="${RUN:?set RUN (the preprocessing run gs://BUCKET/runs/RUN/data) or DATA_DIR}"
  DATA_DIR="gs://${BUCKET}/runs/${RUN}/data"
fi
RUN="${RUN:-$(basename "$(dirname "$DATA_DIR")")}"
TRAIN_RUN="${TRAIN_RUN:-$(date +%Y%m%d-%H%M%S)}"
BASE_OUTPUT_DIR="${BASE_OUTPUT_DIR:-gs://${BUCKET}/runs/${RUN}/train-${TRAIN_RUN}}"
MACHINE_TYPE="${MACHINE_TYPE:-n1-standard-8}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-ACCELERATOR_TYPE_UNSPECIFIED}"
ACCELERATOR_COUNT="${ACCELERATOR_COUNT:-0}"   # per replica
REPLICAS="${REPLICAS:-1}"   # machines training together: the chief and REPLICAS - 1 workers
if ! [[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: REPLICAS=$REPLICAS: must be a whole number, 1 or more" >&2
  exit 2
fi
if [[ "$ACCELERATOR_COUNT" != 0 ]]; then TRAINER_IMAGE="$TRAINER_GPU_IMAGE"; fi
DISPLAY_NAME="${DISPLAY_NAME:-kws-train-${RUN}-${TRAIN_RUN}}"
DRY_RUN="${DRY_RUN:-}"

# job.yaml with its ${NAME} placeholders replaced; the accelerator lines go when there is
# no accelerator, and each extra argument becomes one more item of the container's args.
# With REPLICAS > 1 the worker pool is written a second time, for REPLICAS - 1 workers.
render() {
  local line name indent section="" pool=()
  while IFS= read -r line || [[ -n "$line" ]]; do
    for name in MACHINE_TYPE ACCELERATOR_TYPE ACCELERATOR_COUNT TRAINER_IMAGE DATA_DIR \
                BASE_OUTPUT_DIR; do
      line="${line//"\${${name}}"/"${!name}"}"
    done
    if [[ "$ACCELERATOR_COUNT" == 0 && "$line" =~ ^[[:space:]]*accelerator ]]; then
      continue
    fi
    if [[ "$line" == "baseOutputDirectory:" ]]; then
      section=""
      if (( REPLICAS > 1 )); then
        for name in "${pool[@]}"; do
          if [[ "$name" =~ ^([[:space:]]*)replicaCount: ]]; then
            name="${BASH_REMATCH[1]}replicaCount: $((REPLICAS - 1))"
          fi
          printf '%s\n' "$name"
        done
      fi
    fi
    if [[ "$section" == pool ]]; then pool+=("$line"); fi
    printf '%s\n' "$line"
    if [[ "$line" == "workerPoolSpecs:" ]]; then section=pool; fi
    if [[ "$line" =~ ^([[:space:]]*)-\ --data-dir= ]]; then
      indent="${BASH_REMATCH[1]}"
      for argument in "$@"; do
        argument="${argument//\\/\\\\}"
        line="$(printf '%s- "%s"' "$indent" "${argument//\"/\\\"}")"
        if [[ "$section" == pool ]]; then pool+=("$line"); fi
        printf '%s\n' "$line"
      done
    fi
  done < "$HERE/job.yaml"
}

SPEC="$(mktemp --suffix .yaml 2>/dev/null || mktemp)"
trap 'rm -f "$SPEC"' EXIT
render "$@" > "$SPEC"

if [[ -n "$DRY_RUN" ]]; then
  cat "$SPEC"
  exit 0
fi

OPTIONAL=()
if [[ -n "$SERVICE_ACCOUNT" ]]; then OPTIONAL+=(--service-account "$SERVICE_ACCOUNT"); fi

gcloud ai custom-jobs create \
  --project "$PROJECT" \
  --region "$REGION" \
  --display-name "$DISPLAY_NAME" \
  --config "$SPEC" \
  ${OPTIONAL[@]+"${OPTIONAL[@]}"}

echo "model: ${BASE_OUTPUT_DIR}/model/  (gcloud ai custom-jobs stream-logs JOB_ID --region $REGION)"
