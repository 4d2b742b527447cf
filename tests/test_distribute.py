"""Training across workers and devices: the cluster read from TF_CONFIG, the split of the
shards, and whole runs of trainer.task as two worker processes on loopback (the way Vertex
AI starts a multi-replica job) and with MirroredStrategy over two logical CPUs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import preprocess
from pipelines.errors import UserError
from benchmarks import workers as workers_benchmark
from tests import wavs
from trainer import distribute, settings, task

REPO = Path(__file__).resolve().parent.parent
LABELS = ["no", "up", "yes"]


def tf_config(kind: str, index: int, chief: str = "chief:2222",
              workers: tuple[str, ...] = ("w0:2222", "w1:2222")) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": {"chief": [chief], "worker": list(workers)},
                                     "task": {"type": kind, "index": index}})}


def test_cluster_from_vertex_tf_config():
    assert distribute.read_cluster({}) == distribute.Cluster(1, 0)
    chief = distribute.read_cluster(tf_config("chief", 0))
    second = distribute.read_cluster(tf_config("worker", 1))
    assert (chief.workers, chief.rank, chief.is_chief) == (3, 0, True)
    assert (second.workers, second.rank, second.is_chief) == (3, 2, False)
    # Without a chief, worker 0 leads.
    alone = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                      "task": {"type": "worker", "index": 0}})}
    assert distribute.read_cluster(alone).is_chief


@pytest.mark.parametrize("config, reason", [
    ("{not json", "not a cluster description"),
    (json.dumps({"cluster": {"chief": ["a:1"], "ps": ["b:1"]},
                 "task": {"type": "ps", "index": 0}}), "no parameter servers"),
    (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                 "task": {"type": "worker", "index": 3}}), "worker 3 is not in"),
])
def test_a_cluster_it_cannot_run_in_is_one_line(config, reason):
    with pytest.raises(UserError, match=reason) as error:
        distribute.read_cluster({"TF_CONFIG": config})
    assert "\n" not in str(error.value) and str(error.value).startswith("TF_CONFIG: ")


def test_auto_picks_the_strategy_from_workers_then_gpus():
    two = distribute.Cluster(2, 1)
    assert distribute.resolve("auto", two, 0) == "multiworker"
    assert distribute.resolve("auto", distribute.Cluster(), 4) == "mirrored"
    assert distribute.resolve("auto", distribute.Cluster(), 1) == "none"
    assert distribute.resolve("none", two, 8) == "none"


def test_shards_are_dealt_to_workers_whole():
    files = [f"d/train/data-{i:05d}-of-00005.tfrecord" for i in range(5)]
    shares = [distribute.worker_files(files, distribute.Cluster(2, rank), "d/train")
              for rank in (0, 1)]
    assert shares == [files[0::2], files[1::2]]
    assert distribute.worker_files(files, distribute.Cluster(), "d/train") == files
    with pytest.raises(UserError) as error:
        distribute.worker_files(files[:2], distribute.Cluster(3, 0), "d/train")
    assert str(error.value) == ("d/train: 2 shard(s) for 3 workers; each worker reads whole "
                                "shards (preprocess with --num-shards 3 or more)")


def test_learning_rate_rules_and_vertex_flag_names():
    assert distribute.scaled_learning_rate(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert distribute.scaled_learning_rate(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert distribute.scaled_learning_rate(1e-3, 4, "none") == 1e-3
    assert distribute.hyphenated(["--learning_rate=0.01", "--weight_decay", "0.1",
                                  "--data-dir", "a_b", "--job-dir=x_y"]) == [
        "--learning-rate=0.01", "--weight-decay", "0.1", "--data-dir", "a_b", "--job-dir=x_y"]
    args = task.build_parser().parse_args(distribute.hyphenated(
        ["--data-dir", "d", "--learning_rate=0.02", "--weight_decay=0.5"]))
    assert (args.learning_rate, args.weight_decay, args.strategy) == (0.02, 0.5, "auto")


def test_a_cluster_without_multiworker_strategy_is_refused():
    run = settings.RunSettings(data_dir="d", job_dir="j", model="kws", strategy="none",
                               lr_scaling="sqrt")
    with pytest.raises(UserError, match="TF_CONFIG names 3 workers"):
        distribute.setup(run, tf_config("chief", 0))


# --- whole runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", LABELS, per_label=10)
    out = tmp_path_factory.mktemp("prep") / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "20", "--test-percent", "20", "--num-shards", "2"])
    return out


free_ports = workers_benchmark.free_ports


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return workers_benchmark.environment(TMPDIR=str(tmp), **extra)


def start_workers(data_dir: Path, job: Path, root: Path, epochs: int,
                  extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """A chief and a worker of trainer.task, each with its own TMPDIR and metric file."""
    chief_port, worker_port = free_ports(2)
    cluster = {"chief": [f"localhost:{chief_port}"], "worker": [f"localhost:{worker_port}"]}
    processes = []
    for name, kind in (("chief", "chief"), ("worker", "worker")):
        config = json.dumps({"cluster": cluster, "task": {"type": kind, "index": 0}})
        env = environment(root / f"tmp-{name}", TF_CONFIG=config,
                          CLOUD_ML_HP_METRIC_FILE=str(root / f"{name}.metrics"))
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir), "--job-dir",
             str(job), "--model", "tutorial", "--epochs", str(epochs), "--verbose", "2",
             "--no-report", "--hypertune", *extra],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def wait_all(processes: list[subprocess.Popen], root: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    for process, name in zip(processes, ("chief", "worker")):
        try:
            code = process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError(f"{name} did not finish:\n"
                                 + (root / f"{name}.log").read_text()[-3000:])
        assert code == 0, f"{name} exited {code}:\n" + (root / f"{name}.log").read_text()[-3000:]


def test_two_workers_resume_a_preempted_job_and_only_the_chief_writes(data_dir, tmp_path):
    job = tmp_path / "job"
    # First attempt: both workers are stopped once the chief has backed up epoch 1.
    first = start_workers(data_dir, job, tmp_path / "first", epochs=3)
    backup_file = job / "checkpoints" / "epoch-0001.weights.h5"
    deadline = time.monotonic() + 400
    while not backup_file.exists() and time.monotonic() < deadline:
        assert all(process.poll() is None for process in first), (
            (tmp_path / "first" / "chief.log").read_text()[-3000:])
        time.sleep(0.2)
    # Preempted the way Vertex AI does it: SIGTERM to every replica, which each honours
    # (TensorFlow's strategy would catch it and train on) with one line and exit 143.
    for process in first:
        process.send_signal(signal.SIGTERM)
    for process, name in zip(first, ("chief", "worker")):
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for other in first:
                other.kill()
            raise AssertionError(f"the {name} ignored SIGTERM")
        log = (tmp_path / "first" / f"{name}.log").read_text()
        assert code == 143, log[-3000:]
        assert log.strip().splitlines()[-1] == "terminated (SIGTERM)", log[-3000:]
    assert backup_file.exists()
    assert not (job / ".run-claim.json").exists()  # the chief released its job folder

    # Started again with the same command, both resume from the chief's backup.
    second = start_workers(data_dir, job, tmp_path / "second", epochs=3)
    wait_all(second, tmp_path / "second")
    chief_log = (tmp_path / "second" / "chief.log").read_text()
    worker_log = (tmp_path / "second" / "worker.log").read_text()
    assert "Resuming from the backup" in chief_log and "Resuming from the backup" in worker_log

    metrics = json.loads((job / "metrics.json").read_text())
    settings = metrics["settings"]
    assert (settings["strategy"], settings["replicas"], settings["workers"]) == (
        "multiworker", 2, 2)
    assert settings["batch_size"] == 2 * settings["batch_size_per_replica"] == 128
    assert settings["epochs_run"] >= 2  # early stopping may end it before the third
    # The chief evaluates the whole test split itself (not shared out among workers).
    assert metrics["test_examples"] == metrics["counts"]["test"]
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["counts"]["test"]
    assert (job / "model.keras").is_file() and (job / "export" / "saved_model.pb").is_file()
    assert not list(job.glob("checkpoints/*"))  # the chief removed its backups
    # The worker wrote nothing of its own anywhere but its scratch folder, now gone.
    assert list((tmp_path / "second" / "tmp-worker").iterdir()) == []
    # Only the chief reports the tuning metric, once per epoch it ran.
    reports = [json.loads(line) for line in
               (tmp_path / "second" / "chief.metrics").read_text().splitlines()]
    assert reports and all(0 <= float(r["val_accuracy"]) <= 1 for r in reports)
    assert not (tmp_path / "second" / "worker.metrics").exists()


def test_a_chief_whose_worker_never_comes_gives_up_in_one_line(data_dir, tmp_path):
    chief_port, worker_port = free_ports(2)
    env = environment(tmp_path / "tmp", **tf_config(
        "chief", 0, f"localhost:{chief_port}", (f"localhost:{worker_port}",)))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir), "--job-dir",
         str(tmp_path / "job"), "--model", "tutorial", "--peer-timeout", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert f"chief 0: waiting for worker 0 at localhost:{worker_port} (0 of 4 s)" in lines
    assert lines[-1] == (f"error: chief 0: gave up after 4 s waiting for worker 0 at "
                         f"localhost:{worker_port} (is it running, and its port reachable? "
                         "--peer-timeout sets the wait)")
    assert time.monotonic() - started < 60


def test_a_chief_waiting_for_its_worker_stops_on_sigterm(data_dir, tmp_path):
    chief_port, worker_port = free_ports(2)
    env = environment(tmp_path / "tmp", **tf_config(
        "chief", 0, f"localhost:{chief_port}", (f"localhost:{worker_port}",)))
    chief = subprocess.Popen(
        [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir), "--job-dir",
         str(tmp_path / "job"), "--model", "tutorial"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in chief.stderr:
        if "waiting for worker 0" in line:
            break
    chief.send_signal(signal.SIGTERM)
    _, err = chief.communicate(timeout=60)
    assert chief.returncode == 143 and err.strip().splitlines()[-1] == "terminated (SIGTERM)"


@pytest.mark.parametrize("cluster", [
    {"chief": ["localhost:23456"], "worker": "localhost:23457"},
    {"chief": "localhost:23456"},
    {"worker": ["localhost:23457", 7]},
])
def test_a_cluster_that_is_not_lists_of_addresses_is_refused(cluster):
    config = {"cluster": cluster, "task": {"type": "chief", "index": 0}}
    with pytest.raises(UserError, match="must be a list of \"host:port\" strings"):
        distribute.read_cluster({"TF_CONFIG": json.dumps(config)})


def test_two_workers_need_a_shard_each(data_dir, tmp_path):
    env = environment(tmp_path / "tmp", **tf_config("worker", 0, "localhost:1",
                                                     ("localhost:2", "localhost:3")))
    result = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir), "--job-dir",
         str(tmp_path / "job"), "--model", "tutorial"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {data_dir}/train: 2 shard(s) for 3 workers; each worker reads whole shards "
        "(preprocess with --num-shards 3 or more)")
    assert list((tmp_path / "tmp").iterdir()) == []  # its scratch folder went too


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import task
sys.exit(task.main(sys.argv[1:]))
"""


def test_mirrored_strategy_over_two_logical_cpus(data_dir, tmp_path):
    job = tmp_path / "job"
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, "--data-dir", str(data_dir), "--job-dir", str(job),
         "--model", "tutorial", "--epochs", "1", "--strategy", "mirrored", "--verbose", "0",
         "--no-report", "--learning-rate", "0.002", "--lr-scaling", "linear"],
        cwd=REPO, env=environment(tmp_path / "tmp"), capture_output=True, text=True,
        timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads((job / "metrics.json").read_text())["settings"]
    assert (settings["strategy"], settings["replicas"], settings["workers"]) == (
        "mirrored", 2, 1)
    assert settings["batch_size"] == 128 and settings["learning_rate"] == pytest.approx(0.004)
    assert settings["recipe_learning_rate"] == pytest.approx(0.002)
    assert (job / "model.keras").is_file()


def test_workers_benchmark_trains_one_process_and_two_workers(data_dir, tmp_path, capsys):
    workers = workers_benchmark
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("a user's file")
    assert workers.main(["--data-dir", str(data_dir), "--work-dir", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "a user's file"

    results = workers.run(["--data-dir", str(data_dir), "--work-dir", str(tmp_path / "w"),
                           "--seeds", "3", "--epochs", "1"])
    assert [row["replicas"] for row in results["one process"]] == [1]
    assert [row["replicas"] for row in results["two workers"]] == [2]
    printed = capsys.readouterr().out
    assert "one process" in printed and "two workers - one process" in printed
    for rows in results.values():
        assert 0.0 <= rows[0]["accuracy"] <= 1.0
