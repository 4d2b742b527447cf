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

The figures come from `trainer.report.figures`; every file is written through
`tf.io.gfile`, so JOB_DIR may be local or `gs://`.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from typing import Any, Mapping, Sequence

import numpy as np

from trainer.report.figures import (CONFUSION_FILE, CURVES_FILE, PREDICTION_FILE,
                                    SPECTROGRAMS_FILE, WAVEFORMS_FILE, render_confusion,
                                    render_history, render_prediction,
                                    render_spectrograms, render_waveforms, write_file)

REPORT_FILE = "report.html"


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
        "per_class" (as `trainer.report.metrics.classification_metrics` returns it),
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
        ("Training curves", CURVES_FILE, render_history(history),
         "Loss and accuracy per epoch", ""),
        ("Confusion matrix", CONFUSION_FILE,
         render_confusion(metrics["confusion_matrix"], labels),
         "Test-set confusion matrix", "Rows are true labels, columns predicted labels."),
        ("Example prediction", PREDICTION_FILE,
         render_prediction(probabilities, labels, chart_title),
         "Class probabilities of one clip",
         f"<code>{html.escape(str(prediction['path']))}</code>: predicted "
         f"<strong>{html.escape(str(labels[top]))}</strong> ({probabilities[top]:.1%})"
         + (f", true label <strong>{html.escape(true_label)}</strong>." if true_label else ".")),
    ]
    if examples:
        figures += [
            ("Example waveforms", WAVEFORMS_FILE, render_waveforms(examples),
             "Waveforms of example clips", ""),
            ("Example spectrograms", SPECTROGRAMS_FILE, render_spectrograms(examples),
             "Log-magnitude spectrograms of example clips",
             "log |STFT|, 255-sample frames every 128 samples; time on x."),
        ]
    if metrics.get("streaming"):  # keyword detection on generated long recordings
        from trainer.report import detection as detection_report  # pylint: disable=C0415
        figures.append(detection_report.report_figure(metrics["streaming"]))
    for _, name, png, _, _ in figures:
        write_file(f"{job_dir}/{name}", png)

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
    write_file(path, page.encode("utf-8"))
    return path
