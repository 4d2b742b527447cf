#!/usr/bin/env bash
# Builds and pushes one of the project's container images.
#
#   deploy/build_image.sh worker     # Dataflow workers: deploy/dataflow/Dockerfile
#   deploy/build_image.sh launcher   # Flex Template launcher: deploy/dataflow/flex_template/
#   deploy/build_image.sh trainer    # Vertex AI training: deploy/vertex/Dockerfile
#   deploy/build_image.sh trainer-gpu  # the same with TensorFlow's CUDA libraries (GPUs)
#
# The build context is a temporary folder holding only what the images install (setup.py,
# its inputs and the two packages), never .venv/, data/ or runs/. Cloud Build does the
# build by default (no local Docker needed); BUILDER=docker builds and pushes locally.
set -euo pipefail

KIND="${1:?usage: deploy/build_image.sh worker|launcher|trainer|trainer-gpu}"
BUILDER="${BUILDER:-cloudbuild}"   # cloudbuild | docker

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
source "$DEPLOY/env.sh"

case "$KIND" in
  worker)   IMAGE="$WORKER_IMAGE";   DOCKER_DIR="$DEPLOY/dataflow" ;;
  launcher) IMAGE="$LAUNCHER_IMAGE"; DOCKER_DIR="$DEPLOY/dataflow/flex_template" ;;
  trainer)  IMAGE="$TRAINER_IMAGE";  DOCKER_DIR="$DEPLOY/vertex" ;;
  trainer-gpu) IMAGE="$TRAINER_GPU_IMAGE"; DOCKER_DIR="$DEPLOY/vertex" ;;
  *) echo "error: unknown image '$KIND' (worker, launcher, trainer or trainer-gpu)" >&2
     exit 2 ;;
esac

CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
for name in setup.py MANIFEST.in README.md requirements.txt requirements-test.txt; do
  if [[ -f "$ROOT/$name" ]]; then cp "$ROOT/$name" "$CONTEXT/"; fi
done
for package in pipelines trainer; do
  cp -r "$ROOT/$package" "$CONTEXT/$package"
done
find "$CONTEXT" -name __pycache__ -prune -exec rm -rf {} +
# The Dockerfile and anything beside it (the Flex Template's entry point) go to the root.
cp "$DOCKER_DIR"/Dockerfile "$CONTEXT/"
find "$DOCKER_DIR" -maxdepth 1 -name '*.py' -exec cp {} "$CONTEXT/" \;
if [[ "$KIND" == trainer-gpu ]]; then
  # The GPU variant: the build argument's default set in the copy, as Cloud Build's
  # --tag takes no build arguments. pip's tensorflow[and-cuda] brings CUDA and cuDNN;
  # Vertex AI provides the driver.
  sed -i 's/^ARG TENSORFLOW_EXTRAS=""$/ARG TENSORFLOW_EXTRAS="and-cuda"/' "$CONTEXT/Dockerfile"
  grep -q '^ARG TENSORFLOW_EXTRAS="and-cuda"$' "$CONTEXT/Dockerfile" || {
    echo "error: $DOCKER_DIR/Dockerfile: no ARG TENSORFLOW_EXTRAS=\"\" line to set" >&2
    exit 2
  }
fi

echo "building $IMAGE from $DOCKER_DIR/Dockerfile"
if [[ "$BUILDER" == docker ]]; then
  docker build -t "$IMAGE" "$CONTEXT"
  docker push "$IMAGE"
else
  gcloud builds submit "$CONTEXT" --project "$PROJECT" --region "$REGION" --tag "$IMAGE"
fi
