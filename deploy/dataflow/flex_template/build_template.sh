#!/usr/bin/env bash
# Builds the preprocessing Flex Template: the launcher image, then the template spec file
# on Cloud Storage that points at it and lists the parameters of metadata.json.
#
#   deploy/dataflow/flex_template/build_template.sh
#
# Run deploy/build_image.sh worker too (once per code change): run_template.sh gives the
# workers that image.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(cd "$HERE/../.." && pwd)"
source "$DEPLOY/env.sh"

TEMPLATE_PATH="${TEMPLATE_PATH:-gs://${BUCKET}/templates/preprocess-${TAG}.json}"

"$DEPLOY/build_image.sh" launcher

gcloud dataflow flex-template build "$TEMPLATE_PATH" \
  --project "$PROJECT" \
  --image "$LAUNCHER_IMAGE" \
  --sdk-language PYTHON \
  --metadata-file "$HERE/metadata.json"

echo "template: $TEMPLATE_PATH"
