#!/usr/bin/env bash
# Launches preprocessing from the Flex Template built by build_template.sh.
#
#   DATA_DIR=gs://BUCKET/speech deploy/dataflow/flex_template/run_template.sh
#   LABELS=yes,no,up,down RUN=four-words deploy/dataflow/flex_template/run_template.sh
#
# Extra arguments go to `gcloud dataflow flex-template run` unchanged (e.g. --network).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(cd "$HERE/../.." && pwd)"
source "$DEPLOY/env.sh"

TEMPLATE_PATH="${TEMPLATE_PATH:-gs://${BUCKET}/templates/preprocess-${TAG}.json}"
RUN="${RUN:-$(date +%Y%m%d-%H%M%S)}"
DATA_DIR="${DATA_DIR:-gs://${BUCKET}/speech}"
OUTPUT_DIR="${OUTPUT_DIR:-gs://${BUCKET}/runs/${RUN}/data}"
LABELS="${LABELS:-}"                       # e.g. yes,no,up,down (default: every label folder)
MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-4}"
MAX_WORKERS="${MAX_WORKERS:-10}"

# Values may hold commas (LABELS), so the parameters are separated by "~" instead
# (gcloud's `^~^` escaping, see `gcloud topic escaping`).
PARAMETERS="^~^data_dir=${DATA_DIR}~output_dir=${OUTPUT_DIR}"
if [[ -n "$WORKER_IMAGE" ]]; then PARAMETERS+="~sdk_container_image=${WORKER_IMAGE}"; fi
if [[ -n "$LABELS" ]]; then PARAMETERS+="~labels=${LABELS}"; fi

OPTIONAL=()
if [[ -n "$SERVICE_ACCOUNT" ]]; then OPTIONAL+=(--service-account-email "$SERVICE_ACCOUNT"); fi

gcloud dataflow flex-template run "kws-preprocess-${RUN}" \
  --project "$PROJECT" \
  --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE_PATH" \
  --staging-location "gs://${BUCKET}/staging" \
  --temp-location "gs://${BUCKET}/tmp" \
  --worker-machine-type "$MACHINE_TYPE" \
  --max-workers "$MAX_WORKERS" \
  --parameters "$PARAMETERS" \
  ${OPTIONAL[@]+"${OPTIONAL[@]}"} "$@"

echo "output: $OUTPUT_DIR (metadata.json appears when the job has finished)"
