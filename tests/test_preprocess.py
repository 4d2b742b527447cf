"""The preprocessing pipeline: TestPipeline checks of its transforms, then end to end."""

import json
import pathlib
import shutil

import apache_beam as beam
import numpy as np
import pytest
import soxr
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import audio, contract, dataset, graph, preprocess, transforms
from tests import wavs

LABELS = ["no", "up", "yes"]


def read_split(out: pathlib.Path, split: str) -> list[dict]:
    files = sorted(tf.io.gfile.glob(contract.shard_pattern(str(out), split)))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    records = []
    for record in tf.data.TFRecordDataset(files, compression_type=compression):
        parsed = contract.parse_example(record, waveform=True)
        records.append({key: value.numpy() for key, value in parsed.items()})
    return records


@pytest.fixture
def data_dir(tmp_path):
    """Real clips of three words, odd but valid files, broken ones and stray files."""
    root = wavs.copy_sample(tmp_path / "data", LABELS, per_label=6)
    for name, content in wavs.broken_files().items():
        (root / "yes" / name).write_bytes(content)
    clip, rate = wavs.read_clip(wavs.sample_clips("up", 7)[-1])
    stereo = np.stack([clip, clip], axis=1)
    (root / "up" / "cafef00d_nohash_0.wav").write_bytes(
        wavs.wav_bytes(soxr.resample(stereo, rate, 44100), 44100, subtype="PCM_24"))
    (root / "README.md").write_text("not a clip")
    (root / "no" / ".DS_Store").write_bytes(b"\0\0")
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).normal(0, 0.1, 40000).astype(np.float32)
    (root / "_background_noise_" / "white_noise.wav").write_bytes(wavs.wav_bytes(noise))
    return root


# --- TestPipeline: the featurising transform on its own -----------------------------

def test_featurize_routes_clips_rejects_and_skips(tmp_path):
    root = wavs.copy_sample(tmp_path / "d", ["yes", "no"], per_label=2)
    (root / "yes" / "empty.wav").write_bytes(b"")
    (root / "notes.txt").write_text("x")
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    with TestPipeline() as pipeline:
        results = (pipeline
                   | beam.Create(paths)
                   | beam.ParDo(transforms.FeaturizeFile(
                       transforms.FeaturizeConfig(str(root), ("no", "yes"))))
                   .with_outputs(transforms.REJECTED, transforms.SKIPPED, main="examples"))
        labelled = results.examples | beam.Map(
            lambda e: (e[1], contract.parse_example(tf.constant(e[2]))["label"].numpy().item()))
        assert_that(labelled, equal_to([("no", 0), ("no", 0), ("yes", 1), ("yes", 1)]),
                    label="Examples")
        assert_that(results.rejected | beam.Map(json.loads), equal_to(
            [{"path": str(root / "yes" / "empty.wav"), "reason": "empty file"}]),
            label="Rejected")
        assert_that(results.skipped, equal_to(["not in a label folder"]), label="Skipped")


def test_featurize_puts_each_speaker_in_its_hashed_split(tmp_path):
    root = wavs.copy_sample(tmp_path / "d", ["left", "right"], per_label=8)
    paths = sorted(str(p) for p in root.rglob("*.wav"))
    expected = [(dataset.split_for_speaker(dataset.speaker_id(p)), dataset.speaker_id(p))
                for p in paths]
    with TestPipeline() as pipeline:
        splits = (pipeline
                  | beam.Create(paths)
                  | beam.ParDo(transforms.FeaturizeFile(
                      transforms.FeaturizeConfig(str(root), ("left", "right"))))
                  | beam.Map(lambda e: (e[0], contract.parse_example(
                      tf.constant(e[2]))["speaker"].numpy().decode())))
        assert_that(splits, equal_to(expected))


# --- end to end ---------------------------------------------------------------------

def test_end_to_end_writes_splits_labels_metadata_and_rejects(data_dir, tmp_path):
    out = tmp_path / "out"
    metadata = preprocess.run(["--data-dir", str(data_dir), "--output-dir", str(out),
                               "--max-rejected-fraction", "0.5"])
    assert (out / "labels.txt").read_text().split() == LABELS
    assert metadata == json.loads((out / "metadata.json").read_text())
    # counts add up: 19 clips, 6 broken, 1 README + 1 .DS_Store, 1 noise recording
    assert metadata["examples_written"] == 19
    assert metadata["rejected"] == 6
    assert metadata["skipped"] == 2
    assert metadata["background_recordings"] == 1
    assert metadata["files_read"] == 19 + 6 + 2 + 1
    assert metadata["spectrogram_shape"] == [124, 129]
    assert metadata["format_version"] == contract.FORMAT_VERSION

    rejected = [json.loads(line) for f in sorted((out / "rejected").glob("*.jsonl"))
                for line in f.read_text().splitlines()]
    assert sorted(pathlib.Path(r["path"]).name for r in rejected) == sorted(wavs.broken_files())
    assert all(r["reason"] for r in rejected)

    records = {split: read_split(out, split) for split in contract.SPLITS}
    assert sum(map(len, records.values())) == 19
    for split in contract.SPLITS:
        assert len(records[split]) == metadata["counts"][split]["total"]
    speakers = {split: {r["speaker"] for r in records[split]} for split in contract.SPLITS}
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    for record in (r for split in records.values() for r in split):
        path = record["path"].decode()
        assert LABELS[record["label"]] == record["label_name"].decode() == pathlib.Path(path).parent.name
        clip = audio.featurize(pathlib.Path(path).read_bytes())
        np.testing.assert_allclose(record["spectrogram"], clip.spectrogram, atol=1e-6)
        np.testing.assert_array_equal(record["waveform"], clip.waveform)
        assert record["num_samples"] == clip.num_samples
    noise = [contract.parse_background(r) for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(contract.background_pattern(str(out))))]
    assert [n["waveform"].shape[0] for n in noise] == [40000]


def test_summary_table_is_printed(data_dir, tmp_path, capsys):
    preprocess.run(["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"),
                    "--max-rejected-fraction", "1"])
    printed = capsys.readouterr().out
    assert "files read 28 = examples 19 + background noise 1 + rejected 6 + skipped 2" in printed
    assert "empty file" in printed and "yes" in printed


def test_too_many_rejected_exits_non_zero_after_writing(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = preprocess.main(["--data-dir", str(data_dir), "--output-dir", str(out)])
    assert code == 1
    assert (out / "metadata.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6 of 25 clips rejected" in err[0]


def test_multi_process_runner_writes_the_same_examples(data_dir, tmp_path):
    """The multi-process DirectRunner pickles the DoFns into workers, as Dataflow does."""
    args = ["--data-dir", str(data_dir), "--max-rejected-fraction", "0.5"]
    preprocess.run(args + ["--output-dir", str(tmp_path / "a")])
    preprocess.run(args + ["--output-dir", str(tmp_path / "b"),
                           "--direct_running_mode", "multi_processing",
                           "--direct_num_workers", "2"])

    def keys(out):
        return sorted((split, r["path"], r["label"], r["spectrogram"].tobytes())
                      for split in contract.SPLITS for r in read_split(out, split))
    assert keys(tmp_path / "a") == keys(tmp_path / "b")


def test_options_labels_random_split_gzip_and_shards(data_dir, tmp_path):
    out = tmp_path / "out"
    metadata = preprocess.run([
        "--data-dir", str(data_dir), "--output-dir", str(out), "--labels", "no,up",
        "--split", "random", "--seed", "7", "--compression", "gzip", "--num-shards", "2",
        "--val-percent", "20", "--test-percent", "20", "--max-rejected-fraction", "0"])
    assert (out / "labels.txt").read_text().split() == ["no", "up"]
    assert metadata["examples_written"] == 13 and metadata["rejected"] == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "data-00000-of-00002.tfrecord.gz", "data-00001-of-00002.tfrecord.gz"]
    records = [r for split in contract.SPLITS for r in read_split(out, split)]
    assert {r["label_name"] for r in records} == {b"no", b"up"}
    expected = {r["path"].decode(): dataset.split_for_file(r["path"].decode(), 7, 20, 20)
                for r in records}
    for split in contract.SPLITS:
        assert all(expected[r["path"].decode()] == split for r in read_split(out, split))


def test_existing_output_is_refused_then_replaced_with_overwrite(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--data-dir", str(data_dir), "--output-dir", str(out), "--max-rejected-fraction", "1"]
    preprocess.run(args + ["--num-shards", "3"])
    capsys.readouterr()
    assert preprocess.main(args) == 2
    assert "already holds a preprocessing run" in capsys.readouterr().err
    preprocess.run(args + ["--overwrite", "--num-shards", "1"])
    assert [p.name for p in (out / "train").iterdir()] == ["data-00000-of-00001.tfrecord"]


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "missing", "data folder not found"),
    (lambda root: root, "no files found"),
    (lambda root: (root / "x.wav").write_bytes(b"") or root, "no label folders"),
    (lambda root: wavs.copy_sample(root, ["yes"], 2), "only one label (yes)"),
])
def test_bad_data_dir_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    root = tmp_path / "in"
    root.mkdir()
    code = preprocess.main(["--data-dir", str(make(root)), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and str(root) in err[0]


def test_unknown_label_is_refused(data_dir, tmp_path, capsys):
    code = preprocess.main(["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"),
                            "--labels", "yes,nope"])
    assert code == 2 and "no audio files for label(s) nope" in capsys.readouterr().err


def test_metadata_step_names_a_place_whose_files_hold_fewer_records(tmp_path):
    """WriteMetadata's counts from the listing and from the written files, side by side."""
    static = contract.RunMetadata(labels=("no", "yes"), data_dir="d",
                                  split=contract.SplitSettings("speaker", 10.0, 10.0))
    path = tmp_path / "metadata.json"
    with TestPipeline() as pipeline:
        def side(label, values, view=beam.pvalue.AsDict):
            return view(pipeline | label >> beam.Create(values))
        _ = (pipeline
             | beam.Create([None])
             | beam.ParDo(
                 graph.WriteMetadata(str(path), static, listing_skipped=1),
                 examples=side("E", [(("train", "no"), 3), (("val", "yes"), 1)]),
                 rejected=side("R", [("empty file", 1)]),
                 skipped=side("S", [("broken symlink", 1)]),
                 background=side("B", [0], beam.pvalue.AsSingleton),
                 shards=side("F", ["t0"], beam.pvalue.AsList),
                 background_shards=side("G", [], beam.pvalue.AsList),
                 listed=side("L", [5], beam.pvalue.AsSingleton),
                 written=side("W", [("train", 2), ("val", 1), ("rejected", 1)])))
    metadata = contract.RunMetadata.from_json(path.read_text(), check=False)
    assert metadata.files_read == 6 and metadata.examples_written == 4
    assert metadata.records_in_shards == {"train": 2, "val": 1, "test": 0, "background": 0,
                                          "rejected": 1}
    assert metadata.unaccounted() == [
        "train: 2 records in the shards but 3 examples sent to them"]


def test_a_run_counts_its_written_records_back(data_dir, tmp_path):
    out = tmp_path / "out"
    metadata = preprocess.run(["--data-dir", str(data_dir), "--output-dir", str(out),
                               "--max-rejected-fraction", "1", "--compression", "gzip"])
    for split in contract.SPLITS:
        assert metadata.records_in_shards[split] == len(read_split(out, split)) \
            == metadata.split_total(split)
    assert metadata.records_in_shards["background"] == 1
    assert metadata.records_in_shards["rejected"] == 6
    assert metadata.unaccounted() == []


def test_flac_ogg_opus_and_mp3_clips_are_examples_like_wav(tmp_path):
    """A label folder of compressed recordings is read, not skipped: its clips decode to
    what the WAV clips they were made from decode to (lossless) or close to it (lossy)."""
    import soundfile  # pylint: disable=import-outside-toplevel
    root = wavs.copy_sample(tmp_path / "data", ["no"], per_label=4)
    (root / "yes").mkdir()
    sources = wavs.sample_clips("yes", 4)
    encodings = [(".flac", {}), (".ogg", {"subtype": "VORBIS"}),
                 (".opus", {"format": "OGG", "subtype": "OPUS"}), (".mp3", {"format": "MP3"})]
    for source, (suffix, options) in zip(sources, encodings):
        clip, rate = wavs.read_clip(source)
        target = root / "yes" / (source.stem + suffix)
        if suffix == ".opus":  # Opus runs at 48 kHz; decoding resamples it back
            clip, rate = soxr.resample(clip, rate, 48_000), 48_000
        soundfile.write(str(target), clip, rate, **options)
    out = tmp_path / "out"
    metadata = preprocess.run(["--data-dir", str(root), "--output-dir", str(out),
                               "--split", "random", "--val-percent", "0",
                               "--test-percent", "0"])
    assert metadata.rejected == 0 and metadata.skipped == 0
    assert metadata.counts["train"] == {"no": 4, "yes": 4}
    by_name = {pathlib.Path(r["path"].decode()).name: r for r in read_split(out, "train")}
    for source, (suffix, _) in zip(sources, encodings):
        stored = by_name[source.stem + suffix]["waveform"]
        original = audio.pad_or_trim(wavs.read_clip(source)[0])
        if suffix == ".flac":
            np.testing.assert_allclose(stored, original, atol=1e-4)
        else:  # lossy: the same words, not the same samples
            correlation = np.corrcoef(stored, original)[0, 1]
            assert correlation > 0.5, (suffix, correlation)
