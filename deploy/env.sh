# Settings shared by the scripts in deploy/: source it, or export the same names first.
# Every value can be overridden from the environment, e.g. `BUCKET=my-bucket deploy/...`.

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
REGION="${REGION:-europe-west1}"                 # Dataflow, Vertex AI, Artifact Registry
BUCKET="${BUCKET:-${PROJECT}-kws}"               # one bucket in REGION for data, runs, staging
REPOSITORY="${REPOSITORY:-kws}"                  # Artifact Registry Docker repository
# Images are tagged with the commit they are built from.
TAG="${TAG:-$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null \
  || echo latest)}"

REGISTRY="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}"
# WORKER_IMAGE= (set and empty) runs Dataflow workers on Beam's stock image instead.
WORKER_IMAGE="${WORKER_IMAGE-${REGISTRY}/beam-worker:${TAG}}"      # deploy/dataflow/Dockerfile
LAUNCHER_IMAGE="${LAUNCHER_IMAGE:-${REGISTRY}/preprocess-launcher:${TAG}}"  # flex_template/
TRAINER_IMAGE="${TRAINER_IMAGE:-${REGISTRY}/trainer:${TAG}}"       # deploy/vertex/Dockerfile

# Worker identity for Dataflow and Vertex AI ("" = the project's default service accounts).
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"
