"""The model registry: each architecture is one module (builder + recipe) and one line."""

import subprocess
import sys

import keras
import pytest

from pipelines import contract, preprocess
from tests import wavs
from trainer import models, task
from trainer.models import Architecture, Recipe, kws, tutorial

LABELS = ["no", "yes"]


def test_every_entry_has_a_builder_and_a_recipe_of_the_one_type():
    assert models.names() == ["kws", "tutorial"]
    assert models.DEFAULT_MODEL == kws.NAME
    for name in models.names():
        entry = models.get(name)
        assert isinstance(entry.recipe, Recipe)
        assert entry.build(3).output_shape == (None, 3)
    assert models.get_recipe("tutorial") is tutorial.RECIPE
    assert kws.RECIPE.needs_waveforms and not tutorial.RECIPE.needs_waveforms
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build_model("nope", 3)


def test_recipe_rejects_an_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(epochs=1, batch_size=2, learning_rate=0.1, optimizer="sgd")


def _tiny(num_labels, **_):
    """What a new architecture module holds: a builder ..."""
    return keras.Sequential([
        keras.Input(shape=contract.SPECTROGRAM_SHAPE, name="spectrogram"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(num_labels),
    ], name="tiny")


TINY_RECIPE = Recipe(epochs=1, batch_size=8, learning_rate=1e-2)  # ... and its recipe


def test_a_new_architecture_is_one_registry_line(tmp_path, monkeypatch):
    root = wavs.copy_sample(tmp_path / "wav", LABELS, per_label=6)
    out = tmp_path / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "25", "--test-percent", "25"])
    monkeypatch.setitem(models.REGISTRY, "tiny", Architecture(_tiny, TINY_RECIPE))
    assert "tiny" in task.build_parser().format_help()
    metrics = task.run(["--data-dir", str(out), "--job-dir", str(tmp_path / "job"),
                        "--model", "tiny", "--verbose", "0", "--no-report"])
    assert metrics["model"] == "tiny"
    assert metrics["parameters"] == _tiny(len(LABELS)).count_params()
    assert metrics["settings"]["epochs_run"] == 1
    assert (tmp_path / "job" / "export" / "saved_model.pb").exists()


def test_saved_kws_model_loads_with_plain_keras_after_importing_the_package(tmp_path):
    path = tmp_path / "model.keras"
    net = kws.build(3)
    kws.RECIPE.compile(net, train_size=64)
    net.save(path)
    code = ("import keras, trainer.models; "
            f"print(keras.models.load_model({str(path)!r}).count_params())")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split()[-1] == str(net.count_params())
    bare = subprocess.run([sys.executable, "-c", code.replace(", trainer.models", "")],
                          capture_output=True, text=True, timeout=300)
    assert bare.returncode != 0 and "LogMel" in bare.stderr  # why the import is needed
