"""The default model end to end: augmented training from a run with background noise."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipelines import audio, preprocess
from tests import wavs
from trainer import models, predict, settings, task
from trainer.models import kws

LABELS = ["left", "no", "yes"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", LABELS, per_label=10)
    noise = root / "_background_noise_"
    noise.mkdir()
    for path in sorted((wavs.SAMPLE / "_background_noise_").glob("*.wav"))[:2]:
        shutil.copy(path, noise / path.name)
    out = tmp_path_factory.mktemp("prep") / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "20", "--test-percent", "20"])
    return out


@pytest.fixture(scope="module")
def job_dir(data_dir, tmp_path_factory):
    job = tmp_path_factory.mktemp("job") / "job"
    task.run(["--data-dir", str(data_dir), "--job-dir", str(job), "--epochs", "2",
              "--batch-size", "8", "--verbose", "0", "--no-report"])
    return job


def test_default_model_is_the_small_keyword_model():
    assert models.DEFAULT_MODEL == kws.NAME
    assert models.build_model(kws.NAME, 8).count_params() <= 250_000


def test_default_run_trains_the_kws_recipe(job_dir):
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["model"] == kws.NAME
    expected = json.loads(json.dumps({**kws.RECIPE.settings(), "epochs": 2, "batch_size": 8}))
    assert {key: metrics["settings"][key] for key in expected} == expected
    assert metrics["settings"]["epochs_run"] == 2  # no early stopping cuts the schedule
    assert metrics["parameters"] == models.build_model(kws.NAME, 3).count_params()


def test_exported_folded_model_matches_the_keras_model(job_dir):
    keras_model = tf.keras.models.load_model(job_dir / "model.keras")
    paths = wavs.sample_clips("no", 2)
    clips = [wavs.read_clip(p)[0] for p in paths]
    spectrograms = np.stack([audio.spectrogram(clip) for clip in clips])
    expected = tf.nn.softmax(keras_model(spectrograms, training=False)).numpy()
    serving = tf.saved_model.load(str(job_dir / "export"))
    by_wave = serving.signatures["serving_default"](waveform=tf.constant(np.stack(clips)))
    np.testing.assert_allclose(by_wave["probabilities"].numpy(), expected, atol=1e-4)
    # Batch normalisation after each convolution is folded away in the export.
    names = [v.name for v in serving.variables]
    assert not any("stem_bn" in name for name in names)
    predictor = predict.Predictor(str(job_dir))
    np.testing.assert_allclose(predictor.probabilities(paths[0].read_bytes()), expected[0], atol=1e-4)


def test_training_batches_are_full_spectrogram_batches(data_dir):
    recipe = models.get_recipe(kws.NAME).with_overrides(batch_size=4)
    run = settings.from_flags(task.build_parser().parse_args(
        ["--data-dir", str(data_dir), "--job-dir", "x"]))
    files = sorted(str(p) for p in (data_dir / "train").glob("*"))
    size = json.loads((data_dir / "metadata.json").read_text())["counts"]["train"]["total"]
    steps = recipe.steps_per_epoch(size)
    assert steps == size // 4
    # Endless: three epochs' worth of batches, every one full.
    batches = list(recipe.train_dataset(files, run, LABELS).take(3 * steps))
    assert len(batches) == 3 * steps
    assert all(spectrogram.shape == (4, 124, 129) for spectrogram, _ in batches)
    assert {int(label) for _, labels in batches for label in labels} <= set(range(len(LABELS)))


def test_kws_needs_stored_waveforms(tmp_path, capsys):
    root = wavs.copy_sample(tmp_path / "data", LABELS, per_label=4)
    out = tmp_path / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "25", "--test-percent", "25", "--no-waveforms"])
    code = task.main(["--data-dir", str(out), "--job-dir", str(tmp_path / "job")])
    assert code == 2
    assert "needs stored waveforms" in capsys.readouterr().err
