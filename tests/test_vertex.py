"""deploy/vertex/ beyond one machine: the second worker pool of --replicas, the GPU image,
and the hyperparameter tuning job of tune.py, checked as far as they can be without a
cloud (the specs parse as Vertex AI's own protos, which reject unknown fields)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.cloud.aiplatform_v1.types import custom_job, hyperparameter_tuning_job

from trainer import distribute, models, settings, task

REPO = Path(__file__).resolve().parent.parent
VERTEX = REPO / "deploy" / "vertex"
COMMON = ["--project", "kws-project", "--region", "europe-west1", "--image", "img:gpu",
          "--data-dir", "gs://b/runs/r/data", "--base-output-dir", "gs://b/runs/r/out"]


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERTEX / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_replicas_add_a_worker_pool_with_the_same_machine_and_accelerators():
    result = python("submit.py", *COMMON, "--replicas", "3", "--accelerator-type",
                    "NVIDIA_TESLA_T4", "--accelerator-count", "2", "--dry-run", "--",
                    "--epochs", "30")
    assert result.returncode == 0, result.stderr
    spec = custom_job.CustomJobSpec(json.loads(result.stdout))
    chief, workers = spec.worker_pool_specs
    assert (chief.replica_count, workers.replica_count) == (1, 2)
    for pool in (chief, workers):
        assert pool.machine_spec.accelerator_type.name == "NVIDIA_TESLA_T4"
        assert pool.machine_spec.accelerator_count == 2
        assert pool.container_spec.image_uri == "img:gpu"
        assert list(pool.container_spec.args) == ["--data-dir=gs://b/runs/r/data",
                                                   "--epochs", "30"]


def test_submit_sh_renders_the_same_two_pools():
    env = {**os.environ, "DRY_RUN": "1", "PROJECT": "p", "BUCKET": "b", "RUN": "r",
           "TRAIN_RUN": "t", "TAG": "v1", "REPLICAS": "3",
           "ACCELERATOR_TYPE": "NVIDIA_TESLA_T4", "ACCELERATOR_COUNT": "2"}
    result = subprocess.run(["bash", str(VERTEX / "submit.sh"), "--epochs", 'a "b"'],
                            env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    spec = custom_job.CustomJobSpec.from_json(json.dumps(yaml.safe_load(result.stdout)))
    chief, workers = spec.worker_pool_specs
    assert (chief.replica_count, workers.replica_count) == (1, 2)
    # With accelerators the GPU image is the default.
    assert chief.container_spec.image_uri == workers.container_spec.image_uri == (
        "europe-west1-docker.pkg.dev/p/kws/trainer-gpu:v1")
    assert list(workers.container_spec.args) == list(chief.container_spec.args) == [
        "--data-dir=gs://b/runs/r/data", "--epochs", 'a "b"']
    single = subprocess.run(["bash", str(VERTEX / "submit.sh")], env={**env, "REPLICAS": "1"},
                            capture_output=True, text=True, timeout=30, check=True)
    assert len(yaml.safe_load(single.stdout)["workerPoolSpecs"]) == 1
    bad = subprocess.run(["bash", str(VERTEX / "submit.sh")], env={**env, "REPLICAS": "0"},
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: REPLICAS=0: must be a whole number, 1 or more"


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "0"], "--replicas 0: must be at least 1"),
    (["--accelerator-count", "1"], "--accelerator-count needs --accelerator-type (e.g. "
                                  "NVIDIA_TESLA_T4)"),
])
def test_submit_refuses_counts_vertex_would_refuse(flags, message):
    result = python("submit.py", *COMMON, *flags, "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(message)


def test_gpu_image_is_built_with_tensorflow_cuda(tmp_path):
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir()
    # Stands in for docker: records the tag and the Dockerfile of the build context.
    stub.write_text('#!/bin/bash\nif [[ "$1" == build ]]; then echo "tag $3";'
                    ' cp "$4/Dockerfile" "$OUT_DOCKERFILE"; fi\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "BUILDER": "docker",
           "PROJECT": "p", "TAG": "t", "OUT_DOCKERFILE": str(tmp_path / "Dockerfile")}
    result = subprocess.run(["bash", str(REPO / "deploy" / "build_image.sh"), "trainer-gpu"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "tag europe-west1-docker.pkg.dev/p/kws/trainer-gpu:t" in result.stdout
    built = (tmp_path / "Dockerfile").read_text()
    assert 'ARG TENSORFLOW_EXTRAS="and-cuda"\n' in built
    assert 'ARG TENSORFLOW_EXTRAS=""\n' in (VERTEX / "Dockerfile").read_text()  # untouched


def tuning_job(*args: str) -> tuple[dict, hyperparameter_tuning_job.HyperparameterTuningJob]:
    result = python("tune.py", *COMMON, *args)
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)
    return spec, hyperparameter_tuning_job.HyperparameterTuningJob.from_json(result.stdout)


def test_tuning_job_searches_around_the_recipe_and_reads_the_reported_metric():
    spec, job = tuning_job("--model", "kws", "--max-trials", "8", "--parallel-trials", "2",
                           "--replicas", "2", "--dry-run", "--", "--epochs", "40")
    recipe = models.get_recipe("kws")
    (metric,) = job.study_spec.metrics
    assert (metric.metric_id, metric.goal.name) == (settings.TUNING_METRIC, "MAXIMIZE")
    params = {p.parameter_id: p for p in job.study_spec.parameters}
    assert set(params) == {"learning_rate", "weight_decay"}
    rate = params["learning_rate"].double_value_spec
    assert rate.min_value < recipe.learning_rate < rate.max_value
    assert params["weight_decay"].scale_type.name == "UNIT_LOG_SCALE"
    assert (job.max_trial_count, job.parallel_trial_count) == (8, 2)
    pools = job.trial_job_spec.worker_pool_specs
    assert [pool.replica_count for pool in pools] == [1, 1]
    trial_args = list(pools[0].container_spec.args)
    assert trial_args[1:] == ["--model", "kws", "--hypertune", "--epochs", "40"]

    # What a trial runs: the container's args and Vertex AI's --PARAMETER_ID=VALUE.
    argv = [arg.replace("--data-dir=", "") for arg in trial_args]
    parsed = task.build_parser().parse_args(distribute.hyphenated(
        ["--data-dir", argv[0], *argv[1:], "--learning_rate=0.0123", "--weight_decay=0.02"]))
    assert (parsed.learning_rate, parsed.weight_decay, parsed.hypertune) == (0.0123, 0.02, True)


def test_tuning_params_replace_or_add_to_the_defaults():
    _, job = tuning_job("--model", "tutorial", "--param", "learning_rate=0.0001:0.01:log",
                        "--param", "batch_size=32,64,128", "--param", "epochs=5:20",
                        "--dry-run")
    params = {p.parameter_id: p for p in job.study_spec.parameters}
    assert set(params) == {"learning_rate", "batch_size", "epochs"}  # tutorial: Adam, no decay
    assert params["learning_rate"].double_value_spec.max_value == 0.01
    assert list(params["batch_size"].discrete_value_spec.values) == [32, 64, 128]
    assert params["epochs"].integer_value_spec.max_value == 20


@pytest.mark.parametrize("param, message", [
    ("learning_rate=0.1:0.01", "MIN must be below MAX"),
    ("learning_rate=0:1:log", "a log scale needs MIN > 0"),
    ("no_such_flag=1:2", "no_such_flag: not a flag of trainer.task"),
    ("Bad-Name=1:2", "expected NAME=MIN:MAX[:log] or NAME=A,B,C"),
])
def test_a_bad_param_is_one_usage_line(param, message):
    result = python("tune.py", *COMMON, "--model", "tutorial", "--param", param, "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
