"""Plots and a one-page HTML report of a training run, written into the job directory.

The trainer calls `write_report` after evaluating on the test set; it writes, in JOB_DIR::

    curves.png            loss and accuracy per epoch, train and validation
    confusion_matrix.png  test-set confusion matrix with counts (rows true, columns predicted)
    waveforms.png         a grid of example clips, label as title
    spectrograms.png      the same clips' log-magnitude spectrograms (time on x, as in
                          TensorFlow's "Simple audio recognition" tutorial)
    prediction.png        one clip's class probabilities
    report.html           headline numbers, settings, counts, per-class table, all figures

Open the page with a browser (`xdg-open JOB_DIR/report.html`), or for a job on Cloud Storage
`gcloud storage cp gs://BUCKET/JOB/report.html . && xdg-open report.html`.

The page embeds its images as base64 data URIs instead of linking the PNGs: a single file
stays complete when it is copied out of a bucket, attached to a ticket or opened through the
Cloud console's authenticated URL, where relative links to sibling objects do not resolve.
It costs about a third more bytes than the PNGs (a few hundred KB in all).

Figures are drawn on `matplotlib.figure.Figure` objects with an explicit Agg canvas, never
through pyplot's global state, so no display is needed, nothing leaks between calls and the
backend of a notebook that imports this module is left alone. Every file is written through
`tf.io.gfile`, so JOB_DIR may be local or `gs://`.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import seaborn
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipelines import contract

DPI = 100
GRID_COLUMNS = 3
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
WAVEFORMS_FILE = "waveforms.png"
SPECTROGRAMS_FILE = "spectrograms.png"
PREDICTION_FILE = "prediction.png"
REPORT_FILE = "report.html"

# Cell edges of the spectrogram plot: frame i spans [i, i + 1) hops in seconds (so the
# x axis starts at 0 like the waveforms'), bin k is centred on k * 62.5 Hz, shown in kHz.
_TIME_EDGES = np.arange(contract.NUM_FRAMES + 1) * contract.FRAME_STEP / contract.SAMPLE_RATE
_KHZ_EDGES = ((np.arange(contract.NUM_BINS + 1) - 0.5)
              * contract.SAMPLE_RATE / contract.FFT_LENGTH / 1000)


# --- rendering -----------------------------------------------------------------------

def _text(value: Any) -> str:
    """Text for matplotlib: '$' escaped so a label is never parsed as mathtext."""
    return str(value).replace("$", r"\$")


def _png(figure: Figure) -> bytes:
    """Renders a figure to PNG bytes in memory."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _write(path: str, data: bytes) -> None:
    """Writes bytes to a local or gs:// path, creating the parent directory."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(data)


def _grid(count: int, width: float, height: float) -> tuple[Figure, list]:
    """A figure with `count` axes in rows of GRID_COLUMNS; the unused cells are hidden."""
    if count == 0:
        raise ValueError("no examples to plot")
    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, list(axes[:count])


def _render_history(history: Mapping[str, Sequence[float]]) -> bytes:
    names = {key.removeprefix("val_") for key in history}
    panels = (["loss"] if "loss" in names else []) + sorted(
        name for name in names if "accuracy" in name)
    figure = Figure(figsize=(5.5 * max(len(panels), 1), 4), layout="constrained")
    if not panels:  # e.g. a run resumed after its last epoch: say so rather than fail
        figure.text(0.5, 0.5, "no loss or accuracy history recorded", ha="center")
        return _png(figure)
    for ax, name in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for prefix, legend in (("", "train"), ("val_", "validation")):
            values = list(history.get(prefix + name, []))
            if values:
                ax.plot(range(1, len(values) + 1), values, label=legend,
                        marker="o" if len(values) <= 30 else None, markersize=3)
        title = name.replace("_", " ").capitalize()
        ax.set(title=title, xlabel="Epoch", ylabel=title)
        if name == "loss":
            ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(figure)


def _render_confusion(matrix: Any, labels: Sequence[str]) -> bytes:
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {len(labels)} labels")
    size = max(6.0, 0.65 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    names = [_text(label) for label in labels]
    seaborn.heatmap(matrix, annot=True, fmt="d", cmap="Blues", square=True, ax=ax,
                    xticklabels=names, yticklabels=names,
                    # Whole-clip ticks: a small test set otherwise gets 0.5, 1.5, ...
                    cbar_kws={"label": "Clips", "shrink": 0.8,
                              "ticks": MaxNLocator(integer=True)},
                    annot_kws={"fontsize": 10 if len(labels) <= 12 else 7})
    ax.set(xlabel="Predicted label", ylabel="True label",
           title=f"Confusion matrix ({int(matrix.sum()):,} clips)")
    ax.tick_params(axis="x", labelrotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.tick_params(axis="y", labelrotation=0)
    return _png(figure)


def _render_waveforms(examples: Sequence[Mapping[str, Any]]) -> bytes:
    figure, axes = _grid(len(examples), 4.0, 2.6)
    for ax, example in zip(axes, examples):
        waveform = np.asarray(example["waveform"], dtype=np.float32).ravel()
        ax.plot(np.arange(waveform.size) / contract.SAMPLE_RATE, waveform, linewidth=0.6)
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(_text(example["label"]))
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set(xlabel="Time (s)", ylabel="Amplitude")
        ax.label_outer()
    return _png(figure)


def _render_spectrograms(examples: Sequence[Mapping[str, Any]]) -> bytes:
    figure, axes = _grid(len(examples), 4.0, 2.8)
    # Log of the magnitude, transposed so time runs along x (the tutorial's plot_spectrogram);
    # eps keeps log(0) finite for digital silence.
    logs = [np.log(np.squeeze(np.asarray(example["spectrogram"], dtype=np.float64)).T
                   + np.finfo(np.float64).eps) for example in examples]
    for log in logs:
        if log.shape != (contract.NUM_BINS, contract.NUM_FRAMES):
            raise ValueError(f"spectrogram of shape {log.T.shape}, "
                             f"expected {contract.SPECTROGRAM_SHAPE}")
    # One colour scale for the grid, so loud and quiet clips compare. Its floor is taken
    # over non-silent cells only: the zero padding of a short clip is log(eps) = -36, and
    # letting it set the scale would flatten all speech into one colour.
    values = np.concatenate([log.ravel() for log in logs])
    audible = values[values > np.log(np.finfo(np.float64).eps) + 1.0]
    high = values.max()
    low = np.percentile(audible, 1) if audible.size else high - 1.0
    mesh = None
    for ax, log, example in zip(axes, logs, examples):
        mesh = ax.pcolormesh(_TIME_EDGES, _KHZ_EDGES, log, shading="flat",
                             vmin=low, vmax=high, cmap="viridis")
        ax.set_ylim(0, _KHZ_EDGES[-1])
        ax.set_title(_text(example["label"]))
    for ax in axes:
        ax.set(xlabel="Time (s)", ylabel="Frequency (kHz)")
        ax.label_outer()
    figure.colorbar(mesh, ax=axes, label="log |STFT|", shrink=0.8)
    return _png(figure)


def _render_prediction(probabilities: Sequence[float], labels: Sequence[str],
                       title: str) -> bytes:
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if probabilities.size != len(labels):
        raise ValueError(f"{probabilities.size} probabilities for {len(labels)} labels")
    figure = Figure(figsize=(max(6.0, 0.7 * len(labels) + 2), 4), layout="constrained")
    ax = figure.subplots()
    colours = ["tab:blue"] * len(labels)
    colours[int(probabilities.argmax())] = "tab:orange"
    bars = ax.bar(range(len(labels)), probabilities, color=colours)
    if len(labels) <= 16:
        ax.bar_label(bars, labels=[f"{value:.0%}" for value in probabilities], fontsize=8)
    ax.set_xticks(range(len(labels)), [_text(label) for label in labels],
                  rotation=45, ha="right")
    ax.set(ylim=(0, 1.1), ylabel="Probability", title=_text(title))
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def plot_history(history: Mapping[str, Sequence[float]], path: str) -> None:
    """Writes loss and accuracy curves (train and `val_` series) side by side as a PNG.

    Args:
      history: Keras `History.history`: {"loss": [...], "val_loss": [...],
        "accuracy": [...], "val_accuracy": [...]}; other keys are ignored.
      path: PNG to write, local or gs://.
    """
    _write(path, _render_history(history))


def plot_confusion(matrix: Any, labels: Sequence[str], path: str) -> None:
    """Writes a heatmap of the confusion matrix with annotated counts as a PNG.

    Args:
      matrix: [n, n] counts, rows true labels, columns predicted labels.
      labels: the n label names.
      path: PNG to write, local or gs://.
    """
    _write(path, _render_confusion(matrix, labels))


def plot_waveforms(examples: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a grid (3 per row) of example waveforms titled with their labels as a PNG.

    Args:
      examples: dicts with "waveform" (float samples at 16 kHz) and "label".
      path: PNG to write, local or gs://.
    """
    _write(path, _render_waveforms(examples))


def plot_spectrograms(examples: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a grid of log-magnitude spectrograms (time on x) titled with labels as a PNG.

    Args:
      examples: dicts with "spectrogram" ((124, 129) |STFT|, frames by bins) and "label".
      path: PNG to write, local or gs://.
    """
    _write(path, _render_spectrograms(examples))


def plot_prediction(probabilities: Sequence[float], labels: Sequence[str], title: str,
                    path: str) -> None:
    """Writes a bar chart of one clip's class probabilities, top class highlighted, as a PNG.

    Args:
      probabilities: one probability per label.
      labels: the label names.
      title: the chart's title (e.g. the clip's file name and true label).
      path: PNG to write, local or gs://.
    """
    _write(path, _render_prediction(probabilities, labels, title))


# --- the page ------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } .muted { color: #666; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; margin: 1.5em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.7em 1.2em; min-width: 9em; }
.card .value { font-size: 1.6em; font-weight: 600; } .card .name { color: #666; }
.tables { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.3em 0.9em; text-align: left; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; border-top: 2px solid #bbb; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 2em; }
code, td.text { overflow-wrap: anywhere; }
"""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _format(value: Any) -> str:
    """A setting or count as display text: thousands separators, 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _key_value_table(title: str, values: Mapping[str, Any] | None) -> str:
    if not values:
        return f"<div><h2>{html.escape(title)}</h2><p class='muted'>none recorded</p></div>"
    # Numbers align right so their digits line up; text (paths, lists) reads from the left.
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td class='"
        f"{'number' if _is_number(value) else 'text'}'>"
        f"{html.escape(_format(value))}</td></tr>" for key, value in values.items())
    return f"<div><h2>{html.escape(title)}</h2><table>{rows}</table></div>"


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]], labels: Sequence[str],
                     macro_f1: Any) -> str:
    # The labels' own order (their index), then anything the metrics hold beyond them.
    order = [label for label in labels if label in per_class]
    order += [label for label in per_class if label not in order]
    rows = "".join(
        f"<tr><td>{html.escape(str(label))}</td>"
        + "".join(f"<td class='number'>{per_class[label].get(key, float('nan')):.3f}</td>"
                  for key in ("precision", "recall", "f1"))
        + f"<td class='number'>{int(per_class[label].get('support', 0)):,}</td></tr>"
        for label in order)
    footer = ("" if macro_f1 is None else
              f"<tfoot><tr><td>macro F1</td><td></td><td></td>"
              f"<td class='number'>{float(macro_f1):.3f}</td><td></td></tr></tfoot>")
    head = ("<thead><tr><th>Label</th><th class='number'>Precision</th>"
            "<th class='number'>Recall</th><th class='number'>F1</th>"
            "<th class='number'>Support</th></tr></thead>")
    return f"<h2>Per class (test set)</h2><table>{head}<tbody>{rows}</tbody>{footer}</table>"


def _figure(title: str, png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    note = f"<p>{caption}</p>" if caption else ""
    return (f"<h2>{html.escape(title)}</h2>{note}"
            f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>")


def write_report(job_dir: str, *, metrics: Mapping[str, Any],
                 history: Mapping[str, Sequence[float]], labels: Sequence[str],
                 examples: Sequence[Mapping[str, Any]], prediction: Mapping[str, Any]) -> str:
    """Writes the five PNGs and a self-contained report.html into `job_dir`.

    Args:
      job_dir: output directory, local or gs://.
      metrics: the run's metrics: "test_accuracy", "test_loss", "parameters", "model",
        "per_class" (as `trainer.metrics.classification_metrics` returns it),
        "confusion_matrix", and optionally "macro_f1", "counts" and "settings" (dicts).
      history: Keras `History.history` (loss, accuracy and their val_ series).
      labels: label names in index order.
      examples: clips to show, dicts with "waveform", "spectrogram" and "label"; when
        empty, the waveform and spectrogram figures are left out.
      prediction: {"path": clip path, "label": its true label (may be empty),
        "probabilities": one per label} for one clip.

    Returns:
      The path of report.html.
    """
    job_dir = job_dir.rstrip("/")
    probabilities = np.asarray(prediction["probabilities"], dtype=np.float64)
    top = int(probabilities.argmax())
    clip_name = str(prediction["path"]).rsplit("/", 1)[-1]
    true_label = str(prediction.get("label") or "")
    chart_title = f"{clip_name} (true: {true_label})" if true_label else clip_name

    figures = [
        ("Training curves", CURVES_FILE, _render_history(history),
         "Loss and accuracy per epoch", ""),
        ("Confusion matrix", CONFUSION_FILE,
         _render_confusion(metrics["confusion_matrix"], labels),
         "Test-set confusion matrix", "Rows are true labels, columns predicted labels."),
        ("Example prediction", PREDICTION_FILE,
         _render_prediction(probabilities, labels, chart_title),
         "Class probabilities of one clip",
         f"<code>{html.escape(str(prediction['path']))}</code>: predicted "
         f"<strong>{html.escape(str(labels[top]))}</strong> ({probabilities[top]:.1%})"
         + (f", true label <strong>{html.escape(true_label)}</strong>." if true_label else ".")),
    ]
    if examples:
        figures += [
            ("Example waveforms", WAVEFORMS_FILE, _render_waveforms(examples),
             "Waveforms of example clips", ""),
            ("Example spectrograms", SPECTROGRAMS_FILE, _render_spectrograms(examples),
             "Log-magnitude spectrograms of example clips",
             "log |STFT|, 255-sample frames every 128 samples; time on x."),
        ]
    for _, name, png, _, _ in figures:
        _write(f"{job_dir}/{name}", png)

    cards = [("Test accuracy", f"{float(metrics['test_accuracy']):.2%}"),
             ("Test loss", f"{float(metrics['test_loss']):.4f}")]
    if metrics.get("macro_f1") is not None:
        cards.append(("Macro F1", f"{float(metrics['macro_f1']):.3f}"))
    cards += [("Parameters", _format(metrics.get("parameters", "n/a"))),
              ("Model", str(metrics.get("model", "n/a")))]
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join([
        "<h1>Keyword recognition: training report</h1>",
        f"<p class='muted'>{html.escape(job_dir)} &middot; {created}</p>",
        "<div class='cards'>",
        *(f"<div class='card'><div class='value'>{html.escape(value)}</div>"
          f"<div class='name'>{html.escape(name)}</div></div>" for name, value in cards),
        "</div><div class='tables'>",
        _key_value_table("Settings", metrics.get("settings")),
        _key_value_table("Counts", metrics.get("counts")),
        "</div>",
        _per_class_table(metrics.get("per_class") or {}, labels, metrics.get("macro_f1")),
        *(_figure(title, png, alt, caption) for title, _, png, alt, caption in figures),
    ])
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Training report: {html.escape(str(metrics.get('model', '')))}</title>"
            f"<style>{_STYLE}</style></head>\n<body>{body}</body></html>\n")
    path = f"{job_dir}/{REPORT_FILE}"
    _write(path, page.encode("utf-8"))
    return path
