"""Finds keywords in recordings of any length with an exported model.

    python -m trainer.detect --model-dir JOB recording.wav [more.wav ...]
    python -m trainer.detect --model-dir JOB long.wav --json --threshold 0.9 --plot long.png
    python -m trainer.detect --model-dir JOB long.wav --truth long.csv   # recall, false accepts

Each file is read in blocks (a 10-hour file costs the memory of a few seconds); the
model scores one-second windows every 96 ms, a batch of windows per call; scores are
smoothed and an event fires when a keyword's smoothed score reaches its threshold (see
`trainer.detection`). Thresholds and smoothing come from JOB/export/detection.json,
which training writes for a model with an `_unknown_` class; `--threshold` overrides
them. One line per event, `path  time  label  score`, or JSON Lines with `--json`::

    {"path": "long.wav", "label": "yes", "time": 12.3, "score": 0.97}

`time` is when the keyword is recognised (the end of the window that fired), in seconds
from the start of the file. A file that cannot be read gets one line on stderr and the
others are still processed (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable, Iterator, NamedTuple, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import audio, contract  # noqa: E402
from pipelines.errors import PartialFailure, UserError, run_cli  # noqa: E402
from trainer import artifacts, detection, litert, streams  # noqa: E402

BATCH_WINDOWS = 64  # windows per model call
BLOCK_SAMPLES = BATCH_WINDOWS * contract.SAMPLE_RATE * detection.HOP_MS // 1000


class Scorer:
    """An exported model, loaded once, that scores one-second windows in batches.

    When the hop is a whole number of STFT steps (128 samples) the windows share their
    STFT frames: `score_span` computes each frame of the audio once and gives the model
    the windows' frames through its `spectrogram` signature. With 1 s windows every
    96 ms each frame belongs to ten windows, so this takes the STFT, about a quarter of
    a window's cost when each window computes its own, almost out of the bill. The
    frames are those the `waveform` signature computes per window (same samples, same
    STFT), so the scores are the same.
    """

    def __init__(self, model_dir: str, batch_windows: int = BATCH_WINDOWS,
                 engine: str = "savedmodel"):
        self.export_dir = contract.find_export(model_dir)
        self.batch_windows = batch_windows
        self.lite_model = None  # with a LiteRT engine: its model, run a window at a time
        if engine != "savedmodel":
            self.lite_model, self.labels = litert.load_engine(model_dir, engine)
            return
        self.model = artifacts.load_serving_model(model_dir)
        self._serve = self.model.signatures["waveform"]
        self._spectrogram = self.model.signatures["spectrogram"]
        self.labels = artifacts.read_model_labels(self.export_dir)
        self._span = tf.function(self._span_probabilities, input_signature=[
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None, contract.NUM_FRAMES], tf.int32)])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """float32 [n, window samples] -> probabilities [n, labels], window by window."""
        if self.lite_model is not None:
            return np.stack([self.lite_model.probabilities(window) for window in windows]) \
                if len(windows) else np.zeros((0, len(self.labels)), np.float32)
        out = []
        for start in range(0, len(windows), self.batch_windows):
            batch = windows[start:start + self.batch_windows]
            count = len(batch)
            if count < self.batch_windows:  # the XLA-compiled signature: one batch size
                batch = np.concatenate([batch, np.zeros(
                    (self.batch_windows - count, batch.shape[1]), np.float32)])
            outputs = self._serve(waveform=tf.constant(batch))
            out.append(outputs["probabilities"].numpy()[:count])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def _span_probabilities(self, samples, frame_index):
        magnitude = tf.abs(tf.signal.stft(samples, frame_length=contract.FRAME_LENGTH,
                                          frame_step=contract.FRAME_STEP,
                                          fft_length=contract.FFT_LENGTH))
        spectrograms = tf.gather(magnitude, frame_index)
        return self._spectrogram(spectrogram=spectrograms)["probabilities"]

    def score_span(self, samples: np.ndarray, offset: int, first: int, count: int,
                   config: detection.Config) -> np.ndarray:
        """Probabilities [count, labels] of windows first..first+count-1.

        Args:
          samples: audio whose sample 0 is sample `offset` of the recording, holding
            the windows (samples past the end of the recording may be missing).
          offset, first, count: as `detection.frame_windows`.
          config: window and hop.
        """
        window, hop = config.window, config.hop
        if (window != contract.CLIP_SAMPLES or hop % contract.FRAME_STEP
                or self.lite_model is not None):  # LiteRT files take one window each
            return self(detection.frame_windows(samples, offset, first, count, window, hop))
        out = []
        step = hop // contract.FRAME_STEP
        for batch_first in range(first, first + count, self.batch_windows):
            batch = min(self.batch_windows, first + count - batch_first)
            span = detection.frame_windows(samples, offset, batch_first, 1,
                                           (batch - 1) * hop + window, hop)[0]
            index = (np.arange(batch)[:, None] * step
                     + np.arange(contract.NUM_FRAMES)[None, :]).astype(np.int32)
            out.append(self._span(tf.constant(span), tf.constant(index)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


def _config_text(export_dir: str) -> tuple[str, Optional[str]]:
    """The path of export/detection.json and its text (None when training left none)."""
    path = f"{export_dir.rstrip('/')}/{detection.CONFIG_FILE}"
    if not tf.io.gfile.exists(path):
        return path, None
    with tf.io.gfile.GFile(path, "r") as handle:
        return path, handle.read()


def _stored_point(export_dir: str, labels: list[str], threshold: Optional[float]
                  ) -> tuple[Optional[str], detection.Config, list[str]]:
    """(detection.json's text or None, `detection.operating_point` on it: config, notes)."""
    path, text = _config_text(export_dir)
    try:
        return (text, *detection.operating_point(text, labels, threshold, export_dir))
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{path}: not a detection config ({error})") from None


def read_config(export_dir: str, labels: list[str]) -> Optional[detection.Config]:
    """export/detection.json, or None when training left none."""
    text, config, _ = _stored_point(export_dir, labels, None)
    return None if text is None else config


def write_config(export_dir: str, config: detection.Config) -> str:
    path = f"{export_dir.rstrip('/')}/{detection.CONFIG_FILE}"
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(detection.config_to_json(config))
    return path


class WindowBatch(NamedTuple):
    first: int  # number of the first window
    probabilities: np.ndarray  # [n, labels]
    times: np.ndarray  # seconds at which each window ends


class Windows:
    """Scores a recording's windows as its blocks arrive; `num_samples` once exhausted."""

    def __init__(self, blocks: Iterable[np.ndarray], scorer: Scorer, config: detection.Config,
                 keep_peaks: bool = False):
        self.blocks, self.scorer, self.config = blocks, scorer, config
        self.num_samples = 0
        self.keep_peaks = keep_peaks
        self.envelope: list[np.ndarray] = []  # per-block peaks, for plots

    def __iter__(self) -> Iterator[WindowBatch]:
        window, hop = self.config.window, self.config.hop
        buffer, offset, next_window = np.zeros(0, np.float32), 0, 0
        for block in self.blocks:
            self.num_samples += len(block)
            if self.keep_peaks:
                self.envelope.append(_peaks(block))
            buffer = np.concatenate([buffer, block]) if len(buffer) else block
            complete = (self.num_samples - window) // hop + 1 if self.num_samples >= window \
                else 0
            if complete > next_window:
                yield self._score(buffer, offset, next_window, complete - next_window,
                                  2 ** 62)
                next_window = complete
            drop = next_window * hop - offset
            buffer, offset = buffer[drop:], offset + drop
        if self.num_samples == 0:
            raise audio.AudioError("zero-length audio")
        total = detection.num_windows(self.num_samples, window, hop)
        if total > next_window:
            yield self._score(buffer, offset, next_window, total - next_window,
                              self.num_samples)

    def _score(self, buffer, offset, first, count, num_samples) -> WindowBatch:
        window, hop = self.config.window, self.config.hop
        times = detection.window_times(first, count, num_samples, window, hop)
        return WindowBatch(first, self.scorer.score_span(buffer, offset, first, count,
                                                         self.config), times)


PEAKS_PER_SECOND = 50


def _peaks(block: np.ndarray) -> np.ndarray:
    step = contract.SAMPLE_RATE // PEAKS_PER_SECOND
    whole = len(block) // step * step
    peaks = np.abs(block[:whole]).reshape(-1, step).max(axis=1) if whole else np.zeros(0)
    if whole < len(block):
        peaks = np.append(peaks, np.abs(block[whole:]).max())
    return peaks.astype(np.float32)


class Detection(NamedTuple):
    events: list  # detection.Event
    num_samples: int
    trace: Optional[dict]  # times, smoothed scores and waveform peaks, when asked for


def detect_blocks(blocks: Iterable[np.ndarray], scorer: Scorer, config: detection.Config,
                  trace: bool = False) -> Detection:
    """Events of one recording given as consecutive 16 kHz blocks."""
    windows = Windows(blocks, scorer, config, keep_peaks=trace)
    stream = detection.EventStream(scorer.labels, config)
    events, times, smoothed = [], [], []
    for batch in windows:
        found, scores = stream.push(batch.probabilities, batch.times)
        events += found
        if trace:
            times.append(batch.times)
            smoothed.append(scores)
    recorded = None
    if trace:
        recorded = {"times": np.concatenate(times), "smoothed": np.concatenate(smoothed),
                    "peaks": np.concatenate(windows.envelope)}
    return Detection(events, windows.num_samples, recorded)


def detect_file(path: str, scorer: Scorer, config: detection.Config,
                trace: bool = False) -> Detection:
    """Events of a WAV file (raises audio.AudioError, or OSError when unreadable)."""
    return detect_blocks(audio.read_blocks(path, BLOCK_SAMPLES), scorer, config, trace)


def score_audio(samples: np.ndarray, scorer: Scorer, config: detection.Config) -> np.ndarray:
    """Probabilities of every window of a recording held in memory (a generated stream)."""
    blocks = (samples[start:start + BLOCK_SAMPLES]
              for start in range(0, len(samples), BLOCK_SAMPLES))
    return np.concatenate([batch.probabilities for batch in Windows(blocks, scorer, config)])


# --- command line -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.detect",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.wav", help="local or gs:// paths")
    parser.add_argument("--model-dir", required=True,
                        help="a training job directory (or its export/ SavedModel)")
    parser.add_argument("--engine", default="savedmodel", choices=litert.ENGINES,
                        help="which exported file scores the windows: the SavedModel, "
                             "export/model.tflite or export/model_int8.tflite (LiteRT)")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of text")
    parser.add_argument("--threshold", type=detection.threshold_arg, default=None,
                        help="one threshold for every keyword, instead of detection.json's")
    parser.add_argument("--plot", default=None,
                        help="PNG of the first file: waveform, scores over time, events")
    parser.add_argument("--truth", default=None, metavar="CSV",
                        help="label,start_ms,end_ms of the words in the (single) file: "
                             "prints recall, false accepts per hour, wrong labels, delay")
    return parser


def load_config(scorer: Scorer, threshold: Optional[float]) -> detection.Config:
    """The stored operating point (or the default), `threshold` applied; notes on stderr."""
    _, config, notes = _stored_point(scorer.export_dir, scorer.labels, threshold)
    for note in notes:
        print(note, file=sys.stderr)
    return config


def _read_truth(path: str) -> list:
    if not tf.io.gfile.exists(path):
        raise UserError(f"{path}: truth CSV not found")
    with tf.io.gfile.GFile(path, "r") as handle:
        text = handle.read()
    try:
        return streams.read_truth_csv(text)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def format_metrics(metrics: dict) -> str:
    delay = metrics["mean_delay_s"]
    return (f"recall {metrics['recall']:.3f} ({metrics['hits']}/{metrics['keywords']} "
            f"keywords), {metrics['false_accepts_per_hour']:.1f} false accepts per hour "
            f"({metrics['false_accepts']} in {metrics['hours'] * 60:.1f} min), wrong label "
            f"{metrics['wrong_label_rate']:.3f}, mean delay "
            + ("-" if delay is None else f"{delay:.2f} s") + " after the keyword's end")


def run(argv: Optional[list[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.truth and len(args.files) != 1:
        raise UserError("--truth describes one recording: give exactly one FILE.wav")
    truth = _read_truth(args.truth) if args.truth else None
    scorer = Scorer(args.model_dir, engine=args.engine)
    config = load_config(scorer, args.threshold)
    results, failed = [], []
    for number, path in enumerate(args.files):
        try:
            found = detect_file(path, scorer, config, trace=bool(args.plot) and number == 0)
        except audio.AudioError as error:
            failed.append(path)
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        except (OSError, tf.errors.OpError) as error:
            failed.append(path)
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            print(f"error: {path}: cannot read ({reason.strip().splitlines()[0]})",
                  file=sys.stderr)
            continue
        for event in found.events:
            result = {"path": path, "label": event.label, "time": event.time,
                      "score": event.score}
            results.append(result)
            print(json.dumps(result) if args.json else
                  f"{path}\t{event.time:.2f}\t{event.label}\t{event.score:.3f}", flush=True)
        if found.trace is not None:
            from trainer.report import detection as detection_report  # pylint: disable=C0415
            detection_report.plot_detection(found, scorer.labels, config, path, args.plot)
        if truth is not None:
            match = detection.match_events(found.events, truth)
            metrics = detection.stream_metrics([match], found.num_samples / contract.SAMPLE_RATE)
            print(json.dumps({"path": path, "metrics": metrics}) if args.json
                  else f"{path}: {format_metrics(metrics)}")
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(args.files)} files could not be "
                             "read (see above)")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
