"""LiteRT models: conversion, parity with the SavedModel, int8 agreement, the engines."""

import shutil
from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import litert as benchmark
from pipelines import audio, contract, events, preprocess
from pipelines.errors import UserError
from tests import wavs
from trainer import artifacts, data, detect, export, features, models, predict, scoring, task
from trainer.litert import convert, flatbuffer, runtime
from trainer.litert import export as litert_export

LABELS = ["no", "up", "yes"]


class Split(NamedTuple):
    waveforms: np.ndarray
    spectrograms: np.ndarray
    labels: np.ndarray
    paths: list


def _split(data_dir, split: str) -> Split:
    dataset = data.make_dataset(data.shard_files(str(data_dir), split), 512, False,
                                keep_features=True, waveform=True)
    batch = next(iter(dataset))
    return Split(batch[contract.WAVEFORM].numpy(), batch[contract.SPECTROGRAM].numpy(),
                 batch[contract.LABEL].numpy(),
                 [path.decode() for path in batch[contract.PATH].numpy()])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = wavs.copy_sample(tmp_path_factory.mktemp("wav") / "data", LABELS, per_label=40)
    out = tmp_path_factory.mktemp("prep") / "out"
    # A large test split: the int8 agreement is a fraction of it.
    preprocess.run(["--data-dir", str(root), "--output-dir", str(out), "--split", "random",
                    "--val-percent", "10", "--test-percent", "40", "--num-shards", "1"])
    return out


@pytest.fixture(scope="module")
def kws_export(data_dir, tmp_path_factory):
    """A small `kws` model trained on the stored spectrograms, exported every way."""
    train = _split(data_dir, contract.TRAIN)
    keras.utils.set_random_seed(0)
    net = models.build_model("kws", len(LABELS))
    for layer in net.layers:  # moving statistics that settle within a few dozen steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    net.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(train.spectrograms, train.labels, epochs=20, batch_size=16, verbose=0)
    serving = models.get_recipe("kws").serving_model(net)  # batch norm folded
    export_dir = tmp_path_factory.mktemp("job") / "export"
    export.export_model(serving, LABELS, str(export_dir))
    paths = litert_export.write_models(serving, LABELS, str(export_dir), train.waveforms)
    assert set(paths) == {"float", "int8", "stream_float", "stream_int8"}
    return export_dir


def _savedmodel_probabilities(export_dir, waveforms) -> np.ndarray:
    serve = tf.saved_model.load(str(export_dir)).signatures["waveform"]
    return np.concatenate([serve(waveform=tf.constant(clip[None]))["probabilities"].numpy()
                           for clip in waveforms])


def _litert_probabilities(path, waveforms) -> np.ndarray:
    model = runtime.LiteRTModel(str(path))
    return np.stack([model.probabilities(clip) for clip in waveforms])


def test_stft_from_hops_equals_the_exported_stft():
    clips = np.stack([audio.pad_or_trim(wavs.read_clip(path)[0])
                      for path in wavs.sample_clips("left", 3)])
    np.testing.assert_allclose(convert.stft_magnitude(tf.constant(clips)).numpy(),
                               features.stft_magnitude(tf.constant(clips)).numpy(), atol=1e-4)


def test_float_model_equals_the_savedmodel_on_real_clips(kws_export, data_dir):
    test = _split(data_dir, contract.TEST)
    expected = _savedmodel_probabilities(kws_export, test.waveforms)
    ours = _litert_probabilities(kws_export / runtime.FLOAT_FILE, test.waveforms)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # The trained model is not a constant: the comparison covers several labels.
    assert len(set(expected.argmax(axis=1))) >= 2


def test_int8_model_agrees_on_the_label_for_97_percent_of_the_test_split(kws_export,
                                                                          data_dir):
    test = _split(data_dir, contract.TEST)
    assert len(test.labels) >= 40
    expected = _savedmodel_probabilities(kws_export, test.waveforms).argmax(axis=1)
    ours = _litert_probabilities(kws_export / runtime.INT8_FILE, test.waveforms).argmax(axis=1)
    assert (ours == expected).mean() >= 0.97


def test_int8_file_keeps_the_front_end_float_and_the_network_int8(kws_export):
    content = (kws_export / runtime.INT8_FILE).read_bytes()
    ops = flatbuffer.op_types(content)
    kinds = {op for op, _, _ in ops}
    assert {"RFFT2D", "COMPLEX_ABS", "LOG", "CONV_2D", "QUANTIZE", "DEQUANTIZE"} <= kinds
    for op, data_in, data_out in ops:
        if op in ("LOG", "RFFT2D"):
            assert data_in == "FLOAT32", op
        if op in ("CONV_2D", "ADD", "MEAN", "SOFTMAX"):
            assert data_in == data_out == "INT8", op
    # The mel projection is float (it reads |STFT|), the classifier int8.
    dense = [data_in for op, data_in, _ in ops if op == "FULLY_CONNECTED"]
    assert dense[0] == "FLOAT32" and dense[-1] == "INT8"
    runner = runtime.load_interpreter(content=content)[2]
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    assert list(inputs) == [runtime.INPUT] and list(outputs) == [runtime.OUTPUT]
    assert tuple(inputs[runtime.INPUT]["shape"]) == (1, contract.CLIP_SAMPLES)
    assert inputs[runtime.INPUT]["dtype"] == outputs[runtime.OUTPUT]["dtype"] == np.float32
    assert tuple(outputs[runtime.OUTPUT]["shape"]) == (1, len(LABELS))
    assert len(content) <= 0.4 * (kws_export / runtime.FLOAT_FILE).stat().st_size


def test_clips_of_other_lengths_are_padded_or_cut_like_the_savedmodel(kws_export):
    clips = [wavs.read_clip(path)[0] for path in wavs.sample_clips("yes", 2)]
    waveforms = [clips[0][:7000], np.concatenate(clips)]
    expected = np.concatenate([_savedmodel_probabilities(kws_export, [clip])
                               for clip in waveforms])
    ours = _litert_probabilities(kws_export / runtime.FLOAT_FILE, waveforms)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_arena_holds_the_fft_and_is_smaller_than_every_tensor_together(kws_export):
    content = (kws_export / runtime.INT8_FILE).read_bytes()
    arena = flatbuffer.arena_bytes(content)
    spectrum = contract.NUM_FRAMES * contract.NUM_BINS
    assert arena >= spectrum * 8 + spectrum * 4  # COMPLEX_ABS: complex64 in, float32 out
    details = runtime.LiteRTModel(content=content).interpreter.get_tensor_details()
    every_tensor = sum(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
                       for d in details)
    assert arena < every_tensor


def test_tutorial_model_converts_too(data_dir):
    train = _split(data_dir, contract.TRAIN)
    spectrograms = tf.data.Dataset.from_tensor_slices(train.spectrograms).batch(32)
    keras.utils.set_random_seed(0)
    net = models.build_model("tutorial", len(LABELS), train_spectrograms=spectrograms)
    clips = train.waveforms[:4]
    expected = tf.nn.softmax(net(features.stft_magnitude(tf.constant(clips)))).numpy()
    float_model = runtime.LiteRTModel(content=convert.convert_float(net))
    np.testing.assert_allclose(np.stack([float_model.probabilities(c) for c in clips]),
                               expected, atol=1e-4)
    int8 = convert.convert_int8(net, train.waveforms[:32])
    assert ("CONV_2D", "INT8", "INT8") in flatbuffer.op_types(int8)
    probabilities = runtime.LiteRTModel(content=int8).probabilities(clips[0])
    assert probabilities.shape == (len(LABELS),)
    assert abs(probabilities.sum() - 1) < 0.02


def test_predict_engines_give_the_savedmodels_labels(kws_export, capsys):
    files = [str(path) for label in LABELS for path in wavs.sample_clips(label, 2)]
    results = {}
    for engine in runtime.ENGINES:
        results[engine] = predict.run(["--model-dir", str(kws_export), "--engine", engine,
                                       "--json"] + files)
    for ours, expected in zip(results["tflite"], results["savedmodel"]):
        assert ours["label"] == expected["label"]
        assert ours["probability"] == pytest.approx(expected["probability"], abs=1e-4)
    assert len(results["tflite-int8"]) == len(files)


def test_engine_without_its_file_is_one_line_and_exit_2(kws_export, tmp_path, capsys):
    export_dir = tmp_path / "export"
    shutil.copytree(kws_export, export_dir)
    (export_dir / runtime.INT8_FILE).unlink()
    clip = str(wavs.sample_clips("up", 1)[0])
    capsys.readouterr()
    code = predict.main(["--model-dir", str(export_dir), "--engine", "tflite-int8", clip])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(export_dir) in err[0] and runtime.INT8_FILE in err[0]
    assert predict.main(["--model-dir", str(export_dir), "--engine", "tflite", clip]) == 0


@pytest.fixture(scope="module")
def trained_job(data_dir, tmp_path_factory):
    """A job of the default training command (one epoch)."""
    job = tmp_path_factory.mktemp("run") / "job"
    task.run(["--data-dir", str(data_dir), "--job-dir", str(job), "--epochs", "1",
              "--batch-size", "16", "--verbose", "0", "--no-report"])
    return job


def test_default_training_run_writes_both_files(trained_job):
    for name in (runtime.FLOAT_FILE, runtime.INT8_FILE):
        model = runtime.LiteRTModel(str(trained_job / contract.EXPORT_DIR / name))
        assert model.num_labels == len(LABELS)
    for name in (runtime.STREAM_FLOAT_FILE, runtime.STREAM_INT8_FILE):
        stream = runtime.StreamingModel(str(trained_job / contract.EXPORT_DIR / name))
        assert stream.step(np.zeros(runtime.FRAME_SAMPLES)).shape == (len(LABELS),)
    assert artifacts.job_model_name(str(trained_job)) == models.DEFAULT_MODEL


def test_litert_cli_refuses_to_overwrite_and_rewrites_with_overwrite(trained_job, data_dir,
                                                                     capsys):
    int8 = trained_job / contract.EXPORT_DIR / runtime.INT8_FILE
    before = int8.read_bytes()
    capsys.readouterr()
    assert litert_export.main(["--job-dir", str(trained_job), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and runtime.FLOAT_FILE in err[0] and "--overwrite" in err[0]
    assert int8.read_bytes() == before
    int8.unlink()
    assert litert_export.main(["--job-dir", str(trained_job), "--data-dir", str(data_dir),
                        "--clips", "20", "--overwrite"]) == 0
    assert runtime.LiteRTModel(str(int8)).num_labels == len(LABELS)


def test_benchmark_measures_the_three_engines(trained_job, data_dir, capsys):
    results = benchmark.run(["--data-dir", str(data_dir), "--job-dir", str(trained_job),
                             "--clips", "4", "--rounds", "2"])
    engines = ("savedmodel",) + tuple(runtime.ENGINE_FILES)
    assert set(results["quality"]) == set(engines)
    assert set(results["latency"]) == set(engines) | {"stream", "stream-int8"}
    assert all(figures["p95_ms"] >= figures["p50_ms"] > 0
               for figures in results["latency"].values())
    assert results["quality"]["savedmodel"]["agreement"] == 1.0
    assert results["quality"]["tflite"]["max_abs_diff"] < 1e-4
    assert results["sizes"]["tflite-int8"] < results["sizes"]["tflite"]
    assert results["arena_bytes"] > 0
    out = capsys.readouterr().out
    assert all(name in out for name in engines) and "tensor arena" in out


def test_detect_engines_score_a_recording_alike(kws_export, tmp_path, capsys):
    yes, no = (wavs.read_clip(wavs.sample_clips(label, 1)[0])[0] for label in ("yes", "no"))
    silence = np.zeros(6000, np.float32)
    samples = np.concatenate([silence, yes, silence, no, silence]).astype(np.float32)
    config = events.default_config(LABELS)
    saved = scoring.score_audio(samples, scoring.Scorer(str(kws_export)), config)
    scores = {engine: scoring.score_audio(samples, scoring.Scorer(str(kws_export),
                                                                  engine=engine), config)
              for engine in runtime.ENGINE_FILES}
    assert len(saved) > 20
    np.testing.assert_allclose(scores["tflite"], saved, atol=1e-4)
    assert (scores["tflite-int8"].argmax(axis=1) == saved.argmax(axis=1)).mean() >= 0.9
    recording = tmp_path / "recording.wav"
    recording.write_bytes(wavs.wav_bytes(samples))
    capsys.readouterr()
    fired = {engine: detect.run(["--model-dir", str(kws_export), "--engine", engine,
                                  "--threshold", "0.6", str(recording)])
              for engine in ("savedmodel", "tflite")}
    assert [(e["label"], e["time"]) for e in fired["tflite"]] == \
        [(e["label"], e["time"]) for e in fired["savedmodel"]]


def test_a_litert_engine_needs_only_its_file_and_labels(kws_export, tmp_path):
    """A device-style folder: the .tflite files and labels.txt, no SavedModel."""
    lite = tmp_path / "lite"
    lite.mkdir()
    for name in (runtime.INT8_FILE, runtime.FLOAT_FILE, contract.LABELS_FILE):
        shutil.copy(kws_export / name, lite / name)
    clip = wavs.sample_clips("yes", 1)[0]
    for engine in runtime.ENGINE_FILES:
        assert len(detect.run(["--model-dir", str(lite), "--engine", engine,
                               "--threshold", "0.99", str(clip)])) <= 1
        assert predict.run(["--model-dir", str(lite), "--engine", engine, str(clip)])
    with pytest.raises(UserError, match="no exported model here"):
        detect.run(["--model-dir", str(lite), str(clip)])  # the SavedModel engine needs it


def test_streaming_models_give_the_clip_models_scores_on_every_call(kws_export):
    clips = [wavs.read_clip(path)[0] for label in ("yes", "up") for path in
             wavs.sample_clips(label, 1)]
    samples = np.concatenate([clips[0][:9000], clips[1], np.zeros(3000)]).astype(np.float32)
    calls = len(samples) // runtime.FRAME_SAMPLES
    heard = np.concatenate([np.zeros(contract.CLIP_SAMPLES, np.float32), samples])
    for stream_file, clip_file in ((runtime.STREAM_FLOAT_FILE, runtime.FLOAT_FILE),
                                   (runtime.STREAM_INT8_FILE, runtime.INT8_FILE)):
        stream = runtime.StreamingModel(str(kws_export / stream_file))
        clip_model = runtime.LiteRTModel(str(kws_export / clip_file))
        for call in range(calls):
            ours = stream.step(samples[call * runtime.FRAME_SAMPLES:
                                       (call + 1) * runtime.FRAME_SAMPLES])
            end = contract.CLIP_SAMPLES + (call + 1) * runtime.FRAME_SAMPLES
            # The clip model on the last second heard, silence before the start.
            expected = clip_model.probabilities(heard[end - contract.CLIP_SAMPLES:end])
            np.testing.assert_allclose(ours, expected, atol=1e-4 if "int8" not in stream_file
                                       else 1e-3, err_msg=f"{stream_file}, call {call}")
    ops = flatbuffer.op_types((kws_export / runtime.STREAM_INT8_FILE).read_bytes())
    assert ("CONV_2D", "INT8", "INT8") in ops and ("RFFT2D", "FLOAT32", "COMPLEX64") in ops
    stream.reset()  # back to silence: the first call scores as at the start
    np.testing.assert_allclose(stream.step(samples[:runtime.FRAME_SAMPLES]),
                               clip_model.probabilities(heard[runtime.FRAME_SAMPLES:
                                                              contract.CLIP_SAMPLES
                                                              + runtime.FRAME_SAMPLES]),
                               atol=1e-3)
