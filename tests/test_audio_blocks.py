"""Reading recordings of any length: `read_blocks`, `decode_clip` and `probe`."""

import io
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

from pipelines import audio
from tests import wavs


class CountingReader(io.BytesIO):
    """A file object that remembers the furthest byte read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.furthest = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return chunk

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.furthest = max(self.furthest, self.tell())
        return count


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Real clips laid end to end and repeated (resampled to `rate`), one order a channel."""
    clips = [wavs.read_clip(p)[0] for label in ("yes", "stop", "left", "go")
             for p in wavs.sample_clips(label, 3)]
    rng = np.random.default_rng(seed)
    columns = []
    for _ in range(channels):
        order = rng.permutation(len(clips))
        joined = np.concatenate([clips[i] for i in order])
        joined = soxr.resample(joined, 16000, rate) if rate != 16000 else joined
        columns.append(np.resize(joined, int(round(seconds * rate))))
    samples = np.stack(columns, axis=1) if channels > 1 else columns[0]
    return (0.9 * samples).astype(np.float32)


@pytest.mark.parametrize("rate,channels,subtype", [
    (16000, 1, "PCM_16"), (44100, 2, "PCM_16"), (48000, 1, "FLOAT"), (8000, 3, "PCM_24")])
def test_blocks_joined_are_the_whole_file_decoded(rate, channels, subtype):
    data = wavs.wav_bytes(speech_like(7.3, rate, channels), rate, subtype)
    blocks = list(audio.read_blocks(data, block_samples=16000))
    assert all(block.dtype == np.float32 and block.ndim == 1 for block in blocks)
    assert [b.shape[0] for b in blocks[:-1]] == [16000] * (len(blocks) - 1)
    assert 0 < blocks[-1].shape[0] <= 16000
    joined = np.concatenate(blocks)
    # The streaming resampler gives the one-shot decode's samples exactly.
    np.testing.assert_array_equal(joined, audio.decode_wav(data))
    # And both are what a one-shot resample of the mixed-down file gives.
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = soxr.resample(samples.mean(axis=1), rate, 16000, quality="HQ")
    assert joined.shape == expected.shape == (audio.resampled_length(len(samples), rate),)
    np.testing.assert_allclose(joined, np.clip(expected, -1, 1), atol=1e-6)


def test_block_boundaries_add_no_clicks():
    # A 440 Hz tone at 44.1 kHz read in odd-sized blocks: every sample, at block edges
    # as everywhere else, stays on the tone as it should sound at 16 kHz.
    seconds, rate = 3, 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(seconds * rate) / rate)
    blocks = list(audio.read_blocks(wavs.wav_bytes(tone.astype(np.float32), rate, "FLOAT"),
                                    block_samples=1237))
    joined = np.concatenate(blocks)
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(joined.shape[0]) / 16000)
    inner = slice(200, -200)  # the file's own start and end are edges of the signal
    error = np.abs(joined - ideal)[inner]
    assert error.max() < 2e-3
    edges = np.cumsum([b.shape[0] for b in blocks[:-1]])
    steps = np.abs(np.diff(joined))
    assert steps[edges - 1].max() <= steps[inner].max() + 1e-6


def test_paths_and_file_objects_read_like_bytes(tmp_path):
    data = wavs.wav_bytes(speech_like(2.5, 22050), 22050)
    path = tmp_path / "long.wav"
    path.write_bytes(data)
    expected = np.concatenate(list(audio.read_blocks(data, 4000)))
    for source in (str(path), path, io.BytesIO(data)):
        np.testing.assert_array_equal(np.concatenate(list(audio.read_blocks(source, 4000))),
                                      expected)
    assert audio.probe(str(path)) == audio.AudioInfo(22050, 1, int(2.5 * 16000 / 16000 * 22050))
    assert audio.probe(path).duration == pytest.approx(2.5, abs=1e-4)


def test_clip_decoding_reads_only_the_first_second():
    rate, minutes = 44100, 3
    data = wavs.wav_bytes(speech_like(minutes * 60, rate, channels=2), rate)
    reader = CountingReader(data)
    waveform, num_samples = audio.decode_clip(reader)
    # 1 s of 16-bit stereo plus the resampler's margin, out of 3 minutes.
    bytes_per_second = rate * 2 * 2
    assert reader.furthest < 1.2 * bytes_per_second
    assert num_samples == minutes * 60 * 16000
    first = next(iter(audio.read_blocks(data, 16000)))
    np.testing.assert_array_equal(waveform, first)
    clip = audio.featurize(data)
    assert clip.num_samples == num_samples
    np.testing.assert_array_equal(clip.waveform, first)


@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.02])
def test_clip_of_a_short_file_is_the_whole_file(seconds):
    data = wavs.wav_bytes(speech_like(seconds, 48000), 48000)
    waveform, num_samples = audio.decode_clip(data)
    whole = audio.decode_wav(data)
    assert num_samples == whole.shape[0]
    np.testing.assert_array_equal(waveform, whole[:16000])


def peak_while_reading(path, block: int) -> tuple[int, int]:
    """(samples read, peak bytes allocated while reading `path` in blocks)."""
    tracemalloc.start()
    try:
        total = sum(b.shape[0] for b in audio.read_blocks(str(path), block))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return total, peak


def test_a_long_recording_costs_the_memory_of_a_few_blocks(tmp_path):
    rate, block = 48000, 16000 * 10
    minute = speech_like(60, rate, channels=2)
    paths = {}
    for minutes in (1, 5):
        paths[minutes] = tmp_path / f"{minutes}min.wav"
        with soundfile.SoundFile(str(paths[minutes]), "w", rate, 2, "PCM_16") as out:
            for _ in range(minutes):
                out.write(minute)
    peak_while_reading(paths[1], block)  # imports and first-use allocations
    total_1, peak_1 = peak_while_reading(paths[1], block)
    total_5, peak_5 = peak_while_reading(paths[5], block)
    assert (total_1, total_5) == (60 * 16000, 5 * 60 * 16000)
    # A block is 640 KB; a read is half a second of 48 kHz stereo (190 KB as float32).
    # The whole 5 minutes would be 19 MB at 16 kHz.
    assert peak_5 < 3 * block * 4
    assert peak_5 < 1.1 * peak_1


def test_a_refused_file_raises_before_the_first_block():
    bad = wavs.riff_header(1, 1, 4000, 16, b"\x00\x01" * 8000)
    blocks = audio.read_blocks(bad)
    with pytest.raises(audio.AudioError, match="sample rate 4000 Hz"):
        next(blocks)
    with pytest.raises(ValueError):
        next(audio.read_blocks(wavs.wav_bytes(np.zeros(10, np.float32)), 0))
