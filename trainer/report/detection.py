"""Detection measured on generated streams of a preprocessing run, and its figures.

At the end of training, for a model with an `_unknown_` class, `evaluate_after_training`
builds long recordings from the val split (keywords and `_unknown_` clips over the
run's background noise, `trainer.streams`), chooses the smoothing and threshold there
(the highest recall within `detection.MAX_FALSE_ACCEPTS_PER_HOUR`), writes them to
JOB/export/detection.json, and reports recall, false accepts per hour, wrong-label rate,
delay and the DET curve on recordings built the same way from the test split. The same
functions serve `trainer.evaluate --streams` and `benchmarks.detection`.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Optional

import numpy as np
import tensorflow as tf

from pipelines import contract
from pipelines.errors import UserError
from trainer import detect, detection, streams

STREAM_SECONDS = 600
NUM_STREAMS = 3
MIN_STREAM_SECONDS = 60
DET_FILE = "det_curve.png"


def split_clips(data_dir: str, split: str) -> tuple[list, list]:
    """(keyword (label, clip) pairs, `_unknown_` clips) of one split of a preprocessing run.

    `_silence_` clips are left out: the streams' background is their silence.
    """
    from trainer import data  # pylint: disable=import-outside-toplevel
    files = data.shard_files(data_dir, split)
    dataset = data.make_dataset(files, 256, False, waveform=True, keep_features=True)
    keywords, unknowns = [], []
    for batch in dataset:
        names = [name.decode() for name in batch[contract.LABEL_NAME].numpy()]
        for name, wave in zip(names, batch[contract.WAVEFORM].numpy()):
            if name == streams.UNKNOWN:
                unknowns.append(wave)
            elif name != streams.SILENCE:
                keywords.append((name, wave))
    if not keywords:
        raise UserError(f"{data_dir}/{split}: no keyword clips to build streams from")
    if not any(np.any(wave) for _, wave in keywords[:10]):
        raise UserError(f"{data_dir}: no stored waveforms (preprocess without "
                        "--no-waveforms to build streams)")
    return keywords, unknowns


def background_recordings(data_dir: str) -> list[np.ndarray]:
    """The run's background-noise recordings (empty when it has none)."""
    files = tf.io.gfile.glob(contract.background_pattern(data_dir))
    if not files:
        return []
    compression = "GZIP" if files[0].endswith(contract.GZIP_SUFFIX) else ""
    return [contract.parse_background(record)[contract.WAVEFORM].numpy()
            for record in tf.data.TFRecordDataset(files, compression_type=compression)]


def stream_seconds_for(num_clips: int, count: int = NUM_STREAMS) -> float:
    """Stream length that lays each clip of a split about twice (3 s a word), in bounds."""
    return float(min(STREAM_SECONDS, max(MIN_STREAM_SECONDS, 2 * num_clips * 3 / count)))


def split_streams(data_dir: str, split: str, count: int = NUM_STREAMS,
                  duration_s: Optional[float] = None, seed: int = 0) -> list:
    """`count` generated recordings (seeds seed, seed+1, ...) from one split.

    Args:
      duration_s: length of each; None for `stream_seconds_for` the split's size.
    """
    keywords, unknowns = split_clips(data_dir, split)
    noises = background_recordings(data_dir)
    if duration_s is None:
        duration_s = stream_seconds_for(len(keywords) + len(unknowns), count)
    return [streams.build_stream(keywords, unknowns, noises, duration_s, seed + i)
            for i in range(count)]


def score_streams(generated: list, scorer: detect.Scorer, config: detection.Config) -> list:
    """ScoredStreams of generated recordings (what the sweeps and metrics work on)."""
    return [detection.ScoredStream(detect.score_audio(stream.audio, scorer, config),
                                   len(stream.audio), stream.truth) for stream in generated]


def split_metrics(scorer: detect.Scorer, config: detection.Config, data_dir: str,
                  split: str, count: int = NUM_STREAMS, duration_s: Optional[float] = None,
                  seed: int = 0) -> dict:
    """Streaming metrics at `config` and the DET curve on `split` streams."""
    generated = split_streams(data_dir, split, count, duration_s, seed)
    scored = score_streams(generated, scorer, config)
    metrics = detection.evaluate(scored, scorer.labels, config)
    metrics.update({"split": split, "streams": count,
                    "stream_seconds": generated[0].duration_s, "seed": seed,
                    "det_curve": detection.det_curve(scored, scorer.labels, config)})
    return metrics


def evaluate_after_training(job_dir: str, data_dir: str) -> dict:
    """Chooses the operating point on val streams, writes it, measures it on test streams.

    Returns:
      {"operating_point": detection.json's content, "val_det_curve": rows at the chosen
      smoothing, "test": metrics and DET curve on test streams}.
    """
    scorer = detect.Scorer(job_dir)
    base = detection.default_config(scorer.labels)
    generated = split_streams(data_dir, contract.VAL)
    scored = score_streams(generated, scorer, base)
    config, curves = detection.choose_operating_point(scored, scorer.labels, base)
    config = dataclasses.replace(config, chosen_on={
        **config.chosen_on, "split": contract.VAL, "streams": len(generated),
        "stream_seconds": generated[0].duration_s})
    detect.write_config(scorer.export_dir, config)
    test = split_metrics(scorer, config, data_dir, contract.TEST)
    return {"operating_point": detection.config_to_dict(config),
            "val_det_curve": curves[config.smoothing], "test": test}


def format_streaming(streaming: dict) -> str:
    point, test = streaming["operating_point"], streaming["test"]
    threshold = sorted(set(point["thresholds"].values()))
    return (f"Detection on {test['streams']} generated test recordings of "
            f"{test['stream_seconds'] / 60:.0f} min, threshold {threshold} and smoothing "
            f"{point['smoothing']} chosen on val: {detect.format_metrics(test)}")


# --- figures ------------------------------------------------------------------------

def plot_detection(result: detect.Detection, labels: list[str], config: detection.Config,
                   title: str, path: str) -> None:
    """Waveform peaks above, smoothed keyword scores below, events marked; a PNG."""
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    from trainer.report import figures  # pylint: disable=import-outside-toplevel
    trace = result.trace
    figure = Figure(figsize=(12, 5), layout="constrained")
    wave_ax, score_ax = figure.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    peaks = trace["peaks"]
    seconds = np.arange(len(peaks)) / detect.PEAKS_PER_SECOND
    wave_ax.fill_between(seconds, -peaks, peaks, color="0.4", linewidth=0)
    wave_ax.set_ylabel("waveform")
    wave_ax.set_title(figures.safe_text(title))
    for column, label in enumerate(labels):
        if label in config.thresholds:
            score_ax.plot(trace["times"], trace["smoothed"][:, column], linewidth=1,
                          label=label)
    for event in result.events:
        for ax in (wave_ax, score_ax):
            ax.axvline(event.time, color="red", linewidth=0.8, alpha=0.6)
        score_ax.annotate(event.label, (event.time, 1.02), rotation=90, fontsize=7,
                          ha="center", va="bottom", annotation_clip=False)
    for threshold in sorted(set(config.thresholds.values())):
        score_ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8)
    score_ax.set_ylim(0, 1.1)
    score_ax.set_xlabel("seconds (a score is drawn at the end of its window)")
    score_ax.set_ylabel(f"smoothed score ({config.smoothing} windows)")
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
        "lies between 0.25 s before the keyword's clip and 0.75 s after it.")
    return ("Keyword detection in long recordings (DET curve)", DET_FILE, png,
            "Miss rate against false accepts per hour", caption)


def evaluate_streams(job_dir: str, data_dir: str, split: str, count: int = NUM_STREAMS,
                     duration_s: Optional[float] = None) -> dict:
    """`split_metrics` at the job's stored operating point (or the default one)."""
    scorer = detect.Scorer(job_dir)
    config = detect.load_config(scorer, None)
    return {"operating_point": detection.config_to_dict(config),
            **split_metrics(scorer, config, data_dir, split, count, duration_s)}


def wanted_after_training(labels: list[str], has_waveforms: bool) -> bool:
    """Whether training should choose an operating point: a model with `_unknown_`, and
    stored waveforms to build the recordings from."""
    return streams.UNKNOWN in labels and has_waveforms


def format_split(metrics: dict) -> str:
    """One line on `split_metrics`' result."""
    return (f"Detection on {metrics['streams']} generated {metrics['split']} recordings of "
            f"{metrics['stream_seconds'] / 60:.1f} min: {detect.format_metrics(metrics)}")
