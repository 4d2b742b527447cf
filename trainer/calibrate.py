"""Detection measured on long recordings built from a preprocessing run, and the operating
point chosen on them.

At the end of training, for a model with an `_unknown_` class, `evaluate_after_training`
builds long recordings from the val split (keywords and `_unknown_` clips over the
run's background noise, `trainer.streams`), chooses the smoothing and threshold there
(the highest recall within `detection.MAX_FALSE_ACCEPTS_PER_HOUR`), writes them to
JOB/export/detection.json, and reports recall, false accepts per hour, wrong-label rate,
delay and the DET curve on recordings built the same way from the test split. The same
functions serve `trainer.evaluate --streams` and `benchmarks.detection`.

As a command, it writes such a recording and its truth, to try `trainer.detect` on::

    python -m trainer.calibrate recording --data-dir OUT --split test --seconds 120 \\
        --output long.wav
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import sys
from typing import NamedTuple, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import contract, events, tts  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import data, detection, scoring, streams  # noqa: E402

STREAM_SECONDS = 600
NUM_STREAMS = 3
MIN_STREAM_SECONDS = 60
CALIBRATION_MINUTES = 30.0  # of val recordings (trainer.task --calibration-minutes)
KEYWORD_FREE_MINUTES = 60.0


def split_clips(data_dir: str, split: str, synthetic: bool = False) -> tuple[list, list]:
    """(keyword (label, clip) pairs, `_unknown_` clips) of one split of a preprocessing run.

    `_silence_` clips are left out: the streams' background is their silence. So are
    clips of synthetic speech (`pipelines.synthesize`) unless `synthetic`: recordings
    that measure a detector hold recorded speech only.
    """
    metadata = data.read_metadata(data_dir)
    if not metadata.waveforms:
        raise UserError(f"{data_dir}: no stored waveforms (preprocess without "
                        "--no-waveforms to build recordings from its clips)")
    files = data.shard_files(data_dir, split)
    dataset = data.make_dataset(files, 256, False, waveform=True, keep_features=True)
    keywords, unknowns = [], []
    for batch in dataset:
        names = [name.decode() for name in batch[contract.LABEL_NAME].numpy()]
        paths = [path.decode("utf-8", "replace") for path in batch[contract.PATH].numpy()]
        for name, path, wave in zip(names, paths, batch[contract.WAVEFORM].numpy()):
            if not synthetic and tts.is_synthetic(path):
                continue
            if name == streams.UNKNOWN:
                unknowns.append(wave)
            elif name != streams.SILENCE:
                keywords.append((name, wave))
    if not keywords:
        raise UserError(f"{data_dir}/{split}: no keyword clips to build recordings from")
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
                  duration_s: Optional[float] = None, seed: int = 0,
                  keyword_free: bool = False) -> list:
    """`count` generated recordings (seeds seed, seed+1, ...) from one split.

    Args:
      duration_s: length of each; None for `stream_seconds_for` the split's size.
      keyword_free: other words over noise only (the split's `_unknown_` clips), for
        false accepts where no keyword is ever said.
    """
    keywords, unknowns = split_clips(data_dir, split)
    if duration_s is None:
        duration_s = stream_seconds_for(len(keywords) + len(unknowns), count)
    return _lay(keywords, unknowns, background_recordings(data_dir), count, duration_s, seed,
                keyword_free, f"{data_dir}/{split}")


def streams_for_minutes(data_dir: str, split: str, minutes: float, seed: int = 0,
                        keyword_free: bool = False) -> list:
    """Generated recordings of one split that last `minutes` together (streams of up to
    STREAM_SECONDS each)."""
    keywords, unknowns = split_clips(data_dir, split)
    seconds = stream_seconds_for(len(keywords) + len(unknowns))
    count = max(1, math.ceil(minutes * 60 / seconds - 1e-9))
    return _lay(keywords, unknowns, background_recordings(data_dir), count,
                minutes * 60 / count, seed, keyword_free, f"{data_dir}/{split}")


def _lay(keywords: list, unknowns: list, noises: list, count: int, duration_s: float,
         seed: int, keyword_free: bool, where: str) -> list:
    if keyword_free:
        if not unknowns:
            raise UserError(f"{where}: no _unknown_ clips for keyword-free recordings")
        keywords, unknowns = [(streams.UNKNOWN, clip) for clip in unknowns], []
    return [streams.build_stream(keywords, unknowns, noises, duration_s, seed + i)
            for i in range(count)]


def score_streams(generated: list, scorer: scoring.Scorer, config: events.Config) -> list:
    """ScoredStreams of generated recordings (what the sweeps and metrics work on)."""
    return [detection.ScoredStream(scoring.score_audio(stream.audio, scorer, config),
                                   len(stream.audio), stream.truth) for stream in generated]


def split_metrics(scorer: scoring.Scorer, config: events.Config, data_dir: str,
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


def write_config(export_dir: str, config: events.Config) -> str:
    """Writes export/detection.json; returns its path."""
    path = f"{export_dir.rstrip('/')}/{events.CONFIG_FILE}"
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(events.config_to_json(config))
    return path


def evaluate_after_training(job_dir: str, data_dir: str,
                            calibration_minutes: float = CALIBRATION_MINUTES) -> dict:
    """Chooses the operating point on val streams, writes it, measures it on test streams.

    Returns:
      {"operating_point": detection.json's content, "val_det_curve": rows at the chosen
      smoothing, "test": metrics and DET curve on test streams, "keyword_free": false
      accepts on an hour of the test split's other words over noise}.
    """
    scorer = scoring.Scorer(job_dir)
    config = choose_and_write(scorer, data_dir, calibration_minutes)
    return {"operating_point": events.config_to_dict(config.config),
            "val_det_curve": config.curve, "test": split_metrics(scorer, config.config,
                                                                 data_dir, contract.TEST),
            "keyword_free": keyword_free_metrics(scorer, config.config,
                                                 keyword_free_recordings(data_dir))}


class Chosen(NamedTuple):
    config: events.Config
    curve: list  # the val DET curve at the chosen smoothing


def choose_and_write(scorer: scoring.Scorer, data_dir: str,
                     minutes: float = CALIBRATION_MINUTES) -> Chosen:
    """Chooses smoothing and threshold on `minutes` of val recordings and writes them to
    the scorer's export/detection.json."""
    base = events.default_config(scorer.labels)
    generated = streams_for_minutes(data_dir, contract.VAL, minutes)
    scored = score_streams(generated, scorer, base)
    config, curves = detection.choose_operating_point(scored, scorer.labels, base)
    config = dataclasses.replace(config, chosen_on={
        **config.chosen_on, "split": contract.VAL, "streams": len(generated),
        "stream_seconds": generated[0].duration_s})
    write_config(scorer.export_dir, config)
    if not config.chosen_on["recall"]:
        budget = config.chosen_on["max_false_accepts_per_hour"]
        print(f"warning: {scorer.export_dir}/{events.CONFIG_FILE}: no threshold finds any "
              f"keyword of the val recordings within {budget:g} false accepts per hour "
              "(recall 0.0); the detector will miss keywords: train longer or on more data",
              file=sys.stderr)
    return Chosen(config, curves[config.smoothing])


def keyword_free_recordings(data_dir: str, minutes: float = KEYWORD_FREE_MINUTES) -> list:
    """`minutes` of the test split's other words over noise, no keyword said."""
    return streams_for_minutes(data_dir, contract.TEST, minutes, seed=100, keyword_free=True)


def keyword_free_metrics(scorer: scoring.Scorer, config: events.Config,
                         generated: list) -> dict:
    """False accepts on `keyword_free_recordings` (every event is a false accept)."""
    metrics = detection.evaluate(score_streams(generated, scorer, config), scorer.labels,
                                 config)
    return {"minutes": round(sum(g.duration_s for g in generated) / 60, 2),
            "false_accepts": metrics["false_accepts"],
            "false_accepts_per_hour": metrics["false_accepts_per_hour"]}


def evaluate_streams(job_dir: str, data_dir: str, split: str, count: int = NUM_STREAMS,
                     duration_s: Optional[float] = None) -> dict:
    """`split_metrics` at the job's stored operating point (or the default one)."""
    scorer = scoring.Scorer(job_dir)
    config = scoring.load_config(scorer, None)
    return {"operating_point": events.config_to_dict(config),
            **split_metrics(scorer, config, data_dir, split, count, duration_s)}


def wanted_after_training(labels: list[str], has_waveforms: bool) -> bool:
    """Whether training should choose an operating point: a model with `_unknown_`, and
    stored waveforms to build the recordings from."""
    return streams.UNKNOWN in labels and has_waveforms


# --- command line -------------------------------------------------------------------

def write_recording(data_dir: str, split: str, seconds: float, seed: int, output: str) -> str:
    """Writes a generated recording of one split to `output` (.wav) and its truth (.csv)."""
    import soundfile  # pylint: disable=import-outside-toplevel
    if not output.endswith(".wav"):
        raise UserError(f"{output}: the output must end in .wav")
    truth_path = output[:-len(".wav")] + ".csv"
    for path in (output, truth_path):
        if tf.io.gfile.exists(path):
            raise UserError(f"{path}: already exists; choose another --output")
    stream = split_streams(data_dir, split, 1, seconds, seed)[0]
    buffer = io.BytesIO()
    soundfile.write(buffer, stream.audio, contract.SAMPLE_RATE, format="WAV",
                    subtype="PCM_16")
    parent = output.rsplit("/", 1)[0] if "/" in output else ""
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(output, "wb") as handle:
        handle.write(buffer.getvalue())
    with tf.io.gfile.GFile(truth_path, "w") as handle:
        handle.write(streams.format_truth_csv(stream.truth))
    keywords = sum(t.label not in events.NON_KEYWORDS for t in stream.truth)
    return (f"wrote {output} ({stream.duration_s:.0f} s, {keywords} keywords, "
            f"{len(stream.truth) - keywords} other words) and {truth_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.calibrate",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser(
        "recording", help="write a long recording of one split and its truth",
        description="Writes a long recording of one split's keywords and other words over "
                    "its background noise, and the truth beside it (OUTPUT minus .wav, "
                    "plus .csv: label,start_ms,end_ms).")
    recording.add_argument("--data-dir", required=True, help="a preprocessing run")
    recording.add_argument("--split", default=contract.TEST, choices=contract.SPLITS,
                           help="the split whose clips are laid down (default test)")
    recording.add_argument("--seconds", type=events.positive_at_most(24 * 3600), default=120.0,
                           help="length of the recording (default 120)")
    recording.add_argument("--seed", type=int, default=0,
                           help="seeds the choice and placement of clips and noise")
    recording.add_argument("--output", required=True,
                           help="the WAV to write (local or gs://)")
    return parser


def run(argv: Optional[list[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    message = write_recording(args.data_dir, args.split, args.seconds, args.seed, args.output)
    print(message)
    return message


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
