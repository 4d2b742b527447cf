"""The trainer: in-graph features, streaming input, the tutorial model, a whole run."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipelines import audio, contract, preprocess
from benchmarks import compare
from tests import wavs
from trainer import data, evaluate, features, models, predict, task
from trainer.models import Architecture, Recipe, tutorial

LABELS = ["no", "up", "yes"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", LABELS, per_label=10)
    out = tmp_path_factory.mktemp("prep") / "out"
    # A per-file split keeps val and test non-empty on so few speakers.
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "20", "--test-percent", "20", "--num-shards", "2"])
    return out


@pytest.fixture(scope="module")
def job_dir(data_dir, tmp_path_factory):
    job = tmp_path_factory.mktemp("job") / "job"
    task.run(["--data-dir", str(data_dir), "--job-dir", str(job), "--model", "tutorial",
              "--epochs", "2", "--verbose", "0"])
    return job


def test_in_graph_stft_equals_the_pipelines_spectrogram():
    clips = [wavs.read_clip(p)[0] for p in wavs.sample_clips("left", 3)]
    for clip in clips + [clips[0][:9000], np.concatenate([clips[1], clips[2]])]:
        ours = features.stft_magnitude(tf.constant(clip[None, :])).numpy()[0]
        np.testing.assert_allclose(ours, audio.spectrogram(clip), atol=1e-4)


def test_tutorial_model_has_the_tutorials_parameter_count():
    assert models.build_model("tutorial", 8).count_params() == 1_625_611


def test_dataset_streams_batches_with_declared_cardinality(data_dir):
    metadata = data.read_metadata(str(data_dir))
    size = metadata["counts"]["train"]["total"]
    files = data.shard_files(str(data_dir), "train")
    dataset = data.make_dataset(files, 4, True, seed=1, num_examples=size)
    assert int(dataset.cardinality()) == -(-size // 4)
    batches = list(dataset)
    assert sum(int(b[1].shape[0]) for b in batches) == size
    assert batches[0][0].shape[1:] == contract.SPECTROGRAM_SHAPE
    waves = next(iter(data.make_dataset(files, 2, False, waveform=True)))[0]
    assert waves.shape == (2, contract.CLIP_SAMPLES)


def test_training_dataset_repeats_without_end(data_dir):
    size = data.read_metadata(str(data_dir))["counts"]["train"]["total"]
    files = data.shard_files(str(data_dir), "train")
    dataset = data.make_dataset(files, 4, True, seed=1, repeat=True, num_examples=size)
    assert int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    labels = np.concatenate([b[1].numpy() for b in dataset.take(-(-3 * size // 4))])
    assert len(labels) >= 3 * size
    assert set(labels.tolist()) == set(range(len(LABELS)))


def test_corrupt_shard_is_named(data_dir, tmp_path):
    files = data.shard_files(str(data_dir), "train")
    broken = tmp_path / "data-00000-of-00001.tfrecord"
    content = pathlib.Path(files[0]).read_bytes()
    broken.write_bytes(content[:100] + b"\x00" * 50 + content[150:])
    with pytest.raises(data.UserError, match=f"{broken}: corrupt TFRecord shard"):
        data.guard_corruption([files[-1], str(broken)], lambda: list(
            data.make_dataset([files[-1], str(broken)], 8, False)))


def test_training_run_leaves_every_artifact(job_dir, data_dir):
    for name in ["model.keras", "export/saved_model.pb", "export/labels.txt", "labels.txt",
                 "metrics.json", "history.json", "curves.png", "confusion_matrix.png",
                 "waveforms.png", "spectrograms.png", "prediction.png", "report.html"]:
        assert (job_dir / name).exists(), name
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["parameters"] == models.build_model("tutorial", 3).count_params()
    assert 0 <= metrics["test_accuracy"] <= 1
    assert set(metrics["per_class"]) == set(LABELS)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["counts"]["test"]
    history = json.loads((job_dir / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_accuracy"]) == 2
    assert "Test accuracy" in (job_dir / "report.html").read_text() or \
        f"{metrics['test_accuracy']:.3f}" in (job_dir / "report.html").read_text()


def test_export_signatures_agree_and_match_the_keras_model(job_dir):
    loaded = tf.saved_model.load(str(job_dir / "export"))
    keras_model = tf.keras.models.load_model(job_dir / "model.keras")
    clip = wavs.read_clip(wavs.sample_clips("up", 1)[0])[0]
    spectrogram = audio.spectrogram(clip)[None]
    record = contract.serialize_example(spectrogram[0], 0, "up", "s", "p", len(clip))
    by_wave = loaded.signatures["serving_default"](waveform=tf.constant(clip[None]))
    by_spec = loaded.signatures["spectrogram"](spectrogram=tf.constant(spectrogram))
    by_example = loaded.signatures["examples"](examples=tf.constant([record]))
    expected = tf.nn.softmax(keras_model(spectrogram, training=False)).numpy()
    for outputs in (by_wave, by_spec, by_example):
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4)
        assert outputs["labels"].numpy().reshape(-1)[0].decode() == LABELS[int(expected.argmax())]


def test_compiled_waveform_signature_takes_any_length(job_dir):
    # The raw-audio path is XLA-compiled after padding; short, long and batched clips
    # must still match the uncompiled spectrogram signature.
    loaded = tf.saved_model.load(str(job_dir / "export"))
    graph = loaded.signatures["waveform"].graph.as_graph_def()
    compiled = [f for f in graph.library.function
                if f.attr.get("_XlaMustCompile") and f.attr["_XlaMustCompile"].b]
    assert compiled, "the waveform signature should run an XLA-compiled function"
    clips = [wavs.read_clip(p)[0] for p in wavs.sample_clips("yes", 2)]
    for waveform in ([clips[0][:7000]], [np.concatenate(clips)], [clips[0], clips[1]]):
        batch = np.stack(waveform).astype(np.float32)
        spectrogram = np.stack([audio.spectrogram(clip) for clip in batch])
        by_wave = loaded.signatures["waveform"](waveform=tf.constant(batch))
        by_spec = loaded.signatures["spectrogram"](spectrogram=tf.constant(spectrogram))
        np.testing.assert_allclose(by_wave["probabilities"].numpy(),
                                   by_spec["probabilities"].numpy(), atol=1e-4)


def test_predict_reports_good_files_and_names_bad_ones(job_dir, tmp_path, capsys):
    good = [str(p) for p in wavs.sample_clips("yes", 2)]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    code = predict.main(["--model-dir", str(job_dir), "--json", "--top-k", "2",
                         good[0], str(bad), good[1], "--plot", str(tmp_path / "p.png")])
    captured = capsys.readouterr()
    assert code == 1
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["path"] for line in lines] == good
    assert all(len(line["top_k"]) == 2 and line["label"] in LABELS for line in lines)
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5
    assert f"{bad}: unreadable audio" in captured.err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_and_evaluate_refuse_wrong_directories(job_dir, data_dir, tmp_path, capsys):
    clip = str(wavs.sample_clips("yes", 1)[0])
    assert predict.main(["--model-dir", str(tmp_path), clip]) == 2
    assert "no exported model here" in capsys.readouterr().err
    assert evaluate.main(["--data-dir", str(data_dir), "--job-dir", str(tmp_path)]) == 2
    assert "not a training job directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.txt").write_text("a\nb\n")
    assert evaluate.main(["--data-dir", str(other), "--job-dir", str(job_dir)]) == 2
    assert "differ from the model's" in capsys.readouterr().err


def test_evaluate_matches_the_training_runs_test_metrics(job_dir, data_dir):
    metrics = evaluate.run(["--data-dir", str(data_dir), "--job-dir", str(job_dir)])
    trained = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(trained["test_accuracy"])
    assert metrics["confusion_matrix"] == trained["confusion_matrix"]


TUTORIAL_FIELDS = {field.name: getattr(tutorial.RECIPE, field.name)
                   for field in dataclasses.fields(tutorial.RECIPE)}


@dataclasses.dataclass(frozen=True)
class DivergingRecipe(Recipe):
    """The tutorial recipe with a loss that diverges after a few steps."""

    def compile(self, net, train_size):
        step = tf.Variable(0.0, trainable=False)

        def loss(labels, logits):
            step.assign_add(1.0)
            plain = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, True)
            return tf.reduce_mean(plain) * tf.where(step > 2, np.nan, 1.0)

        net.compile(optimizer="adam", loss=loss, metrics=["accuracy"])


def test_nan_loss_stops_with_a_clear_message(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(models.REGISTRY, "diverging",
                        Architecture(tutorial.build, DivergingRecipe(**TUTORIAL_FIELDS)))
    code = task.main(["--data-dir", str(data_dir), "--job-dir", str(tmp_path / "j"),
                      "--model", "diverging", "--epochs", "3", "--verbose", "0",
                      "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert re.fullmatch(r"error: training stopped: the loss became NaN or infinite in epoch "
                        r"[1-3] \(try a lower --learning-rate\)", err[0])
    assert not (tmp_path / "j" / "model.keras").exists()


def test_killed_run_resumes_from_its_last_epoch(data_dir, tmp_path):
    job = tmp_path / "job"
    command = [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir),
               "--job-dir", str(job), "--model", "tutorial", "--epochs", "40",
               "--verbose", "0", "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    history = job / task.HISTORY_CSV
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        rows = history.read_text().splitlines() if history.exists() else []
        if len(rows) >= 3 and list((job / "checkpoints").glob("epoch-*.weights.h5")):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(task.read_history(str(job))["loss"])
    assert 2 <= done < 40
    resumed = subprocess.run(command[:-1] + ["--epochs", str(done + 1), "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from the backup" in resumed.stdout
    history = task.read_history(str(job))
    assert len(history["loss"]) == done + 1  # one more epoch, not a fresh start


CRASH = {"epoch": None, "at": "begin"}  # where a CrashingRecipe run dies (None: nowhere)


@dataclasses.dataclass(frozen=True)
class CrashingRecipe(Recipe):
    """The tutorial recipe (no early stop) that dies as epoch CRASH["epoch"] (from 0)
    begins or, with CRASH["at"] = "end", ends. The crash point is kept outside the
    recipe, so the resumed run has the same recipe (and fingerprint) as the killed one."""

    def callbacks(self):
        class Crash(tf.keras.callbacks.Callback):
            def _crash(self, epoch, at):
                if (epoch, at) == (CRASH["epoch"], CRASH["at"]):
                    raise RuntimeError("simulated crash")

            def on_epoch_begin(self, epoch, logs=None):
                self._crash(epoch, "begin")

            def on_epoch_end(self, epoch, logs=None):
                self._crash(epoch, "end")
        return [Crash()]


def test_backup_cut_short_by_a_kill_resumes_from_the_one_before(data_dir, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setitem(models.REGISTRY, "crashing", Architecture(
        tutorial.build, CrashingRecipe(**{**TUTORIAL_FIELDS, "patience": 100})))
    monkeypatch.setitem(CRASH, "epoch", 2)
    command = ["--data-dir", str(data_dir), "--job-dir", str(tmp_path / "job"),
               "--model", "crashing", "--epochs", "4", "--verbose", "0", "--no-report"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        task.run(command)
    checkpoints = tmp_path / "job" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "backup.json", "epoch-0001.weights.h5", "epoch-0002.weights.h5"]
    newest = checkpoints / "epoch-0002.weights.h5"
    data = newest.read_bytes()
    newest.write_bytes(data[:2048] + bytes(len(data) - 2048))  # as if killed mid-write
    monkeypatch.setitem(CRASH, "epoch", None)
    metrics = task.run(command)
    assert metrics["settings"]["epochs_run"] == 4
    printed = capsys.readouterr()
    assert f"warning: {newest}: unreadable backup (" in printed.err
    assert f"Resuming from the backup in {checkpoints}: epoch 2" in printed.out
    assert not checkpoints.exists()  # a finished run leaves no backup behind


def test_an_epoch_killed_after_its_history_row_is_repeated_not_lost(data_dir, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setitem(models.REGISTRY, "crashing", Architecture(
        tutorial.build, CrashingRecipe(**{**TUTORIAL_FIELDS, "patience": 100})))
    monkeypatch.setitem(CRASH, "epoch", 1)
    monkeypatch.setitem(CRASH, "at", "end")
    job = tmp_path / "job"
    command = ["--data-dir", str(data_dir), "--job-dir", str(job), "--model", "crashing",
               "--epochs", "3", "--verbose", "0", "--no-report"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        task.run(command)
    # The second epoch's row is written, its backup is not: the backup comes last.
    assert len(task.read_history(str(job))["loss"]) == 2
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == [
        "backup.json", "epoch-0001.weights.h5"]
    monkeypatch.setitem(CRASH, "epoch", None)
    metrics = task.run(command)
    assert "Resuming from the backup" in capsys.readouterr().out
    assert metrics["settings"]["epochs_run"] == 3
    assert len(task.read_history(str(job))["loss"]) == 3


def test_compare_trains_each_seed_and_reuses_finished_runs(data_dir, tmp_path, capsys):
    command = ["--data-dir", str(data_dir), "--work-dir", str(tmp_path), "--models",
               "tutorial", "--seeds", "7", "--clips", "3", "--epochs", "1"]
    first = compare.run(command)
    job = tmp_path / "tutorial-seed7"
    metrics = json.loads((job / "metrics.json").read_text())
    assert first[0]["runs"][0]["test_accuracy"] == metrics["test_accuracy"]
    assert first[0]["latency"]["p50_ms"] > 0
    assert first[0]["latency"]["rounds"] == compare.LATENCY_ROUNDS
    (job / "metrics.json").unlink()  # a reused run is not trained again
    again = compare.run(command + ["--reuse"])
    assert again[0]["runs"] == first[0]["runs"]
    assert not (job / "metrics.json").exists()
    table = capsys.readouterr().out
    assert "p50 / tutorial" in table and "1.00x" in table
    assert json.loads((tmp_path / "results.json").read_text())[0]["model"] == "tutorial"
    other = compare.run(command[:-1] + ["2", "--reuse"])  # other flags: not reused
    assert "was trained with another command; training again" in capsys.readouterr().out
    assert (job / "metrics.json").exists()
    assert other[0]["runs"][0]["command"].endswith("--epochs 2")


def test_input_benchmark_times_every_epoch_of_both_inputs(data_dir):
    from benchmarks import training as benchmark
    times = benchmark.epoch_times(str(data_dir), epochs=2, batch_size=4, seed=1, rounds=1)
    assert times["epochs"] == times["in_memory_epochs"] == 2
    assert times["streaming"] > 0 and times["in_memory"] > 0


def test_latency_rounds_load_each_model_once_and_rotate_the_order(tmp_path, monkeypatch):
    from benchmarks import training as benchmark
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"not read by the stand-in model")
    loads, calls = [], []

    class Recorder:  # stands in for predict.Predictor: records what runs when
        labels = ["only"]

        def __init__(self, model_dir):
            loads.append(model_dir)
            self.model_dir = model_dir

        def probabilities(self, data):
            calls.append(self.model_dir)
            return np.ones(1)

    monkeypatch.setattr(benchmark.predict, "Predictor", Recorder)
    figures = benchmark.interleaved_latency({"a": "A", "b": "B", "c": "C"}, [str(clip)] * 2,
                                            rounds=3, warmup=1)
    assert loads == ["A", "B", "C"]
    timed = calls[3:]  # after one warm-up call each
    firsts = [timed[index] for index in range(0, len(timed), 2)]
    assert firsts == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert all(f["rounds"] == 3 and f["clips"] == 2 for f in figures.values())


def test_benchmark_latency_alternates_rounds_and_reports_ratios(data_dir, job_dir, tmp_path,
                                                               capsys):
    from benchmarks import training as benchmark
    copy = shutil.copytree(job_dir, tmp_path / "copy")
    results = benchmark.run(["--data-dir", str(data_dir), "--job-dir", str(job_dir),
                             "--job-dir", str(copy), "--epochs", "1",
                             "--batch-size", "4", "--clips", "3", "--latency-rounds", "2"])
    figures = results["latency"]
    assert len(figures) == 2 and all(f["rounds"] == 2 and f["p50_ms"] > 0
                                     for f in figures.values())
    assert " 1.00x" in capsys.readouterr().out


def _damaged_copy(data_dir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    shards = sorted((copy / "train").glob("data-*"))
    damage(shards)
    return copy


@pytest.mark.parametrize("damage, message", [
    (lambda shards: shards[0].unlink(), r"train/data-00000-of-00002\.tfrecord: shard missing"),
    (lambda shards: shards[0].write_bytes(shards[0].read_bytes()[:5000]),
     r"train/data-00000-of-00002\.tfrecord: corrupt TFRecord shard"),
    (lambda shards: shutil.copy(shards[0], shards[0].with_name(
        "data-00000-of-00001.tfrecord")), r"data-00000-of-00001\.tfrecord: shard not written"),
    (lambda shards: shards[1].write_bytes(shards[0].read_bytes() * 2),
     r"train: \d+ records in the shards, metadata.json says \d+"),
])
def test_train_and_evaluate_refuse_shards_that_differ_from_the_metadata(
        data_dir, job_dir, tmp_path, capsys, damage, message):
    copy = _damaged_copy(data_dir, tmp_path, damage)
    code = task.main(["--data-dir", str(copy), "--job-dir", str(tmp_path / "j"),
                      "--model", "tutorial", "--epochs", "1", "--verbose", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "j" / "model.keras").exists()
    code = evaluate.main(["--data-dir", str(copy), "--job-dir", str(job_dir),
                          "--split", "train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err


def test_a_backup_of_another_run_is_refused_unless_restarted(data_dir, tmp_path, capsys,
                                                            monkeypatch):
    checkpoints = tmp_path / "ck"
    checkpoints.mkdir()
    (checkpoints / "notes.txt").write_text("not the trainer's")
    command = ["--data-dir", str(data_dir), "--job-dir", str(tmp_path / "job"),
               "--model", "crashing", "--epochs", "3", "--verbose", "0", "--no-report",
               "--checkpoint-dir", str(checkpoints)]
    monkeypatch.setitem(models.REGISTRY, "crashing", Architecture(
        tutorial.build, CrashingRecipe(**{**TUTORIAL_FIELDS, "patience": 100})))
    monkeypatch.setitem(CRASH, "epoch", 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        task.run(command)  # killed after its first epoch: its backup stays
    assert task.main(command + ["--seed", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {checkpoints}: the backups are of another run (seed differ); "
                   "pass --restart to train from the start, or another --checkpoint-dir"]
    monkeypatch.setitem(models.REGISTRY, "crashing", Architecture(
        tutorial.build, tutorial.RECIPE.with_overrides(patience=100)))
    metrics = task.run(command + ["--seed", "7", "--restart"])
    assert metrics["settings"]["epochs_run"] == 3
    assert "Resuming" not in capsys.readouterr().out
    assert [p.name for p in checkpoints.iterdir()] == ["notes.txt"]


def test_predict_takes_file_names_that_are_not_utf8(job_dir, tmp_path, capsys):
    clip = wavs.sample_clips("yes", 1)[0]
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff.wav")
    with open(odd, "wb") as handle:
        handle.write(clip.read_bytes())
    code = predict.main(["--model-dir", str(job_dir), os.fsdecode(odd), str(clip)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"{tmp_path}/caf\\xe9-\\xff.wav\t")
    assert out[1].startswith(f"{clip}\t")


def test_predict_refuses_labels_that_do_not_fit_the_model(job_dir, tmp_path, capsys):
    copy = tmp_path / "job"
    shutil.copytree(job_dir / "export", copy / "export")
    (copy / "export" / "labels.txt").write_text("no\nup\nyes\nextra\n")
    clip = str(wavs.sample_clips("yes", 1)[0])
    assert predict.main(["--model-dir", str(copy), clip]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {copy}: labels.txt has 4 labels but the model has 3 outputs "
                   "(labels.txt of another model?)"]
