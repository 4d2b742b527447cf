"""benchmarks.scale's data making and measuring (the benchmark itself is run by hand)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks import scale
from pipelines import dataset
from tests import wavs


def test_copies_are_new_speakers_shifted_and_rescaled(tmp_path):
    source = wavs.copy_sample(tmp_path / "src", ("no", "yes"), per_label=3)
    folder = scale.make_scaled(source, tmp_path / "work", 3)
    clips = sorted(folder.glob("*/*.wav"))
    assert len(clips) == 3 * 6
    speakers = {dataset.speaker_id(path.name) for path in clips}
    originals = {dataset.speaker_id(path.name) for path in source.glob("*/*.wav")}
    assert originals < speakers and len(speakers) == 3 * len(originals)
    for original in sorted(source.glob("*/*.wav")):
        speaker = dataset.speaker_id(original.name)
        copy = folder / original.parent.name / original.name.replace(
            speaker, scale.copy_speaker(speaker, 1))
        before, _ = wavs.read_clip(original)
        after, _ = wavs.read_clip(copy)
        assert after.shape == before.shape and not np.allclose(after, before)
        # The same clip moved by at most 100 ms (silence where it moved from) and scaled
        # by at most 6 dB, up to 16-bit rounding, where the louder copy is not clipped.
        kept = np.abs(after) < 0.999
        fits = []
        for shift in range(-1600, 1601):
            moved = np.zeros_like(before)
            if shift >= 0:
                moved[shift:] = before[:len(before) - shift]
            else:
                moved[:shift] = before[-shift:]
            gain = float(moved[kept] @ after[kept]) / max(float(moved[kept] @ moved[kept]),
                                                          1e-12)
            fits.append((np.abs(after - gain * moved)[kept].max(), gain))
        error, gain = min(fits)
        assert error <= 2 / 32768
        assert 10 ** (-scale.MAX_GAIN_DB / 20) <= gain <= 10 ** (scale.MAX_GAIN_DB / 20)
    # Remade from the same copies: the 2x folder is the 3x one without copy 2.
    smaller = scale.make_scaled(source, tmp_path / "work", 2)
    assert len(list(smaller.glob("*/*.wav"))) == 12


def test_vary_stays_within_its_bounds():
    rng = np.random.default_rng(0)
    bump = 0.5 - np.abs(np.linspace(-0.5, 0.5, 16_000, dtype=np.float32))  # peak mid-clip
    for _ in range(20):
        varied = scale.vary(bump, rng)
        assert varied.shape == bump.shape
        gain = np.abs(varied).max() / np.abs(bump).max()  # the peak survives any shift
        limit = 10 ** (scale.MAX_GAIN_DB / 20)
        assert 1 / limit - 1e-6 <= gain <= limit + 1e-6
        peak = int(np.argmax(np.abs(varied)))
        assert abs(peak - 8000) <= 1600 + 1


def test_tree_rss_counts_this_process():
    assert scale.tree_rss(os.getpid()) > 10 * 2**20
