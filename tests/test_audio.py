"""Pure functions: decoding, resampling and the spectrogram (parity with tf.signal.stft)."""

import numpy as np
import pytest
import soxr
import tensorflow as tf

from pipelines import audio, contract
from tests import wavs


def tf_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """The tutorial's get_spectrogram, verbatim in spirit."""
    waveform = tf.convert_to_tensor(waveform[:16000], tf.float32)
    padded = tf.concat([waveform, tf.zeros([16000 - tf.shape(waveform)[0]])], 0)
    return tf.abs(tf.signal.stft(padded, frame_length=255, frame_step=128)).numpy()


@pytest.fixture(scope="module")
def real_clips():
    return [wavs.read_clip(path)[0] for label in ("yes", "stop", "left")
            for path in wavs.sample_clips(label, 4)]


def test_window_is_tensorflows_default():
    np.testing.assert_allclose(audio.hann_window(), tf.signal.hann_window(255).numpy(),
                               atol=1e-6)  # TF computes it in float32
    np.testing.assert_allclose(audio.hann_window(256),
                               tf.signal.hann_window(256).numpy(), atol=1e-6)
    # The odd-length "periodic" window is the symmetric one: it ends where it starts.
    assert audio.hann_window()[-1] == pytest.approx(0.0, abs=1e-12)


def test_spectrogram_matches_tf_signal_stft_on_real_clips(real_clips):
    for clip in real_clips:
        ours = audio.spectrogram(clip)
        assert ours.shape == contract.SPECTROGRAM_SHAPE == (124, 129)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, tf_spectrogram(clip), atol=1e-4, rtol=0)


@pytest.mark.parametrize("length", [1, 8000, 15999, 16000, 24000])
def test_spectrogram_pads_and_trims_like_the_tutorial(real_clips, length):
    clip = np.resize(real_clips[0], length).astype(np.float32)
    np.testing.assert_allclose(audio.spectrogram(clip), tf_spectrogram(clip), atol=1e-4)


def test_decoded_pcm16_equals_tensorflow_decode_wav():
    path = wavs.sample_clips("yes", 1)[0]
    data = path.read_bytes()
    expected = tf.audio.decode_wav(data, desired_channels=1).audio[:, 0].numpy()
    np.testing.assert_array_equal(audio.decode_wav(data), expected)


@pytest.mark.parametrize("subtype,tolerance", [
    ("PCM_U8", 1 / 64), ("PCM_24", 1e-4), ("PCM_32", 1e-4), ("FLOAT", 1e-6)])
def test_other_sample_formats_decode_to_the_same_audio(real_clips, subtype, tolerance):
    clip = real_clips[1]
    decoded = audio.decode_wav(wavs.wav_bytes(clip, subtype=subtype))
    assert decoded.dtype == np.float32 and decoded.shape == clip.shape
    np.testing.assert_allclose(decoded, clip, atol=tolerance)


def test_stereo_is_mixed_down_to_mono(real_clips):
    clip = real_clips[2]
    stereo = np.stack([clip, np.zeros_like(clip)], axis=1)
    np.testing.assert_allclose(audio.decode_wav(wavs.wav_bytes(stereo, subtype="FLOAT")),
                               clip / 2, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(real_clips, rate):
    clip = real_clips[3]
    resampled = soxr.resample(clip, 16000, rate)
    decoded = audio.decode_wav(wavs.wav_bytes(resampled, rate, subtype="FLOAT"))
    assert abs(decoded.shape[0] - clip.shape[0]) <= 1
    n = min(decoded.shape[0], clip.shape[0])
    # Band-limited round trip: the spectrogram below the lower Nyquist frequency survives.
    keep = int(129 * min(rate, 16000) / 16000 * 0.9)
    ours = audio.spectrogram(decoded[:n])[:, :keep]
    reference = audio.spectrogram(clip[:n])[:, :keep]
    assert np.abs(ours - reference).max() < 0.05 * reference.max()


def test_resampler_removes_content_above_the_new_nyquist():
    # A 7 kHz tone at 44.1 kHz is inside the 8 kHz band; a 12 kHz tone must vanish
    # rather than alias down to 4 kHz.
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)
    decoded = audio.decode_wav(wavs.wav_bytes(tone, 44100, subtype="FLOAT"))
    assert np.sqrt(np.mean(decoded[1000:-1000] ** 2)) < 1e-3


@pytest.mark.parametrize("name,reason", [
    ("empty.wav", "empty file"),
    ("truncated.wav", "unreadable audio"),
    ("text.wav", "not an audio file this reads"),
    ("mp3_in_wav.wav", "unreadable audio"),
    ("zero_length.wav", "zero-length audio"),
    ("nan.wav", "NaN or infinite samples"),
])
def test_broken_files_are_refused_with_a_reason(name, reason):
    with pytest.raises(audio.AudioError, match=reason):
        audio.decode_wav(wavs.broken_files()[name])


def test_featurize_keeps_the_original_length(real_clips):
    short = real_clips[0][:12000]
    clip = audio.featurize(wavs.wav_bytes(short, subtype="FLOAT"))
    assert clip.num_samples == 12000
    assert clip.waveform.shape == (16000,) and not clip.waveform[12000:].any()
    np.testing.assert_allclose(clip.spectrogram, tf_spectrogram(short), atol=1e-4)
