"""The package that Dataflow workers and training containers install from setup.py.

Builds the wheel from a copy of the sources (a build writes build/ and *.egg-info/ next
to setup.py, which must not land in the working tree), installs it without dependencies
into a fresh virtual environment, and runs the installed `pipelines.preprocess` from a
folder outside the repository. The third-party packages come from the project's own
virtual environment through a .pth file, so the test installs nothing from the network,
while the project's code can only come from the wheel.

The files of deploy/ are checked as far as they can be without a cloud: the scripts
parse, the images pin the Beam and Python of requirements.txt, the Flex Template's
parameters are preprocessing flags, and the Vertex AI job spec is a valid CustomJobSpec.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
PACKAGES = ("pipelines", "trainer")
# What setup.py reads besides the packages themselves.
PROJECT_FILES = ("setup.py", "MANIFEST.in", "requirements.txt", "requirements-test.txt",
                 "README.md")


def copy_project(dest: Path) -> Path:
    """Copies what building the package needs (setup.py, its inputs, the packages)."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        if (REPO / name).exists():
            shutil.copy(REPO / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


def source_modules() -> set[str]:
    return {path.relative_to(REPO).as_posix() for package in PACKAGES
            for path in (REPO / package).rglob("*.py") if "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline (no build isolation: setuptools of this venv)."""
    root = tmp_path_factory.mktemp("packaging")
    source = copy_project(root / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(root / "dist"), str(source)], cwd=root)
    (built,) = (root / "dist").glob("keyword_recognition-*.whl")
    return built


def test_wheel_holds_every_module_of_the_packages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = source_modules() - names
    assert not missing, f"not in {wheel.name}: {sorted(missing)}"
    assert not [name for name in names if name.startswith(("tests/", "data/"))]
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    # Workers must get the Beam the job was built with: the pin of requirements.txt.
    beam_pin = next(line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.startswith("apache-beam"))
    assert "==" in beam_pin and f"Requires-Dist: {beam_pin}\n" in requires


def inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_installed_package_runs_preprocessing_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    # Without the repository on PYTHONPATH (conftest puts it there for Beam's workers):
    # pip would see the editable install's metadata in it and install nothing.
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path,
        env=env)
    assert (venv / "bin" / "kws-preprocess").exists()
    # Third-party packages from the project's venv (sys.prefix here), never the sources.
    project_venv = Path(sys.prefix)
    dependencies = [path for path in site.getsitepackages() if Path(path).is_dir()]
    assert dependencies and all(inside(path, project_venv) for path in dependencies)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  cwd=tmp_path).stdout.strip()
    Path(purelib, "project-dependencies.pth").write_text("\n".join(dependencies) + "\n")

    data = tmp_path / "clips"
    for label in ("no", "yes"):
        (data / label).mkdir(parents=True)
        for wav in sorted((SAMPLE / label).glob("*.wav"))[:3]:
            shutil.copy(wav, data / label / wav.name)
    work = tmp_path / "work"  # the current folder must not make the sources importable
    work.mkdir()

    lines = run([str(python), "-c", "import sys, pipelines.preprocess, trainer.features; "
                 "print(pipelines.__file__, trainer.__file__, *sys.path, sep='\\n')"],
                cwd=work, env=env).stdout.splitlines()
    assert inside(lines[0], venv) and inside(lines[1], venv), lines[:2]
    leaks = [entry for entry in lines[2:] if entry and inside(entry, REPO)
             and not inside(entry, project_venv)]
    assert not leaks, f"the repository is on the fresh interpreter's path: {leaks}"

    # multi_processing: the DoFns are unpickled in worker processes, which must find the
    # installed modules as Dataflow workers do.
    out = tmp_path / "out"
    result = run([str(python), "-m", "pipelines.preprocess", "--data-dir", str(data),
                  "--output-dir", str(out), "--num-shards", "1",
                  "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
                 cwd=work, env=env)
    assert f"wrote {out}/" in result.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["labels"] == ["no", "yes"]
    assert metadata["examples_written"] == 6


# --- deploy/: what can be checked without a cloud ----------------------------------

DEPLOY = REPO / "deploy"


def load_launcher():
    """deploy/dataflow/flex_template/launch_preprocess.py as a module (it is not a package)."""
    path = DEPLOY / "dataflow" / "flex_template" / "launch_preprocess.py"
    spec = importlib.util.spec_from_file_location("launch_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shell_scripts_parse():
    scripts = sorted(DEPLOY.rglob("*.sh"))
    assert len(scripts) >= 6
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_images_run_the_pinned_beam_and_python():
    beam_pin = next(line.split("==")[1].strip()
                    for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.startswith("apache-beam"))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    worker = (DEPLOY / "dataflow" / "Dockerfile").read_text()
    assert f"FROM apache/beam_python{python}_sdk:{beam_pin}\n" in worker
    assert f"== '{beam_pin}'" in worker  # the build fails if requirements.txt disagrees
    launcher = (DEPLOY / "dataflow" / "flex_template" / "Dockerfile").read_text()
    assert f"python{python.replace('.', '')}-template-launcher-base" in launcher
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch_preprocess.py" in launcher
    assert f"FROM python:{python}-slim\n" in (DEPLOY / "vertex" / "Dockerfile").read_text()


def test_flex_template_parameters_are_preprocess_flags():
    from pipelines import preprocess
    launcher = load_launcher()
    stored = json.loads((DEPLOY / "dataflow" / "flex_template" / "metadata.json").read_text())
    # The file is generated from the parser (launch_preprocess.py --template-metadata).
    assert stored == launcher.template_metadata(), "metadata.json is stale: regenerate it"
    names = {parameter["name"] for parameter in stored["parameters"]}
    beam_options = {"sdk_container_image"}
    flags = {option[2:].replace("-", "_") for action in preprocess.build_parser()._actions
             for option in action.option_strings
             if option.startswith("--") and not option.startswith("--no-")} - {"help"}
    assert names - beam_options == flags == set(launcher.VALUE_FLAGS) | set(
        launcher.BOOLEAN_FLAGS)
    assert {"data_dir", "output_dir", "unknown_percent", "silence_percent"} <= names
    samples = {"compression": "gzip", "split": "speaker"}
    required = ["--data_dir=gs://b/in", "--output_dir=gs://b/out"]
    for name in names - beam_options - {"data_dir", "output_dir"}:
        value = "false" if name in launcher.BOOLEAN_FLAGS else samples.get(name, "1")
        argv = launcher.preprocess_argv(required + [f"--{name}={value}"])
        args, unknown = preprocess.build_parser().parse_known_args(argv)
        assert not unknown, (name, argv)
        assert args.data_dirs == ["gs://b/in"] and args.output_dir == "gs://b/out"

    # What the launcher passes: parameters, then Beam's options, left as they are.
    argv = launcher.preprocess_argv([
        "--data_dir=gs://b/in", "--output_dir=gs://b/out", "--waveforms=false",
        "--labels=yes,no", "--overwrite=true", "--runner=DataflowRunner",
        "--template_location=gs://b/staging/template_launches/1/job_object"])
    assert argv == ["--data-dir=gs://b/in", "--output-dir=gs://b/out", "--no-waveforms",
                    "--labels=yes,no", "--overwrite", "--runner=DataflowRunner",
                    "--template_location=gs://b/staging/template_launches/1/job_object"]
    args, beam_args = preprocess.build_parser().parse_known_args(argv)
    assert args.waveforms is False and args.overwrite and args.labels == "yes,no"
    assert beam_args == argv[-2:]
    with pytest.raises(SystemExit, match="true or false"):
        launcher.preprocess_argv(["--waveforms=maybe"])


def vertex_spec_from_script(extra_env: dict[str, str], trainer_args: list[str]) -> dict:
    import yaml
    env = {**os.environ, "DRY_RUN": "1", "PROJECT": "kws-project", "BUCKET": "kws-bucket",
           "RUN": "run1", "TRAIN_RUN": "t1", "TAG": "v1", **extra_env}
    result = subprocess.run(["bash", str(DEPLOY / "vertex" / "submit.sh"), *trainer_args],
                            env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_vertex_job_spec_renders_to_a_valid_custom_job():
    from google.cloud.aiplatform_v1.types import custom_job
    spec = vertex_spec_from_script({}, ["--epochs", "3", 'a "quoted" value'])
    parsed = custom_job.CustomJobSpec.from_json(json.dumps(spec))  # rejects unknown fields
    (pool,) = parsed.worker_pool_specs
    assert pool.machine_spec.machine_type == "n1-standard-8"
    assert pool.machine_spec.accelerator_count == 0
    assert pool.container_spec.image_uri == "europe-west1-docker.pkg.dev/kws-project/kws/trainer:v1"
    assert list(pool.container_spec.args) == [
        "--data-dir=gs://kws-bucket/runs/run1/data", "--epochs", "3", 'a "quoted" value']
    assert parsed.base_output_directory.output_uri_prefix == "gs://kws-bucket/runs/run1/train-t1"

    gpu = custom_job.CustomJobSpec.from_json(json.dumps(vertex_spec_from_script(
        {"ACCELERATOR_TYPE": "NVIDIA_TESLA_T4", "ACCELERATOR_COUNT": "1"}, [])))
    assert gpu.worker_pool_specs[0].machine_spec.accelerator_count == 1
    assert gpu.worker_pool_specs[0].machine_spec.accelerator_type.name == "NVIDIA_TESLA_T4"

    # The SDK alternative builds the same job from the same job.yaml.
    result = run([sys.executable, str(DEPLOY / "vertex" / "submit.py"), "--project",
                  "kws-project", "--region", "europe-west1", "--image",
                  pool.container_spec.image_uri, "--data-dir",
                  "gs://kws-bucket/runs/run1/data", "--base-output-dir",
                  "gs://kws-bucket/runs/run1/train-t1", "--dry-run", "--", "--epochs", "3",
                  'a "quoted" value'], cwd=REPO)
    assert custom_job.CustomJobSpec(json.loads(result.stdout)) == parsed


@pytest.mark.parametrize("script, variables", [
    ("run_preprocess.sh", {"RUN": "r1"}),
    ("run_predict.sh", {"PREDICTION_RUN": "r1", "MODEL_DIR": "gs://b/job"}),
])
def test_dataflow_scripts_pass_every_flag(script, variables):
    """The launch scripts expand to the pipeline's command with the Dataflow flags."""
    base = {"PATH": os.environ["PATH"], "PYTHON": "echo", "PROJECT": "p", "BUCKET": "b",
            "TAG": "t", **variables}
    command = [str(REPO / "deploy" / "dataflow" / script), "--extra", "1"]
    with_image = subprocess.run(command, env=base, capture_output=True, text=True,
                                check=True).stdout.split()
    for flag, value in [("--runner", "DataflowRunner"), ("--project", "p"),
                        ("--temp_location", "gs://b/tmp"), ("--setup_file", "./setup.py"),
                        ("--job_name", f"kws-{script[4:-3]}-r1"), ("--extra", "1"),
                        ("--sdk_container_image",
                         "europe-west1-docker.pkg.dev/p/kws/beam-worker:t")]:
        assert with_image[with_image.index(flag) + 1] == value, flag
    stock = subprocess.run(command, env={**base, "WORKER_IMAGE": ""}, capture_output=True,
                           text=True, check=True).stdout.split()
    assert "--sdk_container_image" not in stock and "--setup_file" in stock
