"""Pure functions: labels, speakers, splits, and the record format."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from pipelines import contract, dataset


@pytest.mark.parametrize("name,speaker", [
    ("0a7c2a8d_nohash_0.wav", "0a7c2a8d"),
    ("0a7c2a8d_nohash_12.wav", "0a7c2a8d"),
    ("backward_0a7c2a8d_nohash_2.wav.wav", "0a7c2a8d"),
    ("alice_take3.wav", "alice_take3"),
    ("noise.WAV", "noise"),
])
def test_speaker_id(name, speaker):
    assert dataset.speaker_id(f"gs://bucket/data/yes/{name}") == speaker


@pytest.mark.parametrize("path,word", [
    ("gs://b/data/_unknown_/backward_0a7c2a8d_nohash_2.wav.wav", "backward"),
    ("/d/_unknown_/thing_34031914_nohash_tts.wav", "thing"),
    ("/d/marvin/0a7c2a8d_nohash_0.wav", "marvin"),
    ("/d/_unknown_/0a7c2a8d_nohash_1.wav", "_unknown_"),
    ("/d/_unknown_/take3.wav", "_unknown_"),
    ("/d/_unknown_/my_word_take_nohash_1.wav", "_unknown_"),
])
def test_word_of(path, word):
    assert dataset.word_of(path) == word


def test_classify_labels_and_skips():
    root = "/data"
    assert dataset.classify("/data/yes/a_nohash_0.wav", root).label == "yes"
    assert dataset.classify("/data/README.md", root).skip_reason == "not in a label folder"
    assert dataset.classify("/data/yes/.DS_Store", root).skip_reason == dataset.NOT_AUDIO_REASON
    assert dataset.classify("/data/_unknown_/a.wav", root).skip_reason.startswith("folder")
    assert dataset.classify("/data/_unknown_/a.wav", root, ["_unknown_"]).label == "_unknown_"
    assert dataset.classify("/data/no/a.wav", root, ["yes"]).skip_reason == "label not selected"
    assert (dataset.classify("/data/_background_noise_/white.wav", root).skip_reason
            == dataset.BACKGROUND_REASON)
    assert dataset.label_folders(["/data/yes/a.wav", "/data/no/b.wav", "/data/x.txt"],
                                 root) == ["no", "yes"]


def test_speaker_split_is_by_speaker_and_near_80_10_10():
    speakers = [f"{i:08x}" for i in range(3000)]
    splits = collections.Counter(dataset.split_for_speaker(s) for s in speakers)
    assert abs(splits["train"] / 3000 - 0.8) < 0.03
    assert abs(splits["val"] / 3000 - 0.1) < 0.02
    assert abs(splits["test"] / 3000 - 0.1) < 0.02
    # every clip of a speaker shares its split, whatever the word or clip number
    for speaker in speakers[:50]:
        assert len({dataset.split_for_speaker(dataset.speaker_id(name)) for name in (
            f"{speaker}_nohash_0.wav", f"{speaker}_nohash_7.wav",
            f"left_{speaker}_nohash_1.wav.wav")}) == 1


def test_speaker_split_never_moves_when_data_is_added():
    before = {s: dataset.split_for_speaker(s) for s in (f"{i:08x}" for i in range(500))}
    for i in range(500, 1500):  # "adding files" only adds keys: no global state
        dataset.split_for_speaker(f"{i:08x}")
    assert before == {s: dataset.split_for_speaker(s) for s in before}


def test_empty_salt_is_tensorflows_which_set():
    # TensorFlow's speech_commands which_set(), inlined for comparison.
    import hashlib
    import re

    def which_set(filename, validation_percentage, testing_percentage):
        hash_name = re.sub(r"_nohash_.*$", "", filename.split("/")[-1])
        hashed = hashlib.sha1(hash_name.encode()).hexdigest()
        percentage = (int(hashed, 16) % (2**27)) * (100.0 / (2**27 - 1))
        if percentage < validation_percentage:
            return "validation"
        if percentage < validation_percentage + testing_percentage:
            return "testing"
        return "training"

    names = {"validation": "val", "testing": "test", "training": "train"}
    for i in range(300):
        speaker = f"{i * 7919:08x}"
        assert (dataset.split_for_speaker(speaker, 10, 10, salt="")
                == names[which_set(f"yes/{speaker}_nohash_0.wav", 10, 10)])


def test_random_split_is_seeded_and_per_file():
    paths = [f"/d/yes/{i:08x}_nohash_{j}.wav" for i in range(200) for j in range(3)]
    first = [dataset.split_for_file(p, 42) for p in paths]
    assert first == [dataset.split_for_file(p, 42) for p in paths]
    assert first != [dataset.split_for_file(p, 7) for p in paths]
    # unlike the speaker split, one speaker's clips land in different splits
    assert any(len(set(first[k:k + 3])) > 1 for k in range(0, len(first), 3))


def test_serialize_then_parse_round_trip():
    rng = np.random.default_rng(0)
    spectrogram = rng.random(contract.SPECTROGRAM_SHAPE, dtype=np.float32)
    waveform = rng.uniform(-1, 1, contract.CLIP_SAMPLES).astype(np.float32)
    record = contract.serialize_example(spectrogram, 2, "yes", "0a7c2a8d",
                                        "gs://b/yes/x.wav", 12345, waveform)
    # the hand-written encoding is a valid tf.train.Example
    example = tf.train.Example.FromString(record)
    assert example.features.feature["label"].int64_list.value == [2]
    parsed = contract.parse_example(tf.constant(record), waveform=True)
    np.testing.assert_array_equal(parsed["spectrogram"].numpy(), spectrogram)
    np.testing.assert_array_equal(parsed["waveform"].numpy(), waveform)
    assert parsed["label"].numpy() == 2
    assert parsed["label_name"].numpy() == b"yes"
    assert parsed["speaker"].numpy() == b"0a7c2a8d"
    assert parsed["path"].numpy() == b"gs://b/yes/x.wav"
    assert parsed["num_samples"].numpy() == 12345
    batch = contract.parse_batch(tf.constant([record, record]))
    assert batch["spectrogram"].shape == (2, 124, 129)


def test_negative_and_large_int64_values_encode():
    record = contract.serialize_example(np.zeros(contract.SPECTROGRAM_SHAPE), -1, "a", "s",
                                        "p", 2**40)
    parsed = contract.parse_example(tf.constant(record))
    assert parsed["label"].numpy() == -1 and parsed["num_samples"].numpy() == 2**40


def test_serialize_refuses_wrong_shapes():
    with pytest.raises(ValueError, match="spectrogram shape"):
        contract.serialize_example(np.zeros((10, 10)), 0, "a", "s", "p", 1)
