"""metadata.json through the contract: one object written and read, every setting checked."""

import json

import pytest

from pipelines import contract

# metadata.json as format version 1 runs wrote it before it had `records_in_shards`.
VERSION_1 = {
    "format_version": 1, "sample_rate": 16000, "clip_samples": 16000, "frame_length": 255,
    "frame_step": 128, "fft_length": 256,
    "window": "tf.signal.hann_window(255, periodic=True)", "spectrogram_shape": [124, 129],
    "spectrogram_encoding": "raw little-endian float32 bytes", "labels": ["no", "yes"],
    "data_dir": "data/sample",
    "split": {"method": "speaker", "val_percent": 10.0, "test_percent": 10.0,
              "salt": "kws-split-v1", "seed": None},
    "unknown_percent": None, "silence_percent": None, "keyword_seed": None,
    "compression": "none", "waveforms": True,
    "command_line": "python -m pipelines.preprocess --data-dir data/sample --output-dir o",
    "counts": {"train": {"total": 5, "per_label": {"no": 2, "yes": 3}},
               "val": {"total": 1, "per_label": {"yes": 1}},
               "test": {"total": 0, "per_label": {}}},
    "examples_written": 6, "silence_written": 0, "rejected": 1,
    "rejected_by_reason": {"empty file": 1}, "skipped": 2,
    "skipped_by_reason": {"not a .wav file": 2}, "background_recordings": 0,
    "files_read": 9, "shards": ["o/train/data-00000-of-00001.tfrecord"],
    "background_shards": [],
}


def test_a_version_1_file_is_read_into_fields():
    metadata = contract.RunMetadata.from_json(json.dumps(VERSION_1))
    assert metadata.labels == ("no", "yes")
    assert metadata.stft == contract.STFT
    assert metadata.split.salt == "kws-split-v1" and metadata.split.method == "speaker"
    assert metadata.split_total("train") == 5 and metadata.split_total("test") == 0
    assert metadata.rejected == 1 and metadata.skipped == 2
    assert metadata.waveforms is True and metadata.unaccounted() == []
    # The mapping view is the file's JSON form, plus the fields older runs lack.
    assert {**VERSION_1, "records_in_shards": {}, "extra_data_dirs": []} == metadata
    assert metadata["counts"]["train"]["total"] == 5


def test_written_and_read_back_through_the_same_object():
    metadata = contract.RunMetadata(
        labels=("_silence_", "yes"), data_dir="gs://b/in",
        split=contract.SplitSettings("random", 20.0, 20.0, seed=7), compression="gzip",
        waveforms=False, silence_percent=10.0, keyword_seed=7, command_line="c",
        counts={"train": {"yes": 4, "_silence_": 1}}, examples_written=4, silence_written=1,
        rejected_by_reason={"empty file": 2}, files_read=7, background_recordings=1,
        shards=("b", "a"), records_in_shards={"train": 5, "val": 0, "test": 0})
    again = contract.RunMetadata.from_json(metadata.to_json())
    assert again == metadata and again.to_json() == metadata.to_json()
    assert json.loads(metadata.to_json())["shards"] == ["a", "b"]
    assert again.unaccounted() == []


def test_counts_that_do_not_add_up_are_named_and_refused():
    data = {**VERSION_1, "files_read": 10,
            "records_in_shards": {"train": 4, "val": 1, "test": 0, "background": 0,
                                  "rejected": 2}}
    problems = contract.RunMetadata.from_dict(data, check=False).unaccounted()
    assert problems == [
        "10 files read but 9 outcomes (examples 6 + background noise 0 + rejected 1 + "
        "skipped 2)",
        "rejected: 2 records in the shards but 1 rejections sent to them",
        "train: 4 records in the shards but 5 examples sent to them"]
    with pytest.raises(ValueError, match="do not add up, examples were lost: 10 files"):
        contract.RunMetadata.from_dict(data)


@pytest.mark.parametrize("field,value", [
    ("frame_length", 256), ("frame_step", 64), ("fft_length", 512), ("sample_rate", 8000),
    ("clip_samples", 8000), ("window", "tf.signal.hamming_window(255, periodic=True)"),
    ("spectrogram_shape", [124, 257]), ("spectrogram_encoding", "float16"),
    ("format_version", 2)])
def test_every_stft_setting_and_the_version_are_checked(field, value):
    with pytest.raises(ValueError, match=f"{field if field != 'format_version' else 'version'}"):
        contract.RunMetadata.from_dict({**VERSION_1, field: value})
    contract.RunMetadata.from_dict({**VERSION_1, field: value}, check=False)  # readable


@pytest.mark.parametrize("text,message", [
    ("{", "not JSON"), ("[]", "not a JSON object"),
    (json.dumps({k: v for k, v in VERSION_1.items() if k != "labels"}), "'labels' missing"),
    (json.dumps({**VERSION_1, "split": "speaker"}), "malformed")])
def test_a_damaged_file_is_a_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        contract.RunMetadata.from_json(text)


def test_the_settings_of_format_version_1_are_pinned():
    """Changing an STFT setting without bumping FORMAT_VERSION fails here."""
    assert contract.FORMAT_VERSION == 1
    assert contract.STFT == contract.Stft(
        sample_rate=16000, clip_samples=16000, frame_length=255, frame_step=128,
        fft_length=256, window="tf.signal.hann_window(255, periodic=True)",
        spectrogram_shape=(124, 129), spectrogram_encoding="raw little-endian float32 bytes")


def test_the_trainer_refuses_a_run_made_with_frame_length_256(tmp_path, capsys):
    """Same spectrogram shape (124x129), other feature: one line, exit 2."""
    from trainer import task
    run = tmp_path / "data"
    run.mkdir()
    (run / contract.LABELS_FILE).write_text(contract.format_labels(["no", "yes"]))
    (run / contract.METADATA_FILE).write_text(json.dumps({**VERSION_1, "frame_length": 256}))
    code = task.main(["--data-dir", str(run), "--job-dir", str(tmp_path / "job")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(run / contract.METADATA_FILE) in err[0] and "frame_length 256" in err[0]
    assert not (tmp_path / "job").exists()


def test_the_trainer_refuses_a_run_whose_shards_hold_fewer_records(tmp_path, capsys):
    from pipelines import preprocess
    from tests import wavs
    from trainer import task
    run = tmp_path / "data"
    preprocess.run(["--data-dir", str(wavs.copy_sample(tmp_path / "clips", ["no", "yes"], 3)),
                    "--output-dir", str(run), "--split", "random", "--val-percent", "30",
                    "--test-percent", "30"])
    metadata = json.loads((run / contract.METADATA_FILE).read_text())
    metadata["records_in_shards"]["train"] -= 1  # what an element lost on the way leaves
    (run / contract.METADATA_FILE).write_text(json.dumps(metadata))
    code = task.main(["--data-dir", str(run), "--job-dir", str(tmp_path / "job")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "counts do not add up, examples were lost: train:" in err[0]
