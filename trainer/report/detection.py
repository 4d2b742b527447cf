"""Figures of keyword detection: a recording's scores over time, and DET curves.

They take plain arrays and metric dicts (`trainer.detection`'s), and import matplotlib
only when drawing.
"""

from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np

from trainer.detection import HIT_AFTER_S, HIT_BEFORE_S, format_streaming

DET_FILE = "det_curve.png"


def plot_detection(trace: dict, events: Sequence, labels: Sequence[str], thresholds: dict,
                   smoothing: int, title: str, path: str) -> None:
    """Waveform peaks above, smoothed keyword scores below, events marked; a PNG.

    Args:
      trace: "times" [windows] (seconds), "smoothed" [windows, labels], "peaks" (the
        waveform's outline) and "peaks_per_second".
      events: (time, label, score) of each event.
      labels: the model's labels (the columns of "smoothed").
      thresholds: keyword -> threshold; only keywords are drawn.
      smoothing: windows averaged (for the axis label).
      title: above the figure; path: the PNG to write (local or gs://).
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    from trainer.report import figures  # pylint: disable=import-outside-toplevel
    figure = Figure(figsize=(12, 5), layout="constrained")
    wave_ax, score_ax = figure.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    peaks = trace["peaks"]
    seconds = np.arange(len(peaks)) / trace["peaks_per_second"]
    wave_ax.fill_between(seconds, -peaks, peaks, color="0.4", linewidth=0)
    wave_ax.set_ylabel("waveform")
    wave_ax.set_title(figures.safe_text(title))
    for column, label in enumerate(labels):
        if label in thresholds:
            score_ax.plot(trace["times"], trace["smoothed"][:, column], linewidth=1,
                          label=label)
    for event in events:
        for ax in (wave_ax, score_ax):
            ax.axvline(event.time, color="red", linewidth=0.8, alpha=0.6)
        score_ax.annotate(event.label, (event.time, 1.02), rotation=90, fontsize=7,
                          ha="center", va="bottom", annotation_clip=False)
    for threshold in sorted(set(thresholds.values())):
        score_ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
    score_ax.set_ylim(0, 1.1)
    score_ax.set_xlabel("seconds (a score is drawn at the end of its window)")
    score_ax.set_ylabel(f"smoothed score ({smoothing} windows)")
    score_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    figures.write_file(path, figures.to_png(figure))


def render_det_curve(curves: dict, chosen: Optional[dict] = None) -> bytes:
    """PNG of miss rate against false accepts per hour, one line per curve.

    Args:
      curves: name -> rows of `detection.det_curve`.
      chosen: {"false_accepts_per_hour", "miss_rate"} of the operating point, marked.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    from trainer.report import figures  # pylint: disable=import-outside-toplevel
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    ax = figure.subplots()
    for name, rows in curves.items():
        ax.plot([row["false_accepts_per_hour"] for row in rows],
                [row["miss_rate"] for row in rows], marker=".", label=str(name))
    if chosen:
        ax.plot([chosen["false_accepts_per_hour"]], [chosen["miss_rate"]], "r*",
                markersize=12, label="operating point (test)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return figures.to_png(figure)


def report_figure(streaming: dict) -> tuple[str, str, bytes, str, str]:
    """(title, file name, PNG, alt text, caption) of the DET curve for report.html."""
    test = streaming["test"]
    png = render_det_curve({"val": streaming["val_det_curve"], "test": test["det_curve"]},
                           {"false_accepts_per_hour": test["false_accepts_per_hour"],
                            "miss_rate": 1 - test["recall"]})
    caption = html.escape(format_streaming(streaming)) + (
        ". Each point is one threshold for every keyword; an event is a hit when it "
        f"lies between {HIT_BEFORE_S:g} s before the keyword's clip and {HIT_AFTER_S:g} s "
        "after it.")
    return ("Keyword detection in long recordings (DET curve)", DET_FILE, png,
            "Miss rate against false accepts per hour", caption)
