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
TRAINER_GPU_IMAGE="${TRAINER_GPU_IMAGE:-${REGISTRY}/trainer-gpu:${TAG}}"  # same, with CUDA

# Worker identity for Dataflow and Vertex AI ("" = the project's default service accounts).
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"

# dataflow_flags JOB_NAME: the Beam flags every Dataflow launch in deploy/ uses, in the
# array BEAM_FLAGS (reads MACHINE_TYPE and MAX_WORKERS). Workers start in seconds from the
# image of deploy/dataflow/Dockerfile; with WORKER_IMAGE= they install the package's
# dependencies (TensorFlow included) from setup.py at start-up instead.
dataflow_flags() {
  BEAM_FLAGS=(
    --runner DataflowRunner
    --project "$PROJECT"
    --region "$REGION"
    --job_name "$1"
    --temp_location "gs://${BUCKET}/tmp"
    --staging_location "gs://${BUCKET}/staging"
    --machine_type "${MACHINE_TYPE:-n2-standard-4}"
    --max_num_workers "${MAX_WORKERS:-10}"
    --setup_file ./setup.py
  )
  if [[ -n "${WORKER_IMAGE}" ]]; then
    BEAM_FLAGS+=(--sdk_container_image "$WORKER_IMAGE" --sdk_location container)
  fi
  if [[ -n "$SERVICE_ACCOUNT" ]]; then
    BEAM_FLAGS+=(--service_account_email "$SERVICE_ACCOUNT")
  fi
}
