"""TensorFlow versions of the audio features, for tf.data and for the exported model.

`stft_magnitude` is the in-graph twin of `pipelines.audio.spectrogram` (tested to agree
within 1e-4): the exported model's raw-audio signature runs it, so audio sent to the
model is featurised exactly as the preprocessing pipeline featurised the training data.
"""

from __future__ import annotations

import tensorflow as tf

from pipelines import contract


def pad_or_trim(waveform: tf.Tensor) -> tf.Tensor:
    """[batch, n] float32 -> [batch, 16000]: first second kept, zero-padded at the end."""
    waveform = waveform[:, :contract.CLIP_SAMPLES]
    missing = contract.CLIP_SAMPLES - tf.shape(waveform)[1]
    return tf.pad(waveform, [[0, 0], [0, tf.maximum(missing, 0)]])


def stft_magnitude(waveform: tf.Tensor) -> tf.Tensor:
    """[batch, n] float32 waveforms at 16 kHz -> [batch, 124, 129] |STFT|."""
    padded = pad_or_trim(tf.cast(waveform, tf.float32))
    return tf.abs(tf.signal.stft(padded, frame_length=contract.FRAME_LENGTH,
                                 frame_step=contract.FRAME_STEP,
                                 fft_length=contract.FFT_LENGTH))
