"""The keyword-spotting setting: `--unknown-percent` and `--silence-percent`.

Pure functions first (sizes, the sample threshold, the noise crops), then the sampling
transform under TestPipeline, then end to end on real clips and noise recordings.
"""

import collections
import pathlib
import shutil

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import audio, contract, dataset, preprocess, transforms
from tests import wavs
from tests.test_preprocess import read_split

WANTED = ["no", "yes"]
OTHERS = ["down", "up"]
NOISE = ["running_tap.wav", "white_noise.wav"]
SPLIT_FLAGS = ["--val-percent", "30", "--test-percent", "30"]


# --- pure functions -----------------------------------------------------------------

@pytest.mark.parametrize("count,percent,size", [
    (0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (1000, 1.1, 11), (37, 25, 10),
    (5, 0, 0), (4, 100, 4)])
def test_share_is_tensorflows_ceil(count, percent, size):
    assert dataset.share(count, percent) == size


def test_sample_threshold_keeps_the_lowest_ranks_and_caps_at_what_there_is():
    ranks = [50, 10, 40, 30, 20]
    assert dataset.sample_threshold(ranks, 10, 30) == 30  # ceil(3) -> 10, 20, 30
    assert dataset.sample_threshold(ranks, 10, 100) == 50  # asks for 10, there are 5
    assert dataset.sample_threshold(ranks, 0, 30) == -1
    assert dataset.sample_threshold([], 10, 30) == -1


def test_sampling_rank_depends_on_folder_name_and_seed_only():
    rank = dataset.sampling_rank("/a/up/0c540988_nohash_0.wav", 42)
    assert rank == dataset.sampling_rank("gs://b/x/up/0c540988_nohash_0.wav", 42)
    assert rank != dataset.sampling_rank("/a/up/0c540988_nohash_0.wav", 7)
    assert rank != dataset.sampling_rank("/a/down/0c540988_nohash_0.wav", 42)


def test_classify_with_unknown():
    root = "/data"
    for path in ("/data/up/a.wav", "/data/_unknown_/left_a_nohash_0.wav.wav"):
        assert dataset.classify(path, root, ["yes"], unknown=True).label == "_unknown_"
    assert dataset.classify("/data/yes/a.wav", root, ["yes"], unknown=True).label == "yes"
    assert dataset.classify("/data/_silence_/0.wav", root, ["yes"], unknown=True).label is None
    assert dataset.classify("/data/up/a.wav", root, ["yes"]).label is None  # option off
    # without --labels every word folder is wanted: only _unknown_/ is unknown
    assert dataset.classify("/data/up/a.wav", root, None, unknown=True).label == "up"


def test_split_bounds_divide_a_recording_without_overlap():
    bounds = [dataset.split_bounds(1000, split, 10, 20) for split in contract.SPLITS]
    assert bounds == [(0, 700), (700, 800), (800, 1000)]


def test_silence_crops_stay_in_their_split_and_are_dealt_to_recordings_in_turn():
    length = 30 * contract.SAMPLE_RATE
    for split in contract.SPLITS:
        start, end = dataset.split_bounds(length, split)
        crops = [dataset.silence_crops(r, 3, length, split, 8) for r in range(3)]
        assert [len(c) for c in crops] == [3, 3, 2]
        for crop in (c for per_recording in crops for c in per_recording):
            assert start <= crop.start and crop.start + crop.length <= end
            assert crop.length == contract.CLIP_SAMPLES and 0 <= crop.gain <= 1
        assert crops[0] == dataset.silence_crops(0, 3, length, split, 8)  # deterministic
        assert crops[0] != dataset.silence_crops(0, 3, length, split, 8, seed=7)
    gains = [c.gain for c in dataset.silence_crops(0, 1, length, contract.TRAIN, 400)]
    assert min(gains) < 0.05 and max(gains) > 0.95  # some nearly silent, some loud
    # a split's part shorter than a clip gives what there is (zero-padded later)
    assert dataset.silence_crops(0, 1, 10_000, contract.VAL, 1) == [
        dataset.Crop(8000, 1000, dataset.silence_crops(0, 1, 10_000, contract.VAL, 1)[0].gain)]


# --- TestPipeline: the sampling transform -------------------------------------------

def test_sample_unknown_takes_the_share_of_each_split_and_skips_the_rest():
    candidates = [(split, f"/d/up/{split}{i}_nohash_0.wav")
                  for split, n in (("train", 12), ("val", 3), ("test", 2)) for i in range(n)]
    wanted = {"train": 20, "val": 10}  # test has no wanted examples: no unknown either
    expected = []
    for split in contract.SPLITS:
        ranked = sorted((dataset.sampling_rank(p, 42), (s, p)) for s, p in candidates if s == split)
        expected += [c for _, c in ranked[:dataset.share(wanted.get(split, 0), 50)]]
    assert len(expected) == 10 + 3
    with TestPipeline() as pipeline:
        counts = pipeline | "Counts" >> beam.Create(list(wanted.items()))
        sampled, skipped = (pipeline
                            | "Candidates" >> beam.Create(candidates)
                            | transforms.SampleUnknown(counts, 50, 42))
        assert_that(sampled, equal_to(expected), label="Sampled")
        assert_that(skipped, equal_to([dataset.UNKNOWN_NOT_SAMPLED] * 4), label="Skipped")


# --- end to end ---------------------------------------------------------------------

@pytest.fixture
def keyword_dir(tmp_path):
    """2 wanted words, 2 other words, _unknown_/ and _silence_/ folders, 2 noise recordings."""
    root = wavs.copy_sample(tmp_path / "data", WANTED + OTHERS, per_label=12)
    (root / "_unknown_").mkdir()
    for clip in wavs.sample_clips("left", 4):  # named as in Speech Commands' _unknown_
        shutil.copy(clip, root / "_unknown_" / f"left_{clip.name}.wav")
    (root / "_silence_").mkdir()  # ready-cut clips: not a label, skipped
    shutil.copy(wavs.sample_clips("go", 1)[0], root / "_silence_" / "0.wav")
    (root / "_background_noise_").mkdir()
    for name in NOISE:  # real recordings, 10 s excerpts
        shutil.copy(wavs.SAMPLE / "_background_noise_" / name, root / "_background_noise_")
    return root


def unknown_candidates(root: pathlib.Path) -> dict[str, list[str]]:
    """Split -> paths of the clips that may become `_unknown_`, by their speaker."""
    paths = [p for folder in OTHERS + ["_unknown_"] for p in (root / folder).glob("*.wav")]
    by_split = collections.defaultdict(list)
    for path in paths:
        split = dataset.split_for_speaker(dataset.speaker_id(str(path)), 30, 30)
        by_split[split].append(str(path))
    return by_split


@pytest.mark.parametrize("runner", [
    [], ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]],
    ids=["in_memory", "multi_processing"])
def test_end_to_end_unknown_and_silence(keyword_dir, tmp_path, capsys, runner):
    """Both DirectRunner modes (the second pickles every DoFn, as Dataflow does)."""
    out = tmp_path / "out"
    metadata = preprocess.run(["--data-dir", str(keyword_dir), "--output-dir", str(out),
                               "--labels", "yes,no", "--unknown-percent", "50",
                               "--silence-percent", "25", *SPLIT_FLAGS, *runner])
    labels = ["_silence_", "_unknown_", "no", "yes"]
    assert (out / "labels.txt").read_text().split() == labels == metadata["labels"]
    assert metadata["unknown_percent"] == 50 and metadata["silence_percent"] == 25

    records = {split: read_split(out, split) for split in contract.SPLITS}
    candidates = unknown_candidates(keyword_dir)
    noise = {p.name: audio.decode_wav(p.read_bytes())
             for p in (keyword_dir / "_background_noise_").glob("*.wav")}
    sampled = 0
    for split in contract.SPLITS:
        by_label = collections.Counter(r["label_name"].decode() for r in records[split])
        assert by_label == collections.Counter(metadata["counts"][split]["per_label"])
        wanted = by_label["yes"] + by_label["no"]
        assert wanted > 0
        # TF's sizes: ceil(P% of the split's wanted words), unknown capped by what there is
        assert by_label["_unknown_"] == min(dataset.share(wanted, 50), len(candidates[split]))
        assert by_label["_silence_"] == dataset.share(wanted, 25)
        sampled += by_label["_unknown_"]
        # ... and they are the candidates of lowest rank: the same sample on every runner
        lowest = sorted(candidates[split], key=lambda p: dataset.sampling_rank(p, 42))
        assert sorted(r["path"].decode() for r in records[split]
                      if r["label_name"] == b"_unknown_") == sorted(
                          lowest[:by_label["_unknown_"]])
        for record in records[split]:
            label, path = record["label_name"].decode(), record["path"].decode()
            assert labels[record["label"]] == label
            if label == "_unknown_":  # other words keep their speaker's split
                assert path in candidates[split]
                assert record["speaker"].decode() == dataset.speaker_id(path)
            if label == "_silence_":
                check_silence(record, split, noise)
    assert sampled < sum(map(len, candidates.values()))  # some were left out

    # every file is accounted for once; the silence clips are not files
    files = [p for p in keyword_dir.rglob("*") if p.is_file()]
    assert metadata["files_read"] == len(files) == 12 * 4 + 4 + 1 + 2
    assert metadata["examples_written"] == 24 + sampled
    assert metadata["silence_written"] == sum(
        metadata["counts"][s]["per_label"]["_silence_"] for s in contract.SPLITS)
    assert metadata["skipped_by_reason"] == {
        "unknown word not sampled": len(files) - 2 - 1 - 24 - sampled,
        "label not selected": 1}
    assert (sum(len(r) for r in records.values())
            == metadata["examples_written"] + metadata["silence_written"])
    printed = capsys.readouterr().out
    assert f"plus {metadata['silence_written']} _silence_ examples cut" in printed


def check_silence(record: dict, split: str, noise: dict) -> None:
    """A `_silence_` record is a crop of its split's part of a noise file, scaled."""
    path = record["path"].decode()
    recording, fragment = path.split("#")
    values = dict(item.split("=") for item in fragment.split(","))
    start, gain = int(values["start"]), float(values["gain"])
    waveform = noise[pathlib.Path(recording).name]
    begin, end = dataset.split_bounds(waveform.shape[0], split, 30, 30)
    assert begin <= start and start + contract.CLIP_SAMPLES <= end
    assert 0 <= gain <= 1
    assert record["speaker"] == b"_silence_" and record["num_samples"] == 16000
    expected = waveform[start:start + contract.CLIP_SAMPLES] * np.float32(gain)
    np.testing.assert_array_equal(record["waveform"], expected)
    np.testing.assert_allclose(record["spectrogram"], audio.spectrogram(expected), atol=1e-6)


def test_silence_without_a_noise_folder_is_one_line_and_exit_2(keyword_dir, tmp_path, capsys):
    shutil.rmtree(keyword_dir / "_background_noise_")
    code = preprocess.main(["--data-dir", str(keyword_dir), "--output-dir", str(tmp_path / "o"),
                            "--labels", "yes,no", "--silence-percent", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(keyword_dir) in err[0] and "needs a _background_noise_/ folder" in err[0]


@pytest.mark.parametrize("flags,message", [
    (["--labels", "yes,no,up,down", "--unknown-percent", "10"], "needs audio files of other"),
    (["--labels", "yes,_unknown_", "--unknown-percent", "10"], "leave it out of --labels"),
    (["--labels", "yes,_silence_", "--silence-percent", "10"], "leave it out of --labels"),
    (["--labels", "yes,no", "--unknown-percent", "-1"], "must be >= 0"),
])
def test_bad_keyword_options_are_one_line_and_exit_2(keyword_dir, tmp_path, capsys, flags,
                                                      message):
    shutil.rmtree(keyword_dir / "_unknown_")
    code = preprocess.main(["--data-dir", str(keyword_dir),
                            "--output-dir", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
