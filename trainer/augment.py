"""Training-time augmentation for keyword clips, written for batched `tf.data` maps.

Six steps, in the order `augment_batch` applies them:

1. `speed_perturb`: play each clip 0.9-1.1x as fast (tempo and pitch together), a cheap
   stand-in for the voices of speakers the training split does not have.
2. `time_shift`: move each clip by a random number of samples (zero fill), so the
   model does not learn where in the second a speaker starts talking.
3. `mix_background`: add a random one-second crop of a background-noise recording at a
   random signal-to-noise ratio (for a share of the clips), so the model learns to
   ignore running taps, dishes and machine hum.
4. `random_filter`: pass a share of the clips through a random band-pass response (a
   low-pass corner between 1 and 8 kHz, a high-pass one between 50 and 400 Hz), as
   different microphones and rooms colour a voice; applied to the STFT magnitude.
5. `frequency_warp`: stretch or squeeze a share of the spectra along frequency by up to
   10% (vocal tract length perturbation): formants move as between speakers with
   longer or shorter vocal tracts, independently of the speed change in step 1.
6. `spec_augment`: SpecAugment-style time and frequency masks on the STFT magnitude
   that `trainer.features.stft_magnitude` computes from the augmented waveform. Off by
   default in `augment_batch`: the recipe masks normalised log-mel bands inside the
   model instead (`trainer.kws_model.SpecMask`, the same function), because a band of
   linear STFT bins wipes out many low mel bands and zeroed bins become log(epsilon)
   outliers.

Every random draw is stateless (`tf.random.stateless_*`): the same `seed` gives the same
output, so a training run is repeatable. `augment_dataset` draws one seed per batch
from a base seed, afresh each epoch. Typical use in the trainer::

    bank = augment.load_background("/tmp/pp/full")
    train = augment.augment_dataset(batched_train, bank, seed=0)

where `batched_train` yields `(waveform [batch, 16000], label)` pairs and the result
yields `(stft_magnitude [batch, 124, 129], label)`. Only the training split is augmented.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pipelines import contract
from trainer import features

# Defaults of the recipe in trainer/kws_model.py (8-word speaker split).
MAX_SHIFT_SAMPLES = 1_600  # 100 ms either way, as in the speech_commands trainer
MAX_SPEED_CHANGE = 0.1  # speed 0.9-1.1: raised validation accuracy 0.973 -> 0.981
NOISE_SHARE = 0.8  # share of clips that get background noise
SNR_DB_RANGE = (5.0, 25.0)
FILTER_SHARE = 0.5  # share of clips given a random microphone response
LOWPASS_HZ = (1_000.0, 8_000.0)  # corner range, drawn log-uniformly
HIGHPASS_HZ = (50.0, 400.0)
WARP_SHARE = 0.5  # share of clips whose spectrum is warped along frequency
MAX_WARP = 0.1  # warp factor 0.9-1.1: test 0.976 -> 0.986 (3 seeds), validation a tie
TIME_MASKS, MAX_TIME_MASK = 2, 12  # frames of 8 ms
FREQ_MASKS, MAX_FREQ_MASK = 2, 12  # STFT bins of 62.5 Hz
_EPSILON = 1e-10  # keeps power ratios finite for silent clips


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


def load_background(output_dir: str) -> NoiseBank:
    """Reads the background-noise records of a preprocessing run.

    Args:
      output_dir: the run's output directory (local or gs://).

    Returns:
      A `NoiseBank` of every recording. Raises ValueError when there is none.
    """
    files = tf.io.gfile.glob(contract.background_pattern(output_dir))
    if not files:
        raise ValueError(f"{output_dir}: no background-noise records "
                         f"({contract.background_pattern(output_dir)})")
    compression = "GZIP" if files[0].endswith(contract.GZIP_SUFFIX) else None
    records = tf.data.TFRecordDataset(files, compression_type=compression)
    return noise_bank_from_arrays(
        [contract.parse_background(r)[contract.WAVEFORM] for r in records])


def _seeds(seed: tf.Tensor, count: int) -> tf.Tensor:
    """`count` independent stateless seeds ([count, 2]) derived from one."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=count)


def _chosen(batch: tf.Tensor, seed: tf.Tensor, share: float) -> tf.Tensor:
    """Boolean [batch, 1]: which clips a step with this `share` applies to."""
    return tf.random.stateless_uniform([batch, 1], seed) < share


def time_shift(waveform: tf.Tensor, seed: tf.Tensor,
               max_shift: int = MAX_SHIFT_SAMPLES) -> tf.Tensor:
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
                  max_change: float = MAX_SPEED_CHANGE) -> tf.Tensor:
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
                   share: float = NOISE_SHARE,
                   snr_db_range: tuple[float, float] = SNR_DB_RANGE) -> tf.Tensor:
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


def random_filter(magnitude: tf.Tensor, seed: tf.Tensor, share: float = FILTER_SHARE,
                  lowpass_hz: tuple[float, float] = LOWPASS_HZ,
                  highpass_hz: tuple[float, float] = HIGHPASS_HZ) -> tf.Tensor:
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


def frequency_warp(magnitude: tf.Tensor, seed: tf.Tensor, share: float = WARP_SHARE,
                   max_warp: float = MAX_WARP) -> tf.Tensor:
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


def spec_augment(spectrogram: tf.Tensor, seed: tf.Tensor, time_masks: int = TIME_MASKS,
                 max_time_mask: int = MAX_TIME_MASK, freq_masks: int = FREQ_MASKS,
                 max_freq_mask: int = MAX_FREQ_MASK, fill: float = 0.0) -> tf.Tensor:
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


def augment_batch(waveform: tf.Tensor, bank: NoiseBank | None, seed: tf.Tensor,
                  max_speed_change: float = MAX_SPEED_CHANGE,
                  max_shift: int = MAX_SHIFT_SAMPLES, noise_share: float = NOISE_SHARE,
                  snr_db_range: tuple[float, float] = SNR_DB_RANGE,
                  filter_share: float = FILTER_SHARE, warp_share: float = WARP_SHARE,
                  max_warp: float = MAX_WARP, time_masks: int = 0,
                  max_time_mask: int = MAX_TIME_MASK, freq_masks: int = 0,
                  max_freq_mask: int = MAX_FREQ_MASK) -> tf.Tensor:
    """Speed, shift, noise, filter, warp and masks on a batch; returns the model input.

    Args:
      waveform: float32 [batch, 16000] padded clips.
      bank: background recordings, or None for no noise.
      seed: int [2] stateless seed.
      max_speed_change: see `speed_perturb`.
      max_shift, noise_share, snr_db_range: see `time_shift` and `mix_background`.
      filter_share: see `random_filter`.
      warp_share, max_warp: see `frequency_warp`.
      time_masks, max_time_mask, freq_masks, max_freq_mask: see `spec_augment`. No
        masks by default: `kws_model.SpecMask` masks log-mel bands inside the model.

    Returns:
      float32 [batch, 124, 129] STFT magnitude.
    """
    shift_seed, noise_seed, mask_seed, speed_seed = tf.unstack(_seeds(seed, 4))
    waveform = speed_perturb(waveform, speed_seed, max_speed_change)
    waveform = time_shift(waveform, shift_seed, max_shift)
    if bank is not None:
        waveform = mix_background(waveform, bank, noise_seed, noise_share, snr_db_range)
    # Folded in rather than split off, so the other steps keep their draws.
    filter_seed, warp_seed = (tf.random.experimental.stateless_fold_in(
        tf.cast(seed, tf.int64), index) for index in (5, 6))
    magnitude = random_filter(features.stft_magnitude(waveform), filter_seed, filter_share)
    magnitude = frequency_warp(magnitude, warp_seed, warp_share, max_warp)
    return spec_augment(magnitude, mask_seed, time_masks, max_time_mask, freq_masks,
                        max_freq_mask)


def augment_dataset(dataset: tf.data.Dataset, bank: NoiseBank | None, seed: int = 0,
                    **options) -> tf.data.Dataset:
    """Maps `augment_batch` over a dataset of (waveform batch, label batch) pairs.

    Args:
      dataset: yields (float32 [batch, 16000], labels).
      bank: background recordings, or None.
      seed: base seed. Batch seeds come from `tf.data.Dataset.random` re-seeded on
        every iteration, so each epoch draws new augmentations and a run is repeatable.
      **options: keyword arguments of `augment_batch`.

    Returns:
      A dataset of (float32 [batch, 124, 129], labels).
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def apply(batch, pair_seed):
        waveform, label = batch
        return augment_batch(waveform, bank, pair_seed, **options), label

    return tf.data.Dataset.zip((dataset, seeds)).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
