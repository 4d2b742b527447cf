"""Bounded work per input: hostile WAV headers are refused with a reason, cheaply."""

import io
import random
import resource
import struct
import time
import tracemalloc

import numpy as np
import pytest
import soundfile

from pipelines import audio
from tests import wavs


def pcm16(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 3000, int(seconds * rate)).astype("<i2")).tobytes()


@pytest.mark.parametrize("name,header,reason", [
    ("1 Hz", dict(rate=1), "sample rate 1 Hz outside 8000..192000 Hz"),
    ("7999 Hz", dict(rate=7999), "sample rate 7999 Hz outside"),
    ("2 GHz", dict(rate=2_000_000_000), "sample rate 2000000000 Hz outside"),
    ("40 channels", dict(channels=40), "40 channels \\(at most 8\\)"),
    ("0 channels", dict(channels=0), "unreadable audio|channels"),
])
def test_absurd_headers_are_refused_before_decoding(name, header, reason):
    data = wavs.riff_header(1, data=pcm16(0.5), **header)
    for decode in (audio.decode_wav, audio.decode_clip, audio.featurize, audio.probe,
                   lambda d: next(audio.read_blocks(d))):
        with pytest.raises(audio.AudioError, match=reason):
            decode(data)


def test_the_limits_themselves_are_accepted():
    for rate in (audio.MIN_SAMPLE_RATE, audio.MAX_SAMPLE_RATE):
        clip = audio.featurize(wavs.riff_header(1, rate=rate, data=pcm16(0.01, rate)))
        assert clip.num_samples == 160
    data = wavs.wav_bytes(np.zeros((1600, audio.MAX_CHANNELS), np.float32))
    assert audio.probe(data).channels == audio.MAX_CHANNELS


def test_zero_frames_and_a_rate_that_resamples_to_nothing():
    with pytest.raises(audio.AudioError, match="zero-length audio"):
        audio.featurize(wavs.riff_header(1))
    # Five frames at 192 kHz are under half a sample at 16 kHz: nothing is left to classify.
    few = wavs.riff_header(1, rate=192000, data=pcm16(5 / 192000, 192000))
    for decode in (audio.decode_wav, audio.featurize, lambda d: list(audio.read_blocks(d))):
        with pytest.raises(audio.AudioError, match="zero-length audio once resampled"):
            decode(few)
    six = wavs.riff_header(1, rate=192000, data=pcm16(6 / 192000, 192000))
    assert audio.decode_wav(six).shape == (1,)


def test_truncated_data_decodes_what_is_there():
    # The header promises 5 s, the file holds 0.2 s and half a sample.
    whole = wavs.wav_bytes(np.full(5 * 16000, 0.25, np.float32))
    cut = whole[:44 + 2 * 3200 + 1]
    clip = audio.featurize(cut)
    assert clip.num_samples == 3200
    np.testing.assert_allclose(clip.waveform[:3200], 0.25, atol=1e-4)
    assert not clip.waveform[3200:].any()


def test_decode_wav_refuses_a_recording_longer_than_its_limit():
    seconds = audio.MAX_DECODE_SECONDS + 1
    data = wavs.wav_bytes(np.zeros(seconds * 8000, np.float32), 8000, "PCM_U8")
    with pytest.raises(audio.AudioError, match=f"601 s long, over the {seconds - 1} s"):
        audio.decode_wav(data)
    # The same file as a clip, or in blocks, is fine.
    assert audio.featurize(data).num_samples == seconds * 16000
    assert sum(b.shape[0] for b in audio.read_blocks(data)) == seconds * 16000


class CountingReader(io.FileIO):
    """A file that remembers the furthest byte read from it."""
    furthest = 0

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.furthest = max(self.furthest, self.tell())
        return count


def test_a_ten_minute_file_is_featurised_from_its_first_second(tmp_path):
    rate, minutes = 22050, 10
    path = tmp_path / "ten_minutes.wav"
    second = np.random.default_rng(1).uniform(-0.5, 0.5, (rate, 2)).astype(np.float32)
    with soundfile.SoundFile(str(path), "w", rate, 2, "PCM_16") as out:
        for _ in range(minutes * 60):
            out.write(second)
    size = path.stat().st_size
    audio.featurize(wavs.wav_bytes(second[:100], rate))  # first-use allocations
    with CountingReader(str(path)) as reader:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            clip = audio.featurize(reader)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        furthest = reader.furthest
    assert clip.num_samples == minutes * 60 * 16000
    assert furthest < 1.2 * rate * 4 < size / 500  # 1.1 s of 16-bit stereo, of 53 MB
    # A read of 1.1 s (stereo float32, 194 KB), its mono mix and the resampled second.
    assert peak < 1_000_000
    assert elapsed < 2.0  # the whole file would take seconds to decode and resample


# --- fuzz: mutated headers -------------------------------------------------------------

FORMAT_TAGS = [0, 1, 2, 3, 6, 7, 0x11, 0x31, 0x55, 0xFFFE, 0xFFFF]
RATES = [0, 1, 7999, 8000, 11025, 44100, 192000, 192001, 2**31 - 1, 2**32 - 1]
CHANNELS = [0, 1, 2, 3, 8, 9, 40, 255, 65535]
BITS = [0, 1, 4, 8, 12, 16, 20, 24, 32, 48, 64, 65535]
SIZES = [0, 1, 2, 15, 16, 18, 40, 2**16, 2**31 - 1, 2**32 - 1]


def mutated_wav(rng: random.Random) -> bytes:
    """A WAV whose header fields were drawn or damaged at random."""
    tag, channels, rate, bits = 1, 1, 16000, 16
    fmt_size, data_size, riff_size = None, None, None
    for _ in range(rng.randint(1, 4)):
        field = rng.randrange(8)
        if field == 0:
            tag = rng.choice(FORMAT_TAGS)
        elif field == 1:
            channels = rng.choice(CHANNELS)
        elif field == 2:
            rate = rng.choice(RATES + [rng.randrange(2**32)])
        elif field == 3:
            bits = rng.choice(BITS)
        elif field == 4:
            fmt_size = rng.choice(SIZES)
        elif field == 5:
            data_size = rng.choice(SIZES)
        elif field == 6:
            riff_size = rng.choice(SIZES)
    block = (channels * bits // 8) & 0xFFFF
    byte_rate = (rate * block) & 0xFFFFFFFF
    if rng.random() < 0.3:
        block, byte_rate = rng.randrange(2**16), rng.randrange(2**32)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, block, bits)
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, mask, subformat GUID
        fmt += struct.pack("<HHI", 22, bits, rng.randrange(2**32)) + bytes(
            rng.randrange(256) for _ in range(16))
    payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 800, 6000])))
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt) if fmt_size is None else fmt_size)
    body += fmt
    if rng.random() < 0.2:
        body += b"LIST" + struct.pack("<I", rng.choice(SIZES)) + b"INFO"
    body += b"data" + struct.pack("<I", len(payload) if data_size is None else data_size)
    body += payload
    data = bytearray(b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size)
                     + body)
    if rng.random() < 0.3:  # flip bytes anywhere in the header
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, min(len(data), 80))] = rng.randrange(256)
    if rng.random() < 0.2:
        data = data[:rng.randrange(len(data) + 1)]
    return bytes(data)


def test_fuzzed_headers_decode_to_a_clip_or_are_refused_with_a_reason():
    rng = random.Random(20240611)
    files = [mutated_wav(rng) for _ in range(400)]
    outcomes = {"decoded": 0, "refused": 0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for data in files:
            try:
                clip = audio.featurize(data)
            except audio.AudioError as error:
                assert str(error).strip(), data[:64]
                outcomes["refused"] += 1
                continue
            outcomes["decoded"] += 1
            assert clip.num_samples >= 1
            assert clip.waveform.shape == (16000,) and clip.waveform.dtype == np.float32
            assert np.all(np.abs(clip.waveform) <= 1.0)
            assert np.all(np.isfinite(clip.spectrogram))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert outcomes["decoded"] > 20 and outcomes["refused"] > 100, outcomes
    assert elapsed < 10.0  # a few ms a file
    assert peak < 20_000_000  # the largest legal first read: 1.1 s of 192 kHz x 8 channels
    assert rss_growth_kb < 100_000
