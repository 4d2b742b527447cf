"""The stream builder: keywords and other words over background noise, with the truth."""

import numpy as np
import pytest

from tests import wavs
from trainer import streams

RATE = streams.SAMPLE_RATE


def _clips():
    keywords = [(label, wavs.read_clip(path)[0]) for label in ("yes", "no")
                for path in wavs.sample_clips(label, 3)]
    unknowns = [wavs.read_clip(path)[0] for path in wavs.sample_clips("left", 3)]
    noises = [wavs.read_clip(path)[0][:RATE * 5]
              for path in sorted((wavs.SAMPLE / "_background_noise_").glob("*.wav"))[:2]]
    return keywords, unknowns, noises


def test_stream_is_seeded_and_its_truth_says_where_each_clip_lies():
    keywords, unknowns, noises = _clips()
    first = streams.build_stream(keywords, unknowns, noises, duration_s=60, seed=3)
    again = streams.build_stream(keywords, unknowns, noises, duration_s=60, seed=3)
    other = streams.build_stream(keywords, unknowns, noises, duration_s=60, seed=4)
    np.testing.assert_array_equal(first.audio, again.audio)
    assert first.truth == again.truth
    assert first.truth != other.truth
    assert first.audio.dtype == np.float32 and first.audio.shape == (60 * RATE,)
    # One word per 3 s stride (1 s clip + up to 2 s gap): 20 in a minute, none overlapping.
    assert len(first.truth) == 20
    for earlier, later in zip(first.truth, first.truth[1:]):
        assert earlier.end_ms <= later.start_ms
    assert first.truth[-1].end_ms <= 60_000
    labels = [t.label for t in first.truth]
    assert set(labels) <= {"yes", "no", streams.UNKNOWN}
    assert streams.UNKNOWN in labels and "yes" in labels and "no" in labels
    # Gaps are random, not a fixed stride.
    offsets = {round(t.start_ms % 3000) for t in first.truth}
    assert len(offsets) > 10


def test_clips_are_laid_where_the_truth_says_over_noise():
    keywords, unknowns, noises = _clips()
    quiet = streams.build_stream(keywords, unknowns, [], duration_s=30, seed=1)
    noisy = streams.build_stream(keywords, unknowns, noises, duration_s=30, seed=1)
    by_label = {}
    for label, clip in keywords:
        by_label.setdefault(label, []).append(clip)
    for truth in quiet.truth:
        start = int(truth.start_ms * RATE / 1000)
        piece = quiet.audio[start:start + RATE]
        assert truth.end_ms - truth.start_ms == pytest.approx(1000, abs=1)
        if truth.label != streams.UNKNOWN:
            # The clip itself, faded in and out over 500 samples.
            middle = slice(1000, RATE - 1000)
            assert any(np.allclose(piece[middle], clip[middle], atol=1e-6)
                       for clip in by_label[truth.label])
    # Without noise the gaps are silent; with it, they never are.
    gap = slice(int(quiet.truth[0].end_ms * 16) + 10, int(quiet.truth[1].start_ms * 16) - 10)
    if gap.stop > gap.start:
        assert not quiet.audio[gap].any()
    quarter_seconds = noisy.audio[:len(noisy.audio) // 4000 * 4000].reshape(-1, 4000)
    assert (np.abs(quarter_seconds).max(axis=1) > 0).all()


def test_every_keyword_clip_is_used_before_any_repeats():
    keywords, _, _ = _clips()
    stream = streams.build_stream(keywords, [], [], duration_s=len(keywords) * 3, seed=0)
    assert len(stream.truth) == len(keywords)
    starts = [int(t.start_ms * RATE / 1000) for t in stream.truth]
    used = set()
    for start in starts:
        piece = stream.audio[start + 1000:start + RATE - 1000]
        matches = [i for i, (_, clip) in enumerate(keywords)
                   if np.allclose(piece, clip[1000:RATE - 1000], atol=1e-6)]
        assert matches
        used.add(matches[0])
    assert used == set(range(len(keywords)))


def test_mix_stream_keeps_a_keyword_at_the_very_start_and_one_cut_at_the_end():
    keywords, _, _ = _clips()
    clip = keywords[0][1]
    length = 3 * RATE
    stream = streams.mix_stream(length, [
        streams.Placement("yes", clip, length - RATE // 2),
        streams.Placement("no", clip, 0)])
    assert stream.truth == [streams.Truth("no", 0.0, 1000.0),
                            streams.Truth("yes", 2500.0, 3000.0)]
    np.testing.assert_allclose(stream.audio[1000:RATE - 1000], clip[1000:RATE - 1000])
    with pytest.raises(ValueError, match="outside"):
        streams.mix_stream(length, [streams.Placement("no", clip, length)])


def test_truth_csv_round_trip_and_bad_rows():
    truth = [streams.Truth("yes", 1000.0, 2000.0), streams.Truth("_unknown_", 4000.5, 5000.0)]
    assert streams.read_truth_csv(streams.format_truth_csv(truth)) == truth
    assert streams.read_truth_csv("no,10,20\nyes,0,5\n") == [
        streams.Truth("yes", 0.0, 5.0), streams.Truth("no", 10.0, 20.0)]
    with pytest.raises(ValueError, match="row 2: expected"):
        streams.read_truth_csv("label,start_ms,end_ms\nyes,10\n")
    with pytest.raises(ValueError, match="row 1: times must be numbers"):
        streams.read_truth_csv("yes,ten,20\n")
    with pytest.raises(ValueError, match="row 1: bad interval"):
        streams.read_truth_csv("yes,30,20\n")
