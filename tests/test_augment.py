"""Tests of trainer/augment.py: shapes, determinism, noise level and masking."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipelines import contract
from trainer import augment, data
from trainer.models import kws

SEED = tf.constant([3, 7], tf.int64)


def _speech(batch: int = 4) -> tf.Tensor:
    """Clips with a loud middle and a quiet rest, like padded speech."""
    rng = np.random.default_rng(0)
    clips = rng.normal(0, 0.01, (batch, contract.CLIP_SAMPLES))
    clips[:, 4_000:12_000] += rng.normal(0, 0.2, (batch, 8_000))
    return tf.constant(clips, tf.float32)


def _bank() -> augment.NoiseBank:
    # Recording i holds i * 100000 + 0, 1, 2, ...: a crop reveals where it came from.
    lengths = [20_000, 35_000, 16_000]
    return augment.noise_bank_from_arrays(
        [np.arange(n, dtype=np.float32) + i * 100_000 for i, n in enumerate(lengths)])


def _noise_bank() -> augment.NoiseBank:
    rng = np.random.default_rng(1)
    return augment.noise_bank_from_arrays(
        [rng.normal(0, scale, 40_000).astype(np.float32) for scale in (0.05, 0.5)])


def test_time_shift_moves_content_within_limit_and_is_deterministic():
    impulse = np.zeros((64, contract.CLIP_SAMPLES), np.float32)
    impulse[:, 8_000] = 1.0
    shifted = augment.time_shift(tf.constant(impulse), SEED, max_shift=1_600).numpy()
    assert shifted.shape == impulse.shape and shifted.dtype == np.float32
    positions = shifted.argmax(axis=1)
    assert np.all(shifted.sum(axis=1) == 1.0)  # nothing lost, nothing duplicated
    assert np.all(np.abs(positions - 8_000) <= 1_600)
    assert len(set(positions)) > 10  # shifts differ between clips
    again = augment.time_shift(tf.constant(impulse), SEED, max_shift=1_600).numpy()
    np.testing.assert_array_equal(shifted, again)
    other = augment.time_shift(tf.constant(impulse), SEED + 1, max_shift=1_600).numpy()
    assert not np.array_equal(shifted, other)


def test_time_shift_fills_with_zeros():
    ones = tf.ones((8, contract.CLIP_SAMPLES))
    shifted = augment.time_shift(ones, SEED, max_shift=500).numpy()
    zeros_per_clip = (shifted == 0).sum(axis=1)
    assert zeros_per_clip.max() <= 500 and zeros_per_clip.max() > 0
    # Zeros sit only at one end: the clip was moved, not holed.
    for row, zeros in zip(shifted, zeros_per_clip):
        assert np.all(row[:zeros] == 0) or np.all(row[len(row) - zeros:] == 0)


def test_speed_perturb_scales_pitch_and_length_within_limit():
    t = np.arange(contract.CLIP_SAMPLES) / contract.SAMPLE_RATE
    tone = np.zeros((16, contract.CLIP_SAMPLES), np.float32)
    tone[:, :8_000] = np.sin(2 * np.pi * 400 * t[:8_000])
    out = augment.speed_perturb(tf.constant(tone), SEED, max_change=0.1).numpy()
    ends = np.array([np.nonzero(np.abs(row) > 1e-6)[0].max() + 1 for row in out])
    rates = 8_000 / ends
    assert np.all((rates > 0.9 - 0.01) & (rates < 1.1 + 0.01)) and rates.std() > 0.02
    # The tone's pitch moves by the same factor as the length.
    peaks = np.abs(np.fft.rfft(out[:, :7_000], axis=1)).argmax(axis=1) * 16_000 / 7_000
    np.testing.assert_allclose(peaks / 400, rates, atol=0.01)
    np.testing.assert_array_equal(out, augment.speed_perturb(tf.constant(tone), SEED, 0.1))
    np.testing.assert_array_equal(augment.speed_perturb(tf.constant(tone), SEED, 0.0), tone)


def test_noise_crops_are_contiguous_slices_of_one_recording():
    crops = augment.random_noise_crops(_bank(), 50, SEED).numpy()
    assert crops.shape == (50, contract.CLIP_SAMPLES)
    np.testing.assert_array_equal(np.diff(crops, axis=1), 1.0)
    recordings = (crops[:, 0] // 100_000).astype(int)
    assert set(recordings) == {0, 1, 2}
    ends = crops[:, -1] % 100_000
    assert np.all(ends < np.array([20_000, 35_000, 16_000])[recordings])


@pytest.mark.parametrize("snr_range", [(0.0, 5.0), (10.0, 20.0)])
def test_mixed_noise_has_requested_snr(snr_range):
    clean = _speech(64)
    noisy = augment.mix_background(clean, _noise_bank(), SEED, share=1.0,
                                   snr_db_range=snr_range).numpy()
    noise = noisy - clean.numpy()
    snr = 10 * np.log10(np.mean(clean.numpy() ** 2, axis=1) / np.mean(noise ** 2, axis=1))
    assert np.all(snr >= snr_range[0] - 0.01) and np.all(snr <= snr_range[1] + 0.01)
    assert snr.max() - snr.min() > 0.5 * (snr_range[1] - snr_range[0])  # spread, not fixed


def test_noise_share_controls_how_many_clips_change():
    clean = _speech(200)
    bank = _noise_bank()
    unchanged = augment.mix_background(clean, bank, SEED, share=0.0).numpy()
    np.testing.assert_array_equal(unchanged, clean.numpy())
    mixed = augment.mix_background(clean, bank, SEED, share=0.5).numpy()
    changed = np.any(mixed != clean.numpy(), axis=1).mean()
    assert 0.35 < changed < 0.65


def test_random_filter_cuts_highs_and_lows_of_a_share_of_clips():
    magnitude = tf.ones([400, 124, contract.NUM_BINS])
    filtered = augment.random_filter(magnitude, SEED, share=0.5).numpy()
    changed = ~np.all(filtered == 1.0, axis=(1, 2))
    assert 0.4 < changed.mean() < 0.6
    response = filtered[changed][:, 0, :]  # the same response in every frame
    np.testing.assert_array_equal(filtered[changed][:, 5, :], response)
    hertz = np.linspace(0, contract.SAMPLE_RATE / 2, contract.NUM_BINS)
    band = (hertz > 700) & (hertz < 900)  # inside both corner ranges' pass bands
    assert (response[:, band] > 0.5).all()
    assert (response[:, -1] < 0.75).all()  # 8 kHz: at or past every low-pass corner
    assert (response[:, 0] < 1e-3).all() and (response <= 1.0).all()
    np.testing.assert_array_equal(filtered, augment.random_filter(magnitude, SEED, 0.5))
    np.testing.assert_array_equal(augment.random_filter(magnitude, SEED, 0.0), magnitude)


def test_frequency_warp_moves_a_share_of_peaks_by_at_most_the_warp():
    magnitude = np.zeros([400, 124, contract.NUM_BINS], np.float32)
    magnitude[:, :, 60] = 1.0  # one tone at 3.7 kHz
    warped = augment.frequency_warp(tf.constant(magnitude), SEED, share=0.5,
                                    max_warp=0.1).numpy()
    peaks = warped[:, 0, :].argmax(axis=1)
    moved = peaks != 60
    assert 0.35 < moved.mean() < 0.65  # alpha near 1 can leave a peak in place
    assert (np.abs(peaks - 60) <= 6).all() and np.unique(peaks).size > 5
    assert (peaks[moved] > 60).any() and (peaks[moved] < 60).any()
    np.testing.assert_array_equal(warped[:, 0, :], warped[:, 100, :])  # every frame alike
    np.testing.assert_array_equal(
        warped, augment.frequency_warp(tf.constant(magnitude), SEED, 0.5, 0.1))
    same = augment.frequency_warp(tf.constant(magnitude), SEED, share=0.0).numpy()
    np.testing.assert_array_equal(same, magnitude)
    squeezed = augment.frequency_warp(tf.ones([50, 3, contract.NUM_BINS]), SEED,
                                      share=1.0, max_warp=0.1).numpy()
    top = squeezed[:, 0, -1]  # 8 kHz reads above Nyquist when squeezed: zero there
    assert ((top == 0.0) | np.isclose(top, 1.0)).all() and (top == 0.0).any()


def test_spec_augment_masks_bands_and_keeps_the_rest():
    spectrogram = tf.random.stateless_uniform((16, 124, 129), [1, 2], 1.0, 2.0)
    masked = augment.spec_augment(spectrogram, SEED, time_masks=2, max_time_mask=10,
                                  freq_masks=1, max_freq_mask=7, fill=0.0).numpy()
    original = spectrogram.numpy()
    zero = masked == 0.0
    np.testing.assert_array_equal(masked[~zero], original[~zero])
    full_frames = zero.all(axis=2)  # frames masked in every bin
    full_bins = zero.all(axis=1)  # bins masked in every frame
    assert np.all(full_frames.sum(axis=1) <= 20) and np.all(full_bins.sum(axis=1) <= 7)
    assert full_frames.any() and full_bins.any()
    # Every zero is explained by a masked frame or a masked bin.
    explained = full_frames[:, :, None] | full_bins[:, None, :]
    np.testing.assert_array_equal(zero, explained)
    again = augment.spec_augment(spectrogram, SEED, 2, 10, 1, 7).numpy()
    np.testing.assert_array_equal(masked, again)


def test_spec_augment_without_masks_is_identity():
    spectrogram = tf.ones((2, 124, 129))
    out = augment.spec_augment(spectrogram, SEED, time_masks=0, max_time_mask=12,
                               freq_masks=0, max_freq_mask=12)
    np.testing.assert_array_equal(out.numpy(), spectrogram.numpy())


def test_augment_dataset_shapes_determinism_and_fresh_epochs():
    waveforms = _speech(8)
    labels = tf.range(8, dtype=tf.int64)
    batched = tf.data.Dataset.from_tensor_slices((waveforms, labels)).batch(4)

    def epochs(seed):
        settings = dataclasses.replace(kws.RECIPE.augmentation, time_masks=1, max_time_mask=12)
        dataset = augment.augment_dataset(batched, _noise_bank(), settings, seed=seed)
        return [[x.numpy() for x, _ in dataset] for _ in range(2)]

    first, repeat = epochs(5), epochs(5)
    assert first[0][0].shape == (4,) + contract.SPECTROGRAM_SHAPE
    assert first[0][0].dtype == np.float32
    for a, b in zip(first, repeat):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0][0], first[1][0])  # epoch 2 draws anew
    assert not np.array_equal(first[0][0], epochs(6)[0][0])


def test_load_background_reads_records(tmp_path):
    folder = tmp_path / contract.BACKGROUND
    folder.mkdir()
    with tf.io.TFRecordWriter(str(folder / "data-00000-of-00001.tfrecord")) as writer:
        writer.write(contract.serialize_background(np.ones(20_000, np.float32), "a.wav"))
        writer.write(contract.serialize_background(np.ones(500, np.float32), "short.wav"))
    bank = data.load_background(str(tmp_path))
    assert bank.lengths.numpy().tolist() == [20_000]  # too-short recording dropped
    with pytest.raises(ValueError, match="no background-noise records"):
        data.load_background(str(tmp_path / "missing"))
