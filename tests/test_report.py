"""trainer.report: the PNGs decode, the page holds the numbers, escapes text, embeds images."""

import base64
import re

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from pipelines import audio, contract
from trainer.report import figures, metrics as classification, page as report

LABELS = ["yes", "no", "<b>"]
PNG_FILES = [figures.CURVES_FILE, figures.CONFUSION_FILE, figures.WAVEFORMS_FILE,
             figures.SPECTROGRAMS_FILE, figures.PREDICTION_FILE]


def _clip(frequency: float, label: str) -> dict:
    time = np.arange(contract.CLIP_SAMPLES) / contract.SAMPLE_RATE
    # A tone burst in the middle; the rest is exact zeros, the case log(eps) must survive.
    waveform = np.where((time > 0.3) & (time < 0.7),
                        0.5 * np.sin(2 * np.pi * frequency * time), 0.0).astype(np.float32)
    return {"waveform": waveform, "spectrogram": audio.spectrogram(waveform), "label": label}


@pytest.fixture(scope="module")
def run_inputs():
    y_true = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 1, 0, 2, 2, 2]
    scores = classification.classification_metrics(y_true, y_pred, LABELS)
    metrics = {
        "test_accuracy": scores["accuracy"], "test_loss": 0.4321, "parameters": 1_234_567,
        "model": "cnn", "per_class": scores["per_class"], "macro_f1": scores["macro_f1"],
        "confusion_matrix": scores["confusion_matrix"],
        "counts": {"train": 80, "val": 10, "test": 10},
        "settings": {"epochs": 3, "data_dir": "gs://bucket/<data>&more", "augment": True},
    }
    history = {"loss": [1.5, 0.9, 0.6], "val_loss": [1.6, 1.1, 0.8],
               "accuracy": [0.4, 0.7, 0.8], "val_accuracy": [0.35, 0.6, 0.7],
               "learning_rate": [0.001, 0.001, 0.0005]}
    examples = [_clip(440.0 * (i + 1), LABELS[i % 3]) for i in range(4)]
    prediction = {"path": "data/test/yes/a&b.wav", "label": "yes",
                  "probabilities": [0.7, 0.2, 0.1]}
    return dict(metrics=metrics, history=history, labels=LABELS, examples=examples,
                prediction=prediction)


@pytest.fixture(scope="module")
def written(run_inputs, tmp_path_factory):
    job_dir = tmp_path_factory.mktemp("job")
    path = report.write_report(str(job_dir), **run_inputs)
    return job_dir, path


def test_every_png_is_written_and_decodes(written):
    job_dir, _ = written
    for name in PNG_FILES:
        image = matplotlib.image.imread(job_dir / name)  # raises if not a valid PNG
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, name
        assert image[..., :3].std() > 0.05, name  # not a blank canvas


def test_page_holds_the_headline_numbers_and_tables(written, run_inputs):
    job_dir, path = written
    assert path == f"{job_dir}/report.html"
    page = (job_dir / "report.html").read_text(encoding="utf-8")
    metrics = run_inputs["metrics"]
    assert metrics["test_accuracy"] == pytest.approx(0.8)
    assert "80.00%" in page
    assert "0.4321" in page and "1,234,567" in page and "cnn" in page
    for label in ("yes", "no"):
        assert f"<td>{label}</td>" in page  # a row of the per-class table
    assert f"{metrics['per_class']['no']['precision']:.3f}" in page  # 0.750
    assert "<th>train</th>" in page and "80" in page  # counts
    assert "<th>epochs</th>" in page


def test_page_escapes_every_text(written):
    job_dir, _ = written
    page = (job_dir / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "gs://bucket/&lt;data&gt;&amp;more" in page and "<data>" not in page
    assert "a&amp;b.wav" in page


def test_page_embeds_the_same_images_it_writes(written):
    job_dir, _ = written
    page = (job_dir / "report.html").read_text(encoding="utf-8")
    embedded = {base64.b64decode(data)
                for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)}
    assert embedded == {(job_dir / name).read_bytes() for name in PNG_FILES}
    assert "src='" + figures.CURVES_FILE not in page  # nothing linked by relative name


def test_report_goes_through_gfile(run_inputs):
    # ram:// exists only inside TensorFlow's file systems: a plain open() would fail here.
    path = report.write_report("ram://report_test/job/", **{**run_inputs, "examples": []})
    assert path == "ram://report_test/job/report.html"
    written = set(tf.io.gfile.listdir("ram://report_test/job"))
    # Without examples the waveform and spectrogram figures are left out, the rest is there.
    assert written == {"report.html", figures.CURVES_FILE, figures.CONFUSION_FILE,
                       figures.PREDICTION_FILE}
    with tf.io.gfile.GFile(path, "rb") as handle:
        assert handle.read().startswith(b"<!DOCTYPE html>")


def test_single_plots_handle_awkward_input(tmp_path):
    # '$' would start matplotlib mathtext; "$\frac{$" fails to parse unless escaped.
    labels = ["$\\frac{$", "a_b"]
    figures.plot_prediction([0.25, 0.75], labels, "clip $x$", str(tmp_path / "p.png"))
    figures.plot_confusion([[3, 0], [1, 2]], labels, str(tmp_path / "sub" / "c.png"))
    figures.plot_history({"loss": [1.0, 0.5]}, str(tmp_path / "h.png"))  # no val_, no accuracy
    figures.plot_history({}, str(tmp_path / "empty.png"))
    one = [_clip(300.0, labels[0])]
    figures.plot_waveforms(one, str(tmp_path / "w.png"))
    figures.plot_spectrograms(one, str(tmp_path / "s.png"))
    for name in ("p.png", "sub/c.png", "h.png", "empty.png", "w.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("call, message", [
    (lambda path: figures.plot_prediction([0.5, 0.5], LABELS, "t", path), "2 probabilities"),
    (lambda path: figures.plot_confusion([[1, 0], [0, 1]], LABELS, path), "shape"),
    (lambda path: figures.plot_spectrograms(
        [{"spectrogram": np.ones((129, 124)), "label": "x"}], path), "expected"),
    (lambda path: figures.plot_waveforms([], path), "no examples"),
])
def test_mismatched_input_is_refused(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()
