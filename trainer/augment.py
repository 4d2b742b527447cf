"""Training-time augmentation of keyword clips, as batched `tf.data` maps.

Waveform steps (`augment_waveform`):

1. `speed_perturb`: play each clip up to `max_speed_change` faster or slower (tempo and
   pitch together), a cheap stand-in for voices the training split does not have.
2. `time_shift`: move each clip by a random number of samples (zero fill), so the model
   does not learn where in the second a speaker starts talking.
3. `mix_background`: add a random one-second crop of a background-noise recording at a
   random signal-to-noise ratio, so the model learns to ignore taps, dishes and hum.

Spectrum steps (`augment_spectrum`, on the STFT magnitude):

4. `random_filter`: a random band-pass response, as microphones and rooms colour a voice.
5. `frequency_warp`: stretch or squeeze the spectrum along frequency (vocal tract length
   perturbation): formants move as between speakers, the timing stays.
6. `spec_augment`: SpecAugment time and frequency masks (the `kws` model masks log-mel
   bands inside the model instead, see `trainer.models.kws.SpecMask`).

`augment_dataset` chains them around `trainer.features.stft_magnitude`. How much of each
a model gets is an `Augmentation`, held by the model's recipe (`trainer.models`).
Every random draw is stateless (`tf.random.stateless_*`): the same seed gives the same
output, so a training run is repeatable.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import tensorflow as tf

from pipelines import contract
from trainer import features

_EPSILON = 1e-10  # keeps power ratios finite for silent clips


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How much of each step a recipe applies (0 turns a step off).

    Attributes:
      max_speed_change: largest relative speed change (`speed_perturb`).
      max_shift: largest time shift in samples (`time_shift`).
      noise_share: share of clips mixed with background noise (`mix_background`).
      snr_db_range: (lowest, highest) signal-to-noise ratio of the mix, dB.
      filter_share: share of clips given a random band-pass (`random_filter`).
      lowpass_hz, highpass_hz: corner ranges of that band-pass, drawn log-uniformly.
      warp_share: share of clips warped along frequency (`frequency_warp`).
      max_warp: largest relative stretch or squeeze of the warp.
      time_masks, max_time_mask, freq_masks, max_freq_mask: `spec_augment` on the STFT.
    """
    max_speed_change: float
    max_shift: int
    noise_share: float
    snr_db_range: tuple[float, float]
    filter_share: float
    lowpass_hz: tuple[float, float]
    highpass_hz: tuple[float, float]
    warp_share: float
    max_warp: float
    time_masks: int = 0
    max_time_mask: int = 0
    freq_masks: int = 0
    max_freq_mask: int = 0


class NoiseBank(NamedTuple):
    """Background recordings concatenated into one tensor, with where each one starts.

    Attributes:
      samples: float32 [total_samples], every recording end to end.
      starts: int32 [num_recordings], offset of each recording in `samples`.
      lengths: int32 [num_recordings], samples per recording (each >= one clip).
    """
    samples: tf.Tensor
    starts: tf.Tensor
    lengths: tf.Tensor


def noise_bank_from_arrays(recordings: list) -> NoiseBank:
    """Builds a `NoiseBank` from 1-D float arrays of 16 kHz audio.

    Args:
      recordings: waveforms of at least `contract.CLIP_SAMPLES` samples each; shorter
        ones are dropped because a one-second crop cannot be cut from them.

    Returns:
      The bank. Raises ValueError when no recording is long enough.
    """
    kept = [tf.reshape(tf.cast(r, tf.float32), [-1]) for r in recordings]
    kept = [r for r in kept if int(r.shape[0]) >= contract.CLIP_SAMPLES]
    if not kept:
        raise ValueError(f"no background recording has {contract.CLIP_SAMPLES} samples")
    lengths = [int(r.shape[0]) for r in kept]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return NoiseBank(tf.concat(kept, axis=0), tf.constant(starts, tf.int32),
                     tf.constant(lengths, tf.int32))


def _seeds(seed: tf.Tensor, count: int) -> tf.Tensor:
    """`count` independent stateless seeds ([count, 2]) derived from one."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=count)


def _chosen(batch: tf.Tensor, seed: tf.Tensor, share: float) -> tf.Tensor:
    """Boolean [batch, 1]: which clips a step with this `share` applies to."""
    return tf.random.stateless_uniform([batch, 1], seed) < share


def time_shift(waveform: tf.Tensor, seed: tf.Tensor,
               max_shift: int) -> tf.Tensor:
    """Shifts each clip by a uniform random offset in [-max_shift, max_shift] samples.

    Args:
      waveform: float32 [batch, samples].
      seed: int [2] stateless seed.
      max_shift: largest shift in samples; 0 returns the input.

    Returns:
      float32 [batch, samples]; samples moved in from outside the clip are zeros.
    """
    if max_shift <= 0:
        return waveform
    samples = tf.shape(waveform)[1]
    shift = tf.random.stateless_uniform([tf.shape(waveform)[0], 1], seed, -max_shift,
                                        max_shift + 1, dtype=tf.int32)
    # Output sample t reads input sample t - shift; indices outside the clip give zero.
    source = tf.range(samples)[tf.newaxis, :] - shift
    inside = (source >= 0) & (source < samples)
    taken = tf.gather(waveform, tf.clip_by_value(source, 0, samples - 1), batch_dims=1)
    return tf.where(inside, taken, tf.zeros_like(taken))


def speed_perturb(waveform: tf.Tensor, seed: tf.Tensor,
                  max_change: float) -> tf.Tensor:
    """Plays each clip at a random speed in [1 - max_change, 1 + max_change].

    Speed changes tempo and pitch together, as a shorter or longer vocal tract does,
    which is the variation between speakers that a small training set covers poorly.
    Resampling is linear interpolation from the clip's start (where the speech sits,
    since clips are zero-padded at the end).

    Args:
      waveform: float32 [batch, samples].
      seed: int [2] stateless seed.
      max_change: largest relative speed change; 0 returns the input.

    Returns:
      float32 [batch, samples]; positions past the end of the source are zeros.
    """
    if max_change <= 0:
        return waveform
    samples = tf.shape(waveform)[1]
    rate = tf.random.stateless_uniform([tf.shape(waveform)[0], 1], seed, 1.0 - max_change,
                                       1.0 + max_change)
    # Output sample t reads the source at t * rate, between two stored samples.
    source = tf.cast(tf.range(samples), tf.float32)[tf.newaxis, :] * rate
    left = tf.cast(tf.floor(source), tf.int32)
    weight = source - tf.floor(source)
    last = samples - 1
    below = tf.gather(waveform, tf.minimum(left, last), batch_dims=1)
    above = tf.gather(waveform, tf.minimum(left + 1, last), batch_dims=1)
    value = below * (1.0 - weight) + above * weight
    return tf.where(left < last, value, tf.zeros_like(value))


def random_noise_crops(bank: NoiseBank, batch: tf.Tensor, seed: tf.Tensor,
                       samples: int = contract.CLIP_SAMPLES) -> tf.Tensor:
    """Cuts `batch` random crops of `samples` samples from random recordings of `bank`.

    Args:
      bank: the background recordings.
      batch: number of crops (scalar int tensor).
      seed: int [2] stateless seed.
      samples: crop length.

    Returns:
      float32 [batch, samples].
    """
    pick_seed, offset_seed = tf.unstack(_seeds(seed, 2))
    count = tf.shape(bank.lengths)[0]
    which = tf.random.stateless_uniform([batch], pick_seed, 0, count, dtype=tf.int32)
    room = tf.gather(bank.lengths, which) - samples + 1
    # A uniform float scaled by each recording's room keeps the crop inside it.
    fraction = tf.random.stateless_uniform([batch], offset_seed)
    offset = tf.minimum(tf.cast(fraction * tf.cast(room, tf.float32), tf.int32), room - 1)
    first = tf.gather(bank.starts, which) + offset
    return tf.gather(bank.samples, first[:, tf.newaxis] + tf.range(samples)[tf.newaxis, :])


def mix_background(waveform: tf.Tensor, bank: NoiseBank, seed: tf.Tensor,
                   share: float,
                   snr_db_range: tuple[float, float] = (5.0, 25.0)) -> tf.Tensor:
    """Adds background noise to a share of the clips at a random signal-to-noise ratio.

    The noise crop is scaled so that 10 * log10(power(clip) / power(noise)) equals an SNR
    drawn uniformly from `snr_db_range`; power is the mean square over the whole clip.

    Args:
      waveform: float32 [batch, samples].
      bank: the background recordings.
      seed: int [2] stateless seed.
      share: probability that a clip gets noise (0 disables mixing).
      snr_db_range: (lowest, highest) SNR in dB.

    Returns:
      float32 [batch, samples]; clips without noise are returned unchanged.
    """
    if share <= 0:
        return waveform
    crop_seed, snr_seed, share_seed = tf.unstack(_seeds(seed, 3))
    batch, samples = tf.shape(waveform)[0], waveform.shape[1] or contract.CLIP_SAMPLES
    noise = random_noise_crops(bank, batch, crop_seed, samples)
    low, high = snr_db_range
    snr_db = tf.random.stateless_uniform([batch, 1], snr_seed, low, high)
    signal_power = tf.reduce_mean(tf.square(waveform), axis=1, keepdims=True)
    noise_power = tf.reduce_mean(tf.square(noise), axis=1, keepdims=True)
    gain = tf.sqrt(signal_power / (noise_power * tf.pow(10.0, snr_db / 10.0) + _EPSILON))
    chosen = _chosen(batch, share_seed, share)
    return waveform + tf.where(chosen, gain, 0.0) * noise


def _log_uniform(shape, seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    exponent = tf.random.stateless_uniform(shape, seed, tf.math.log(low), tf.math.log(high))
    return tf.exp(exponent)


def random_filter(magnitude: tf.Tensor, seed: tf.Tensor, share: float,
                  lowpass_hz: tuple[float, float] = (1_000.0, 8_000.0),
                  highpass_hz: tuple[float, float] = (50.0, 400.0)) -> tf.Tensor:
    """Multiplies a share of the clips' STFT magnitudes by a random band-pass response.

    Recordings of one word differ in colour as much as in voice: a phone held far away
    loses the highs, a laptop microphone the lows. Each chosen clip gets the magnitude
    response of a second-order Butterworth low-pass and high-pass pair,
    1 / sqrt(1 + (f / low_corner)^4) * 1 / sqrt(1 + (high_corner / f)^4), with corners
    drawn log-uniformly from the ranges. Filtering the magnitude per bin is filtering
    the waveform up to the STFT's frequency resolution (62.5 Hz).

    Args:
      magnitude: float32 [batch, frames, bins] STFT magnitude (bins from 0 Hz to 8 kHz).
      seed: int [2] stateless seed.
      share: probability that a clip is filtered (0 disables it).
      lowpass_hz: (lowest, highest) low-pass corner in Hz.
      highpass_hz: (lowest, highest) high-pass corner in Hz.

    Returns:
      float32 [batch, frames, bins]; clips not chosen are returned unchanged.
    """
    if share <= 0:
        return magnitude
    low_seed, high_seed, share_seed = tf.unstack(_seeds(seed, 3))
    batch, bins = tf.shape(magnitude)[0], magnitude.shape[-1] or contract.NUM_BINS
    hertz = tf.linspace(0.0, contract.SAMPLE_RATE / 2.0, bins)[tf.newaxis, :]
    low_corner = _log_uniform([batch, 1], low_seed, *lowpass_hz)
    high_corner = _log_uniform([batch, 1], high_seed, *highpass_hz)
    response = tf.math.rsqrt(1.0 + tf.pow(hertz / low_corner, 4.0)) * tf.math.rsqrt(
        1.0 + tf.pow(high_corner / tf.maximum(hertz, 1.0), 4.0))
    chosen = _chosen(batch, share_seed, share)
    return magnitude * tf.where(chosen, response, 1.0)[:, tf.newaxis, :]


def frequency_warp(magnitude: tf.Tensor, seed: tf.Tensor, share: float,
                   max_warp: float = 0.1) -> tf.Tensor:
    """Stretches or squeezes a share of the clips' spectra along frequency (VTLP).

    Vocal tract length perturbation (Jaitly and Hinton, 2013): output bin k takes the
    input at bin k / alpha (linear interpolation; zero where that lies above 8 kHz), with
    alpha drawn log-uniformly from [1 - max_warp, 1 + max_warp] per clip. Formants move
    as between a shorter and a longer vocal tract while the timing stays as recorded,
    which the speed change (pitch and tempo together) does not give.

    Args:
      magnitude: float32 [batch, frames, bins] STFT magnitude (bins from 0 Hz to 8 kHz).
      seed: int [2] stateless seed.
      share: probability that a clip is warped (0 disables it).
      max_warp: largest relative stretch or squeeze.

    Returns:
      float32 [batch, frames, bins]; clips not chosen are returned unchanged.
    """
    if share <= 0 or max_warp <= 0:
        return magnitude
    warp_seed, share_seed = tf.unstack(_seeds(seed, 2))
    batch, bins = tf.shape(magnitude)[0], magnitude.shape[-1] or contract.NUM_BINS
    alpha = _log_uniform([batch, 1], warp_seed, 1.0 - max_warp, 1.0 + max_warp)
    chosen = _chosen(batch, share_seed, share)
    source = tf.range(bins, dtype=tf.float32)[tf.newaxis, :] / tf.where(chosen, alpha, 1.0)
    lower = tf.minimum(tf.floor(source), bins - 1.0)
    weight = (source - lower)[:, :, tf.newaxis]  # [batch, bins, 1]
    lower = tf.cast(lower, tf.int32)
    upper = tf.minimum(lower + 1, bins - 1)
    inside = tf.cast(source <= bins - 1.0, magnitude.dtype)[:, :, tf.newaxis]
    by_bin = tf.transpose(magnitude, [0, 2, 1])  # [batch, bins, frames]
    warped = (tf.gather(by_bin, lower, batch_dims=1) * (1.0 - weight) +
              tf.gather(by_bin, upper, batch_dims=1) * weight) * inside
    return tf.transpose(warped, [0, 2, 1])


def _mask(shape: tf.Tensor, axis_length: tf.Tensor, count: int, max_width: int,
          seed: tf.Tensor) -> tf.Tensor:
    """Boolean [batch, axis_length]: True inside any of `count` random bands per row."""
    if count <= 0 or max_width <= 0:
        return tf.zeros([shape, axis_length], tf.bool)
    width_seed, start_seed = tf.unstack(_seeds(seed, 2))
    width = tf.random.stateless_uniform([shape, count, 1], width_seed, 0, max_width + 1,
                                        dtype=tf.int32)
    fraction = tf.random.stateless_uniform([shape, count, 1], start_seed)
    start = tf.cast(fraction * tf.cast(axis_length - width + 1, tf.float32), tf.int32)
    position = tf.range(axis_length)[tf.newaxis, tf.newaxis, :]
    return tf.reduce_any((position >= start) & (position < start + width), axis=1)


def spec_augment(spectrogram: tf.Tensor, seed: tf.Tensor, time_masks: int,
                 max_time_mask: int, freq_masks: int, max_freq_mask: int, fill: float = 0.0) -> tf.Tensor:
    """Sets random bands of frames and of frequency bins to `fill` (SpecAugment).

    Args:
      spectrogram: float32 [batch, frames, bins].
      seed: int [2] stateless seed.
      time_masks: bands of frames per clip; each is 0..max_time_mask frames wide.
      max_time_mask: widest time band.
      freq_masks: bands of bins per clip; each is 0..max_freq_mask bins wide.
      max_freq_mask: widest frequency band.
      fill: value written into the bands.

    Returns:
      float32 [batch, frames, bins].
    """
    time_seed, freq_seed = tf.unstack(_seeds(seed, 2))
    shape = tf.shape(spectrogram)
    in_time = _mask(shape[0], shape[1], time_masks, max_time_mask, time_seed)
    in_freq = _mask(shape[0], shape[2], freq_masks, max_freq_mask, freq_seed)
    masked = in_time[:, :, tf.newaxis] | in_freq[:, tf.newaxis, :]
    return tf.where(masked, tf.cast(fill, spectrogram.dtype), spectrogram)


def augment_waveform(waveform: tf.Tensor, bank: NoiseBank | None, seed: tf.Tensor,
                     settings: Augmentation) -> tf.Tensor:
    """Speed, shift and background noise on a batch of float32 [batch, 16000] clips."""
    shift_seed, noise_seed, _, speed_seed = tf.unstack(_seeds(seed, 4))
    waveform = speed_perturb(waveform, speed_seed, settings.max_speed_change)
    waveform = time_shift(waveform, shift_seed, settings.max_shift)
    if bank is not None:
        waveform = mix_background(waveform, bank, noise_seed, settings.noise_share,
                                  settings.snr_db_range)
    return waveform


def augment_spectrum(magnitude: tf.Tensor, seed: tf.Tensor,
                     settings: Augmentation) -> tf.Tensor:
    """Band-pass, frequency warp and masks on a batch of [batch, 124, 129] |STFT|."""
    mask_seed = _seeds(seed, 4)[2]
    # Folded in rather than split off, so the waveform steps keep their draws.
    filter_seed, warp_seed = (tf.random.experimental.stateless_fold_in(
        tf.cast(seed, tf.int64), index) for index in (5, 6))
    magnitude = random_filter(magnitude, filter_seed, settings.filter_share,
                              settings.lowpass_hz, settings.highpass_hz)
    magnitude = frequency_warp(magnitude, warp_seed, settings.warp_share, settings.max_warp)
    return spec_augment(magnitude, mask_seed, settings.time_masks, settings.max_time_mask,
                        settings.freq_masks, settings.max_freq_mask)


def augment_clips(waveform: tf.Tensor, bank: Optional[tf.Tensor], pair_seed: tf.Tensor,
                  settings: Augmentation) -> tf.Tensor:
    """A batch of clips (float32 [batch, 16000]) augmented as training augments them:
    their |STFT| (float32 [batch, 124, 129])."""
    magnitude = features.stft_magnitude(augment_waveform(waveform, bank, pair_seed, settings))
    return augment_spectrum(magnitude, pair_seed, settings)


def augment_dataset(dataset: tf.data.Dataset, bank: NoiseBank | None,
                    settings: Augmentation, seed: int = 0) -> tf.data.Dataset:
    """Augments (waveform batch, label batch) pairs into (|STFT| batch, label batch).

    Args:
      dataset: yields (float32 [batch, 16000], labels).
      bank: background recordings, or None.
      settings: how much of each step to apply.
      seed: base seed. Batch seeds come from `tf.data.Dataset.random` re-seeded on
        every iteration, so each epoch draws new augmentations and a run is repeatable.

    Returns:
      A dataset of (float32 [batch, 124, 129], labels).
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def apply(batch, pair_seed):
        waveform, label = batch
        return augment_clips(waveform, bank, pair_seed, settings), label

    return tf.data.Dataset.zip((dataset, seeds)).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
