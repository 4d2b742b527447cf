"""Word classes: other words as classes of their own while training, summed into
`_unknown_` afterwards."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import soundfile

from pipelines import audio, contract, preprocess
from tests import wavs
from trainer import data, enroll, models, scoring, words

OTHER = ["bed", "cat", "dog"]  # other words, filed under _unknown_ by name


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """yes/no and three other words in _unknown_ (Speech Commands names), one of them
    with too few clips to be a class."""
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", ["yes", "no"],
                            per_label=8)
    (root / contract.BACKGROUND_NOISE_DIR).symlink_to(wavs.SAMPLE / contract.BACKGROUND_NOISE_DIR)
    unknown = root / "_unknown_"
    unknown.mkdir()
    clips = wavs.sample_clips("left", 20)
    for number, path in enumerate(clips):
        word = OTHER[0] if number < 9 else OTHER[1] if number < 18 else OTHER[2]
        samples, rate = soundfile.read(path, dtype="int16")
        soundfile.write(unknown / f"{word}_{number:08x}_nohash_0.wav", samples, rate)
    out = tmp_path_factory.mktemp("prep") / "out"
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--labels", "yes,no",
                    "--unknown-percent", "1000", "--silence-percent", "10", "--split",
                    "random", "--val-percent", "20", "--test-percent", "10"])
    return out


def test_words_with_enough_training_clips_become_classes(data_dir):
    labels = data.read_labels(str(data_dir))
    files = {split: data.shard_files(str(data_dir), split) for split in contract.SPLITS}
    classes = words.find(files, labels)
    assert classes.labels == tuple(labels)
    assert set(classes.words) <= {"bed", "cat"} and "bed" in classes.words
    assert "dog" not in classes.words  # 2 clips: stays _unknown_
    # Every _unknown_ clip of a word that is a class is relabelled, in every split, and
    # the training input carries those classes.
    word_clips = {}
    for split, shards in files.items():
        expected = []
        for batch in data.make_dataset(shards, 64, False, keep_features=True):
            for name, path in zip(batch[contract.LABEL_NAME].numpy(),
                                  batch[contract.PATH].numpy()):
                word = path.decode().split("/")[-1].split("_")[0]
                expected.append(len(labels) + classes.words.index(word)
                                if word in classes.words else labels.index(name.decode()))
        given = np.concatenate([label.numpy() for _, label in data.make_dataset(
            shards, 64, False, relabel=classes.relabel())])
        np.testing.assert_array_equal(given, expected)
        word_clips[split] = int((given >= len(labels)).sum())
    assert word_clips[contract.TRAIN] >= 2 * words.MIN_CLIPS


def test_merged_output_is_the_class_probabilities_with_the_words_summed():
    labels = ("_silence_", "_unknown_", "no", "yes")
    classes = words.WordClasses(labels, ("bed", "cat"), {})
    inputs = keras.Input((6,))
    net = keras.Model(inputs, keras.layers.Identity()(inputs))
    logits = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32) * 3
    merged = classes.merged(net)
    out = keras.ops.convert_to_numpy(merged(logits))
    fine = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    coarse = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    np.testing.assert_allclose(coarse[:, [0, 2, 3]], fine[:, [0, 2, 3]], rtol=1e-5)
    np.testing.assert_allclose(coarse[:, 1], fine[:, 1] + fine[:, 4] + fine[:, 5], rtol=1e-5)
    assert words.WordClasses(labels, (), {}).merged(net) is net


def test_an_enrolled_classifier_keeps_the_word_classes_and_starts_from_the_base_one():
    base_labels, base_words = ["_silence_", "_unknown_", "no", "yes"], ["bed", "cat"]
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(6, name="logits")(inputs)
    net = keras.Model(inputs, words.MergeWords(4, 1)(logits))
    labels = ["_silence_", "_unknown_", "up"]
    classes = enroll.head_classes(labels, base_labels, base_words)
    # The base keywords it does not keep are other words too.
    assert classes == ("_silence_", "_unknown_", "up", "bed", "cat", "no", "yes")
    assert enroll.head_classes(labels, base_labels, []) == tuple(labels)
    model = enroll.with_new_head(net, labels, classes, tuple(base_labels + base_words))
    head, old = enroll.classifier_of(model), enroll.classifier_of(net)
    assert head.units == len(classes) and model.output_shape[-1] == len(labels)
    for name in ("_silence_", "_unknown_", "bed", "cat", "no", "yes"):
        np.testing.assert_array_equal(head.kernel.numpy()[:, classes.index(name)],
                                      old.kernel.numpy()[:, (base_labels + base_words)
                                                         .index(name)])
    assert [layer.name for layer in model.layers if layer.trainable] == [head.name]
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    fine = keras.ops.convert_to_numpy(keras.ops.softmax(enroll.logits_of(model)(x)))
    coarse = keras.ops.convert_to_numpy(keras.ops.softmax(model(x)))
    np.testing.assert_allclose(coarse[:, 1], fine[:, [1, 3, 4, 5, 6]].sum(1), rtol=1e-5)
    # Word classes weigh what _unknown_, which takes them in, does: every label the same.
    targets = np.array([0, 1, 2, 2, 3, 3, 3, 5, 6, 6])
    weight = enroll.class_weights(targets, labels, len(classes))
    totals = np.zeros(len(labels))
    for target in targets:
        totals[min(target, 1) if target >= len(labels) else target] += weight[target]
    np.testing.assert_allclose(totals, totals[0])


def test_negatives_are_labelled_by_their_word_and_the_new_word_left_out(data_dir):
    base_labels = data.read_labels(str(data_dir))
    labels = ["_silence_", "_unknown_", "bed"]
    classes = enroll.head_classes(labels, base_labels, ["bed", "cat"])
    _, targets = enroll.negatives(str(data_dir), "bed", classes, None,
                                  models.get_recipe("kws").augmentation, 0,
                                  lambda x: np.zeros((len(x), 1)))
    expected = []
    for batch in data.make_dataset(data.shard_files(str(data_dir), contract.TRAIN), 64,
                                   False, keep_features=True):
        for name, path in zip(batch[contract.LABEL_NAME].numpy(),
                              batch[contract.PATH].numpy()):
            name, word = name.decode(), path.decode().split("/")[-1].split("_")[0]
            if name == "_unknown_" and word == "bed":
                continue  # the new word itself is no negative
            expected.append(classes.index(word) if word in classes else classes.index(name))
    np.testing.assert_array_equal(np.sort(targets), np.sort(expected * 2))  # + augmented
    assert labels.index("bed") not in targets and classes.index("cat") in targets
    assert classes.index("yes") in targets and classes.index("no") in targets


def test_a_run_with_word_classes_is_a_job_like_any_other(data_dir, tmp_path):
    """Started as users start it: the job has the run's labels, its exports agree, and
    enrolment finds the classifier behind the merge."""
    job = tmp_path / "job"
    done = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--data-dir", str(data_dir), "--job-dir",
         str(job), "--word-classes", "--epochs", "2", "--calibration-minutes", "2",
         "--verbose", "0", "--no-report"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "other words are classes of their own while training" in done.stdout
    metrics = json.loads((job / "metrics.json").read_text())
    labels = data.read_labels(str(data_dir))
    assert "bed" in metrics["settings"]["word_classes"]
    assert (job / "labels.txt").read_text().split() == labels
    net = keras.models.load_model(job / "model.keras")
    assert isinstance(net.layers[-1], words.MergeWords)
    assert net.output_shape[-1] == len(labels)
    assert enroll.classifier_of(net).units == len(labels) + len(
        metrics["settings"]["word_classes"])
    clips = np.stack([audio.pad_or_trim(wavs.read_clip(p)[0])
                      for p in wavs.sample_clips("yes", 3)])
    keras_scores = scoring.Scorer.of_keras(net, labels)(clips)
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        scores = scoring.Scorer(str(job), engine=engine)(clips)
        tolerance = 0.1 if engine == "tflite-int8" else 1e-3  # int8: outputs in 1/256 steps
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=tolerance / 10)
        assert np.abs(scores - keras_scores).max() < tolerance, engine
    # Enrolling on it: the new classifier tells the same words apart (and the base
    # keywords it does not keep), and the new job is one like any other again.
    enrolled = tmp_path / "enrolled"
    done = subprocess.run(
        [sys.executable, "-m", "trainer.enroll", "--base-job", str(job), "--keyword", "up",
         "--recordings", *map(str, wavs.sample_clips("up", 4)), "--job-dir", str(enrolled),
         "--no-report", "--fine-tune", "1", "--held-back-minutes", "5"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "other words are classes of their own in the new classifier" in done.stdout
    settings = json.loads((enrolled / "metrics.json").read_text())["settings"]
    assert set(settings["word_classes"]) == set(metrics["settings"]["word_classes"]) | {
        "yes", "no"}
    net = keras.models.load_model(enrolled / "model.keras")
    assert isinstance(net.layers[-1], words.MergeWords)
    new_labels = (enrolled / "labels.txt").read_text().split()
    assert new_labels == ["_silence_", "_unknown_", "up"]
    scores = scoring.Scorer(str(enrolled), engine="tflite")(clips)
    np.testing.assert_allclose(scores, scoring.Scorer.of_keras(net, new_labels)(clips),
                               atol=1e-3)
