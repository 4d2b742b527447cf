"""Finds keywords in recordings of any length with an exported model.

    python -m trainer.detect --model-dir JOB recording.wav [more.wav ...]
    python -m trainer.detect --model-dir JOB long.wav --json --threshold 0.9 --plot long.png
    python -m trainer.detect --model-dir JOB long.wav --truth long.csv   # recall, false accepts

Each file is read in blocks (a 10-hour file costs the memory of a few seconds); the
model scores one-second windows every 96 ms, a batch of windows per call; scores are
smoothed and an event fires when a keyword's smoothed score reaches its threshold (see
`pipelines.events`). Thresholds and smoothing come from JOB/export/detection.json,
which training writes for a model with an `_unknown_` class; `--threshold` overrides
them. One line per event as soon as it fires, `path  time  label  score`, or JSON Lines
with `--json`::

    {"path": "long.wav", "label": "yes", "time": 12.3, "score": 0.97}

`time` is when the keyword is recognised (the end of the window that fired), in seconds
from the start of the file. A progress line per file goes to stderr. A file that cannot
be read gets one line on stderr and the others are still processed (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402

from pipelines import audio, contract, events, inputs  # noqa: E402
from pipelines.errors import PartialFailure, UserError, first_line, run_cli  # noqa: E402
from trainer import detection, scoring, streams  # noqa: E402
from trainer.litert import runtime  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.detect",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="recordings (WAV, FLAC, OGG, MP3; local or gs://)")
    parser.add_argument("--model-dir", default=scoring.SHIPPED_MODEL_DIR,
                        help="a training job directory (or its export/ folder); default: "
                             "the detector that comes with the repository, "
                             "models/speech-commands")
    parser.add_argument("--engine", default=runtime.SAVEDMODEL, choices=runtime.ENGINES,
                        help="which exported file scores the windows: the SavedModel, "
                             "export/model.tflite or export/model_int8.tflite (LiteRT)")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of text")
    parser.add_argument("--threshold", type=events.threshold_arg, default=None,
                        help="one threshold for every keyword, instead of detection.json's")
    parser.add_argument("--plot", default=None,
                        help="PNG of the first file: waveform, scores over time, events")
    parser.add_argument("--truth", default=None, metavar="CSV",
                        help="label,start_ms,end_ms of the words in the (single) file: "
                             "prints recall, false accepts per hour, wrong labels, delay")
    return parser


def read_truth(path: str) -> list:
    if not tf.io.gfile.exists(path):
        raise UserError(f"{path}: truth CSV not found")
    with tf.io.gfile.GFile(path, "r") as handle:
        text = handle.read()
    try:
        return streams.read_truth_csv(text)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None


def check_truth(path: str, truth: list, labels: list[str]) -> None:
    """Warns of truth rows naming labels the model lacks (they count as misses)."""
    unknown = sorted({row.label for row in truth} - set(labels) - set(events.NON_KEYWORDS))
    if unknown:
        rows = sum(row.label in unknown for row in truth)
        print(f"warning: {path}: {rows} of its rows name labels the model does not have "
              f"({', '.join(unknown)}); they count as misses", file=sys.stderr)


def check_plot_path(path: str) -> None:
    """Refuses, before any scoring, a --plot the command could not write."""
    if not path.endswith(".png"):
        raise UserError(f"{path}: --plot must name a .png file")
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    if "://" not in path and not tf.io.gfile.isdir(parent):
        raise UserError(f"{path}: cannot write the plot (folder {parent} does not exist)")
    if "://" not in path:
        import os  # pylint: disable=import-outside-toplevel
        if not os.access(parent, os.W_OK) or (os.path.exists(path)
                                              and not os.access(path, os.W_OK)):
            raise UserError(f"{path}: cannot write the plot (permission denied)")


class Printer:
    """Prints each event of one file as it fires, and keeps it."""

    def __init__(self, path: str, as_json: bool):
        self.path, self.as_json = path, as_json
        self.found: list[dict] = []

    def event(self, event: events.Event) -> None:
        result = {"path": self.path, "label": event.label, "time": event.time,
                  "score": event.score}
        self.found.append(result)
        print(json.dumps(result) if self.as_json else
              f"{self.path}\t{event.time:.2f}\t{event.label}\t{event.score:.3f}", flush=True)


def detect_one(path: str, scorer: scoring.Scorer, config: events.Config, as_json: bool,
               trace: bool) -> tuple[Printer, scoring.Detection]:
    """Events of one file, printed as they fire (raises AudioError or an I/O error)."""
    name = inputs.printable(path)
    printer = Printer(name, as_json)
    started = time.monotonic()
    with scoring.open_recording(path) as handle:
        info = audio.probe(handle)
    print(f"{name}: {info.duration:.1f} s of audio ...", file=sys.stderr, flush=True)
    if info.declared_frames:
        print(f"warning: {name}: the header says {info.declared_frames / info.sample_rate:.1f}"
              f" s but the file holds {info.duration:.1f} s (cut short?); detecting on what "
              "it holds", file=sys.stderr)
    found = scoring.detect_file(path, scorer, config, trace=trace, on_event=printer.event)
    seconds = found.num_samples / contract.SAMPLE_RATE
    print(f"{name}: {len(found.events)} events in {seconds:.1f} s of audio "
          f"({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return printer, found


def run(argv: Optional[list[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.truth and len(args.files) != 1:
        raise UserError("--truth describes one recording: give exactly one FILE")
    if args.plot:
        check_plot_path(args.plot)
    truth = read_truth(args.truth) if args.truth else None
    scorer = scoring.Scorer(args.model_dir, engine=args.engine)
    config = scoring.load_config(scorer, args.threshold)
    if truth is not None:
        check_truth(args.truth, truth, scorer.labels)
    results, failed = [], []
    for number, path in enumerate(args.files):
        name = inputs.printable(path)
        try:
            printer, found = detect_one(path, scorer, config, args.json,
                                        trace=bool(args.plot) and number == 0)
        except audio.AudioError as error:
            failed.append(path)
            print(f"error: {name}: {error}", file=sys.stderr)
            continue
        except (OSError, tf.errors.OpError) as error:
            failed.append(path)
            reason = getattr(error, "message", None) or first_line(error)
            print(f"error: {name}: cannot read ({reason.strip().splitlines()[0]})",
                  file=sys.stderr)
            continue
        results += printer.found
        if found.trace is not None:
            plot(found, scorer.labels, config, name, args.plot)
        if truth is not None:
            end = max((row.end_ms for row in truth), default=0) / 1000
            if end > found.num_samples / contract.SAMPLE_RATE + 0.01:
                print(f"warning: {args.truth}: rows reach {end:.1f} s, past the end of "
                      f"{name} ({found.num_samples / contract.SAMPLE_RATE:.1f} s); they "
                      "count as misses", file=sys.stderr)
            match = detection.match_events(found.events, truth)
            metrics = detection.stream_metrics([match],
                                               found.num_samples / contract.SAMPLE_RATE)
            print(json.dumps({"path": name, "metrics": metrics}) if args.json
                  else f"{name}: {detection.format_metrics(metrics)}", flush=True)
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(args.files)} files could not be "
                             "read (see above)")
    return results


def plot(found: scoring.Detection, labels: list[str], config: events.Config, title: str,
         path: str) -> None:
    """Writes --plot; a failure to write is one line on stderr, not the end of the run."""
    from trainer.report import detection as figures  # pylint: disable=import-outside-toplevel
    try:
        figures.plot_detection(found.trace, found.events, labels, config.thresholds,
                               config.smoothing, title, path)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "message", None) or first_line(error)
        print(f"error: {path}: cannot write the plot ({reason})", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
