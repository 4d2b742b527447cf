"""Tests of trainer/models/kws.py and the training pieces its recipe uses."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from pipelines import contract
from trainer import export, training
from trainer.models import kws

MAX_PARAMS = 250_000


def _spectrograms(batch: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 5, (batch,) + contract.SPECTROGRAM_SHAPE).astype(np.float32)


def test_output_shape_and_parameter_budget():
    model = kws.build(8)
    assert model.input_shape == (None,) + contract.SPECTROGRAM_SHAPE
    assert model(_spectrograms()).shape == (3, 8)
    assert model.count_params() <= MAX_PARAMS


def test_stem_strides_cut_positions_not_parameters():
    default = kws.build(8)
    strided = kws.build(8, stem_strides=(4, 2))
    assert strided.count_params() == default.count_params()
    assert strided(_spectrograms()).shape == (3, 8)
    assert strided.get_layer("stem").output.shape[1] == -(-contract.NUM_FRAMES // 4)
    assert default.get_layer("stem").output.shape[1] == -(-contract.NUM_FRAMES // 2)


def _trained(model: keras.Model) -> keras.Model:
    """`model` after one training step, which moves the BN statistics off their start."""
    kws.RECIPE.with_overrides(epochs=1).compile(model, train_size=1)
    model.fit(_spectrograms(4), np.arange(4), epochs=1, verbose=0)
    return model


def test_single_conv_first_stage_keeps_shapes():
    residual = kws.build(8, first_stage="residual")
    single = kws.build(8, first_stage="conv")
    # One 3x3 16->16 convolution and its BN (4 x 16 numbers) fewer.
    assert residual.count_params() - single.count_params() == 9 * 16 * 16 + 4 * 16
    assert single.get_layer("stage1_relu").output.shape == \
        residual.get_layer("stage1_out").output.shape
    with pytest.raises(ValueError, match="first_stage"):
        kws.build(8, first_stage="none")


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = _trained(kws.build(8))  # the round trip carries BN statistics
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _spectrograms()
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.get_layer("spec_mask").get_config()["max_freq_mask"] == 6


def test_log_mel_matches_a_direct_computation():
    x = _spectrograms(2)
    layer = kws.LogMel(num_mel_bins=32, epsilon=1e-6)
    matrix = tf.signal.linear_to_mel_weight_matrix(32, contract.NUM_BINS,
                                                   contract.SAMPLE_RATE, 20.0, 7_600.0)
    expected = np.log(x @ matrix.numpy() + 1e-6)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape((None, 124, 129)) == (None, 124, 32)


def test_spec_mask_only_in_training():
    layer = kws.SpecMask(time_masks=2, max_time_mask=10, freq_masks=2,
                               max_freq_mask=5, seed=1)
    x = tf.ones((4, 124, 40))
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    masked = layer(x, training=True).numpy()
    assert (masked == 0).any()
    assert ((masked == 0).all(axis=2).sum(axis=1) <= 20).all()
    assert ((masked == 0).all(axis=1).sum(axis=1) <= 10).all()


def test_recipe_overrides_and_compiled_training_lowers_loss():
    keras.utils.set_random_seed(0)
    recipe = kws.RECIPE.with_overrides(epochs=10, warmup_epochs=1, learning_rate=3e-3)
    assert recipe.epochs == 10 and recipe.batch_size == kws.RECIPE.batch_size
    # No dropout: with 8 channels it makes single-batch losses jump by a third.
    model = kws.build(4, channels=(8, 8, 8), dropout=0.0,
                      spec_mask={"time_masks": 0, "freq_masks": 0})
    recipe.compile(model, train_size=8)
    x, y = _spectrograms(8), np.arange(8) % 4
    x[y == 1] *= 0.01  # give the classes something to tell them apart
    history = model.fit(x, y, batch_size=8, epochs=recipe.epochs, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_weight_average_tracks_swaps_and_finalises():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign([[1.0], [1.0]])
    callback = training.WeightAverage(decay=0.5)
    callback.set_model(model)
    callback.on_train_begin()
    model.layers[0].kernel.assign([[3.0], [3.0]])
    callback.on_train_batch_end(0)
    # Step 1: decay = min(0.5, 2 / 11); average = d * 1 + (1 - d) * 3.
    decay = 2.0 / 11.0
    expected = decay * 1.0 + (1 - decay) * 3.0
    callback.on_test_begin()
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), expected, rtol=1e-6)
    callback.on_test_end()
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), 3.0)
    callback.on_train_end()
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("first_stage, first_conv", [("residual", "stage1_conv1"),
                                                     ("conv", "stage1_conv")])
def test_folded_model_matches_and_has_no_conv_batch_norms(first_stage, first_conv):
    model = _trained(kws.build(8, first_stage=first_stage))
    folded = export.fold_batch_norm(model)
    x = _spectrograms()
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    norms = [layer.name for layer in folded.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms == ["mel_norm"]  # it follows the log, not a convolution
    assert folded.get_layer("stem").use_bias and folded.get_layer(first_conv).use_bias
