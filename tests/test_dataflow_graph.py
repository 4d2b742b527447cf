"""The preprocessing graph, translated by the DataflowRunner and staged, but not submitted.

With `--template_location`, DataflowRunner does everything a launch does except the
final `projects.locations.jobs.create` call (apache_beam/runners/dataflow/internal/
apiclient.py, `create_job`): it translates the graph to a Runner v2 pipeline proto,
builds the setup.py package, uploads the artifacts and `pipeline.pb` to the staging
location, and writes the job request to the template file instead of sending it. This
is also exactly how a Flex Template launch calls the program (the launcher passes
`--template_location=gs://.../template_launches/JOB/job_object` and submits that file).
The inputs and the staging location are in a bucket on the loopback emulator and the
template is a local file, so nothing leaves the machine. Under Runner v2 the job request
carries no `steps`: the graph is the staged `pipeline.pb`, which the test reads back.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines import contract, preprocess, stage
from tests.gcs import PROJECT, gcs_server  # noqa: F401  (fixture)
from tests.test_packaging import copy_project, load_launcher

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
LABELS = ("no", "yes")
REGION = "europe-west1"
STEPS = {"List", "Featurize", "Route", "WriteTrain", "WriteVal", "WriteTest",
         "WriteBackground", "WriteRejected", "WriteMetadata"}
CUSTOM_IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/kws/beam-worker:test"


def read_gcs(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


@pytest.fixture
def staged(gcs_server, tmp_path: Path) -> str:
    """gs://BUCKET/in with two label folders of two real clips each; returns gs://BUCKET."""
    local = tmp_path / "speech"
    for label in LABELS:
        (local / label).mkdir(parents=True)
        for wav in sorted((SAMPLE / label).glob("*.wav"))[:2]:
            shutil.copy(wav, local / label / wav.name)
    stage.stage(str(local), f"gs://{gcs_server}/in")
    return f"gs://{gcs_server}"


def build_template(root: str, tmp_path: Path, extra: list[str]) -> dict:
    """Runs preprocessing as the Flex Template launcher does; returns the job request.

    The launcher calls the program with --template_location (its job_object file), so
    `preprocess.run` checks the inputs and prepares the output folder, then the runner
    writes the job instead of submitting it.
    """
    template = tmp_path / "job_object.json"
    static = preprocess.run([
        "--data-dir", f"{root}/in", "--output-dir", f"{root}/out",
        "--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION,
        "--job_name", "kws-preprocess-test",
        "--temp_location", f"{root}/tmp", "--staging_location", f"{root}/staging",
        "--template_location", str(template), *extra])
    assert static["labels"] == list(LABELS)
    assert read_gcs(f"{root}/out/{contract.LABELS_FILE}").decode() == "no\nyes\n"
    assert not FileSystems.exists(f"{root}/out/{contract.METADATA_FILE}")  # written by the job
    return json.loads(template.read_text())


def staged_pipeline(job: dict) -> beam_runner_api_pb2.Pipeline:
    """The pipeline proto the job request points at, checked against its hash."""
    options = job["environment"]["sdkPipelineOptions"]["options"]
    data = read_gcs(options["pipelineUrl"])
    assert hashlib.sha256(data).hexdigest() == options["pipelineProtoHash"]
    return beam_runner_api_pb2.Pipeline.FromString(data)


def top_level_steps(proto: beam_runner_api_pb2.Pipeline) -> set[str]:
    """The labels of the graph's outermost steps (List, Featurize, WriteTrain, ...)."""
    transforms = proto.components.transforms
    ids = list(proto.root_transform_ids)
    # The translation may wrap the whole graph in a single composite root.
    if len(ids) == 1 and transforms[ids[0]].subtransforms:
        ids = list(transforms[ids[0]].subtransforms)
    return {transforms[transform_id].unique_name for transform_id in ids}


def container_images(proto: beam_runner_api_pb2.Pipeline) -> set[str]:
    return {beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
            for env in proto.components.environments.values()}


def test_preprocess_translates_and_stages_with_setup_file(staged, tmp_path):
    source = copy_project(tmp_path / "src")
    job = build_template(staged, tmp_path, ["--setup_file", str(source / "setup.py")])
    assert job["type"] == "JOB_TYPE_BATCH" and job["name"] == "kws-preprocess-test"
    assert not job.get("steps")  # Runner v2: the graph travels as pipeline.pb
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["project"] == PROJECT and options["region"] == REGION
    assert options["staging_location"].startswith(f"{staged}/staging/")

    proto = staged_pipeline(job)
    assert STEPS <= top_level_steps(proto)
    names = {transform.unique_name for transform in proto.components.transforms.values()}
    for split in contract.SPLITS:
        assert any(name.startswith(f"Write{split.capitalize()}/") for name in names)
    assert container_images(proto) == {
        f"gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:{beam.__version__}"}

    # The workers' copy of the code: setup.py's sdist, staged next to pipeline.pb.
    packages = {package["name"]: package["location"]
                for pool in job["environment"]["workerPools"] for package in pool["packages"]}
    assert "workflow.tar.gz" in packages
    location = packages["workflow.tar.gz"].replace("storage.googleapis.com/", "gs://", 1)
    with tarfile.open(fileobj=io.BytesIO(read_gcs(location))) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"setup.py", "requirements.txt", "pipelines/preprocess.py",
            "pipelines/transforms.py", "pipelines/contract.py", "trainer/features.py"} <= members


def test_flex_template_launch_with_a_custom_container(staged, tmp_path):
    # The launcher's call: template parameters with underscores, then its Dataflow options.
    template = tmp_path / "job_object"
    code = load_launcher().main([
        f"--data_dir={staged}/in", f"--output_dir={staged}/out", "--waveforms=false",
        f"--sdk_container_image={CUSTOM_IMAGE}",
        "--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}",
        "--job_name=kws-preprocess-flex", f"--staging_location={staged}/staging",
        f"--temp_location={staged}/tmp", f"--template_location={template}"])
    assert code == 0
    job = json.loads(template.read_text())
    assert job["name"] == "kws-preprocess-flex"
    assert job["environment"]["sdkPipelineOptions"]["options"]["sdk_container_image"] == \
        CUSTOM_IMAGE
    proto = staged_pipeline(job)
    assert STEPS <= top_level_steps(proto)
    assert container_images(proto) == {CUSTOM_IMAGE}
    # The code is in the image: nothing of the project is staged.
    packages = [package["name"] for pool in job["environment"]["workerPools"]
                for package in pool["packages"]]
    assert "workflow.tar.gz" not in packages
    assert read_gcs(f"{staged}/out/{contract.LABELS_FILE}").decode() == "no\nyes\n"
