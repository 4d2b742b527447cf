"""The training report's figures: matplotlib drawn off-screen, written as PNG.

Figures are drawn on `matplotlib.figure.Figure` objects with an explicit Agg canvas, never
through pyplot's global state, so no display is needed, nothing leaks between calls and the
backend of a notebook that imports this module is left alone. Every file is written through
`tf.io.gfile`, so paths may be local or `gs://`.
"""

from __future__ import annotations

import io
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

# Cell edges of the spectrogram plot: frame i spans [i, i + 1) hops in seconds (so the
# x axis starts at 0 like the waveforms'), bin k is centred on k * 62.5 Hz, shown in kHz.
_TIME_EDGES = np.arange(contract.NUM_FRAMES + 1) * contract.FRAME_STEP / contract.SAMPLE_RATE
_KHZ_EDGES = ((np.arange(contract.NUM_BINS + 1) - 0.5)
              * contract.SAMPLE_RATE / contract.FFT_LENGTH / 1000)


def safe_text(value: Any) -> str:
    """Text for matplotlib: '$' escaped so a label is never parsed as mathtext."""
    return str(value).replace("$", r"\$")


def to_png(figure: Figure) -> bytes:
    """Renders a figure to PNG bytes in memory."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def write_file(path: str, data: bytes) -> None:
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


def render_history(history: Mapping[str, Sequence[float]]) -> bytes:
    names = {key.removeprefix("val_") for key in history}
    panels = (["loss"] if "loss" in names else []) + sorted(
        name for name in names if "accuracy" in name)
    figure = Figure(figsize=(5.5 * max(len(panels), 1), 4), layout="constrained")
    if not panels:  # e.g. a run resumed after its last epoch: say so rather than fail
        figure.text(0.5, 0.5, "no loss or accuracy history recorded", ha="center")
        return to_png(figure)
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
    return to_png(figure)


def render_confusion(matrix: Any, labels: Sequence[str]) -> bytes:
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {len(labels)} labels")
    size = max(6.0, 0.65 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    names = [safe_text(label) for label in labels]
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
    return to_png(figure)


def render_waveforms(examples: Sequence[Mapping[str, Any]]) -> bytes:
    figure, axes = _grid(len(examples), 4.0, 2.6)
    for ax, example in zip(axes, examples):
        waveform = np.asarray(example["waveform"], dtype=np.float32).ravel()
        ax.plot(np.arange(waveform.size) / contract.SAMPLE_RATE, waveform, linewidth=0.6)
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(safe_text(example["label"]))
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set(xlabel="Time (s)", ylabel="Amplitude")
        ax.label_outer()
    return to_png(figure)


def render_spectrograms(examples: Sequence[Mapping[str, Any]]) -> bytes:
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
        ax.set_title(safe_text(example["label"]))
    for ax in axes:
        ax.set(xlabel="Time (s)", ylabel="Frequency (kHz)")
        ax.label_outer()
    figure.colorbar(mesh, ax=axes, label="log |STFT|", shrink=0.8)
    return to_png(figure)


def render_prediction(probabilities: Sequence[float], labels: Sequence[str],
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
    ax.set_xticks(range(len(labels)), [safe_text(label) for label in labels],
                  rotation=45, ha="right")
    ax.set(ylim=(0, 1.1), ylabel="Probability", title=safe_text(title))
    ax.grid(axis="y", alpha=0.3)
    return to_png(figure)


def plot_history(history: Mapping[str, Sequence[float]], path: str) -> None:
    """Writes loss and accuracy curves (train and `val_` series) side by side as a PNG.

    Args:
      history: Keras `History.history`: {"loss": [...], "val_loss": [...],
        "accuracy": [...], "val_accuracy": [...]}; other keys are ignored.
      path: PNG to write, local or gs://.
    """
    write_file(path, render_history(history))


def plot_confusion(matrix: Any, labels: Sequence[str], path: str) -> None:
    """Writes a heatmap of the confusion matrix with annotated counts as a PNG.

    Args:
      matrix: [n, n] counts, rows true labels, columns predicted labels.
      labels: the n label names.
      path: PNG to write, local or gs://.
    """
    write_file(path, render_confusion(matrix, labels))


def plot_waveforms(examples: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a grid (3 per row) of example waveforms titled with their labels as a PNG.

    Args:
      examples: dicts with "waveform" (float samples at 16 kHz) and "label".
      path: PNG to write, local or gs://.
    """
    write_file(path, render_waveforms(examples))


def plot_spectrograms(examples: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a grid of log-magnitude spectrograms (time on x) titled with labels as a PNG.

    Args:
      examples: dicts with "spectrogram" ((124, 129) |STFT|, frames by bins) and "label".
      path: PNG to write, local or gs://.
    """
    write_file(path, render_spectrograms(examples))


def plot_prediction(probabilities: Sequence[float], labels: Sequence[str], title: str,
                    path: str) -> None:
    """Writes a bar chart of one clip's class probabilities, top class highlighted, as a PNG.

    Args:
      probabilities: one probability per label.
      labels: the label names.
      title: the chart's title (e.g. the clip's file name and true label).
      path: PNG to write, local or gs://.
    """
    write_file(path, render_prediction(probabilities, labels, title))
