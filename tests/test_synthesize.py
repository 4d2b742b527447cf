"""Synthetic speech as a data source: eSpeak NG clips, confusable words, the Beam command."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipelines import audio, contract, dataset, preprocess, synthesize, tts
from tests import wavs


def test_phoneme_distance_and_the_words_nearest_a_keyword():
    speaker = tts.synthesizer()
    tokens = {word: tts.phoneme_tokens(speaker.phonemes(word))
              for word in ("no", "know", "nose", "go", "yes", "stop", "stops", "top", "house")}
    assert tokens["no"] == tokens["know"]  # homophones
    assert tts.phoneme_distance(tokens["no"], tokens["know"]) == 0.0
    assert 0 < tts.phoneme_distance(tokens["no"], tokens["go"]) < \
        tts.phoneme_distance(tokens["no"], tokens["house"]) <= 1
    vocabulary = ["know", "nose", "go", "house", "stops", "top"]
    nearest = tts.confusable_words(["no", "stop"], vocabulary, tokens, 2,
                                   exclude={"stops"})
    assert "know" not in nearest["no"]  # sounds the same: never a negative
    assert nearest["no"][0] in ("nose", "go") and nearest["stop"][0] == "top"
    assert "stops" not in nearest["stop"]


def test_a_clip_is_one_second_at_16k_with_the_word_inside():
    rng = np.random.default_rng(0)
    clip = tts.synthesizer().clip("seven", tts.Voice("en-gb-scotland", "f2", 130, 60), rng)
    assert clip.shape == (contract.CLIP_SAMPLES,) and clip.dtype == np.float32
    assert 0.1 <= np.abs(clip).max() <= 0.9
    loud = np.flatnonzero(np.abs(clip) > 0.01)
    assert 1600 < loud[-1] - loud[0] < contract.CLIP_SAMPLES  # a word, not a click


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    result = synthesize.run(["--words", "house,bird", "--confusable-with", "yes",
                             "--per-keyword", "2", "--voices-per-word", "12",
                             "--output", str(root / "data" / "_unknown_")])
    return root, result


def test_every_clip_decodes_to_one_second_at_16k_and_the_counts_add_up(synthesized):
    root, result = synthesized
    clips = sorted((root / "data" / "_unknown_").glob("*.wav"))
    assert result["planned"] == result["written"] == len(clips) == 4 * 12
    assert {"house", "bird"} <= set(result["words"]) and len(result["words"]) == 4
    for path in clips:
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000), path
        assert np.abs(audio.decode_wav(str(path))).max() > 0.05
        assert tts.is_synthetic(str(path))


def test_each_voice_setting_lands_in_one_split(synthesized, tmp_path):
    root, _ = synthesized
    data = wavs.copy_sample(root / "data", ["yes", "no"], per_label=10)
    out = tmp_path / "out"
    preprocess.run(["--data-dir", str(data), "--output-dir", str(out), "--labels", "yes,no",
                    "--unknown-percent", "1000", "--val-percent", "30",
                    "--test-percent", "30"])
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    splits = collections.defaultdict(set)
    for split in contract.SPLITS:
        for path in (out / split).glob("*.tfrecord"):
            for record in tf.data.TFRecordDataset(str(path)):
                name = contract.parse_example(record)[contract.PATH].numpy().decode()
                if tts.is_synthetic(name):
                    splits[dataset.speaker_id(name)].add(split)
    assert len(splits) > 12 and all(len(found) == 1 for found in splits.values())
    assert len(set.union(*splits.values())) == 3  # the settings spread over all splits


def test_an_earlier_run_is_refused_then_replaced_leaving_other_files(synthesized, tmp_path,
                                                                      capsys):
    folder = tmp_path / "clips"
    argv = ["--words", "seven", "--voices-per-word", "3", "--output", str(folder)]
    synthesize.run(argv)
    (folder / "mine.wav").write_bytes(b"a user's file")
    assert synthesize.main(argv) == 2
    assert "already holds 3 clips of an earlier run" in capsys.readouterr().err
    synthesize.run(argv + ["--overwrite", "--seed", "1"])
    assert len(list(folder.glob("*_nohash_tts.wav"))) == 3
    assert (folder / "mine.wav").read_bytes() == b"a user's file"


def test_a_missing_synthesiser_is_one_line(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "espeakng_loader.py").write_text("raise ImportError('no eSpeak NG here')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}:{wavs.REPO}"}
    result = subprocess.run([sys.executable, "-m", "pipelines.synthesize", "--words", "yes",
                             "--output", str(tmp_path / "out")], cwd=wavs.REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: the speech synthesiser eSpeak NG cannot be loaded (no eSpeak NG here); "
        + tts.INSTALL_HINT]
