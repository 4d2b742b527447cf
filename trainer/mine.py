"""Hard-negative mining: a trained detector's own false alarms on training audio, learnt.

    python -m trainer.mine --base-job JOB --data-dir OUT --job-dir NEW [--rounds 2]

Each round builds long recordings from the **train** split only (its keywords, other
words, synthetic clips and background noise, `trainer.calibrate`), every clip replayed
up to 10% faster or slower (a model knows its own training clips too well to err on
them as it does on new speakers), scores them with the current model and keeps every
window where a keyword's smoothed score comes near firing (`--near`) where it should
not:

- on other words, or on a scrap of a keyword while another keyword scores: `_unknown_`;
- on background noise alone: `_silence_`;
- on a whole keyword scored as another keyword (go heard as no): that keyword's own
  label, a hard positive.

(A window of a keyword scored as itself is a detection, early or late, and is left.) The
mined windows are written as records (`NEW/mined/round-N.tfrecord`) and the model is
fine-tuned on the training split with every round's mined windows making up
`--mined-share` of each batch, augmented like the rest. After each round the operating
point is chosen again on `--calibration-minutes` of **val** recordings, and the round
with the highest val recall within the false-accept budget is kept (round 0 is the base
job itself). NEW is a job like any other (`trainer.job`), with the rounds in
metrics.json's "mining".
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import NamedTuple, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import audio, claim, contract, events  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import (artifacts, augment, calibrate, data, detection, job, models,  # noqa: E402
                     scoring, settings, streams)

NEAR = 0.3  # a keyword's smoothed score from which a window is looked at
WHOLE_OVERLAP_S = 0.75  # a window holding this much of a keyword's clip holds the keyword
CUT_OVERLAP_S = 0.3  # ... at most this much: a scrap of it, learnt as another word
SPEECH_OVERLAP_S = 0.25  # ... this much of another word's clip: it holds speech
SPEED_CHANGE = 0.1  # the train clips are replayed up to this much faster or slower
MINED = "mined"
SPEAKER = "mined"


class Mined(NamedTuple):
    """One window to learn from."""
    waveform: np.ndarray  # float32 [16000]
    label: str
    kind: str  # "other word", "cut keyword", "noise", "confused keyword"
    score: float
    heard: str  # the keyword that scored


def _overlap(window: tuple[float, float], truth) -> float:
    return max(0.0, min(window[1], truth.end_ms / 1000) - max(window[0], truth.start_ms / 1000))


def mine_stream(stream, probabilities: np.ndarray, labels: list[str], config: events.Config,
                near: float = NEAR) -> list[Mined]:
    """The windows of one scored recording that come near firing where they should not.

    Of each run of consecutive such windows (one false alarm spans several), the one with
    the highest score is kept.
    """
    smoothed = events.smooth(probabilities, config.smoothing)
    columns = np.array([i for i, label in enumerate(labels) if label not in events.NON_KEYWORDS])
    best = columns[smoothed[:, columns].argmax(axis=1)]
    score = smoothed[np.arange(len(smoothed)), best]
    found, run = [], None
    for index in np.flatnonzero(score >= near).tolist() + [None]:
        if run and (index is None or index != run[-1] + 1 or best[index] != best[run[0]]):
            top = max(run, key=lambda i: score[i])
            item = _judge(stream, top, labels[best[top]], float(score[top]), config)
            if item is not None:
                found.append(item)
            run = None
        if index is not None:
            run = (run or []) + [index]
    return found


def _judge(stream, index: int, heard: str, score: float, config: events.Config
           ) -> Optional[Mined]:
    start = index * config.hop
    window = (start / contract.SAMPLE_RATE, (start + config.window) / contract.SAMPLE_RATE)
    waveform = audio.pad_or_trim(stream.audio[start:start + config.window])
    keywords = [(t, _overlap(window, t)) for t in stream.truth
                if t.label not in events.NON_KEYWORDS]
    said = max(keywords, key=lambda pair: pair[1], default=(None, 0.0))
    if said[0] is not None and said[1] >= WHOLE_OVERLAP_S:
        if said[0].label == heard:
            return None  # a detection of the keyword said
        return Mined(waveform, said[0].label, "confused keyword", score, heard)
    if said[0] is not None and said[1] > 0 and said[0].label == heard:
        return None  # the keyword said, heard early or late: a hit, not a false accept
    if said[1] > CUT_OVERLAP_S:
        return None  # much of a keyword: taught as another word, it would cost recall
    others = sum(_overlap(window, t) for t in stream.truth if t.label in events.NON_KEYWORDS)
    if said[1] > 0:
        return Mined(waveform, events.UNKNOWN_LABEL, "cut keyword", score, heard)
    if others >= SPEECH_OVERLAP_S:
        return Mined(waveform, events.UNKNOWN_LABEL, "other word", score, heard)
    return Mined(waveform, events.SILENCE_LABEL, "noise", score, heard)


def read_pool(folder: str) -> list[np.ndarray]:
    """The clips of a folder of other words (`--pool`), each cut or padded to a second."""
    paths = sorted(tf.io.gfile.glob(f"{folder.rstrip('/')}/*"))
    clips = []
    for path in paths:
        try:
            clips.append(audio.pad_or_trim(audio.decode_wav(path)))
        except (audio.AudioError, OSError):
            continue
    if not clips:
        raise UserError(f"{folder}: no audio clips for --pool")
    return clips


def train_clips(data_dir: str, pool: tuple = ()) -> tuple[list, list, list]:
    """(keywords, other words, noises) the mining recordings are laid from: the train
    split's clips, synthetic ones included, the clips of `pool`, its background noise."""
    keywords, unknowns = calibrate.split_clips(data_dir, contract.TRAIN, synthetic=True)
    return keywords, list(unknowns) + list(pool), calibrate.background_recordings(data_dir)


def train_streams(clips: tuple[list, list, list], minutes: float, seed: int) -> list:
    """`minutes` of recordings of `train_clips`, each clip replayed at a random speed."""
    keywords, unknowns, noises = clips

    def replayed(clips: list[np.ndarray], offset: int) -> list[np.ndarray]:
        if not clips:
            return []
        out = []
        for start in range(0, len(clips), 512):
            batch = tf.constant(np.stack(clips[start:start + 512]))
            out += list(augment.speed_perturb(batch, tf.constant([seed, offset + start]),
                                              SPEED_CHANGE).numpy())
        return out

    keywords = list(zip([label for label, _ in keywords],
                        replayed([clip for _, clip in keywords], 0)))
    unknowns = replayed(unknowns, len(keywords))
    count = max(1, round(minutes / 10))
    return [streams.build_stream(keywords, unknowns, noises, minutes * 60 / count, seed + i)
            for i in range(count)]


def write_mined(path: str, mined: list[Mined], labels: list[str], round_number: int) -> None:
    """The mined windows as records of the preprocessing contract (waveform included)."""
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.TFRecordWriter(path) as writer:
        for number, item in enumerate(mined):
            writer.write(contract.serialize_example(
                audio.spectrogram(item.waveform), labels.index(item.label), item.label,
                SPEAKER, f"{MINED}:round-{round_number}/{number}:{item.kind}",
                contract.CLIP_SAMPLES, item.waveform))


def summary(mined: list[Mined]) -> dict:
    kinds: dict[str, int] = {}
    for item in mined:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    return {"windows": len(mined), "by_kind": dict(sorted(kinds.items()))}


def val_point(net: keras.Model, labels: list[str], generated: list) -> dict:
    """The operating point `net` would get on the val recordings `generated`."""
    scorer = scoring.Scorer.of_keras(net, labels)
    base = events.default_config(labels)
    scored = calibrate.score_streams(generated, scorer, base)
    config, _ = detection.choose_operating_point(scored, labels, base)
    return {**config.chosen_on, "smoothing": config.smoothing,
            "threshold": sorted(set(config.thresholds.values()))[0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.mine",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-job", required=True, help="a trained job with _unknown_")
    parser.add_argument("--data-dir", required=True, help="the preprocessing run it trained on")
    parser.add_argument("--job-dir", required=True, help="where the fine-tuned job goes")
    parser.add_argument("--rounds", type=int, default=2, help="mining rounds (default 2)")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="minutes of train recordings scored per round (default 60)")
    parser.add_argument("--pool", default=None, metavar="DIR",
                        help="a folder of clips of other words the model was not trained on "
                             "(synthetic speech from pipelines.synthesize), laid into the "
                             "mining recordings besides the train split's")
    parser.add_argument("--near", type=float, default=NEAR,
                        help=f"smoothed keyword score from which a window is looked at "
                             f"(default {NEAR})")
    parser.add_argument("--epochs", type=int, default=20,
                        help="fine-tuning epochs per round (default 20)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate of the fine-tuning (default: a tenth of the "
                             "recipe's)")
    parser.add_argument("--mined-share", type=float, default=0.25,
                        help="share of each fine-tuning batch drawn from mined windows "
                             "(default 0.25)")
    parser.add_argument("--calibration-minutes", type=float, default=60.0,
                        help="minutes of val recordings each round is judged on and the "
                             "operating point chosen on (default 60)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-report", dest="report", action="store_false")
    parser.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2])
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1 or not 0 < args.mined_share < 1 \
            or not 0 < args.near < 1 or args.minutes <= 0:
        parser.error("--rounds and --epochs must be at least 1, --mined-share and --near in "
                     "(0, 1), --minutes positive")
    labels = artifacts.read_model_labels(args.base_job)
    if data.read_labels(args.data_dir) != labels:
        raise UserError(f"{args.data_dir}: labels {data.read_labels(args.data_dir)} differ "
                        f"from the base job's {labels}")
    if events.UNKNOWN_LABEL not in labels:
        raise UserError(f"{args.base_job}: no {events.UNKNOWN_LABEL} class: mining needs a "
                        "keyword-spotting model (preprocess with --unknown-percent)")
    base_metrics = artifacts.read_job_metrics(args.base_job)
    model_name = artifacts.job_model_name(args.base_job)
    metadata = data.read_metadata(args.data_dir)
    files = data.check_shards(args.data_dir, metadata, contract.SPLITS)
    job_dir = args.job_dir.rstrip("/")
    with claim.Claim(job_dir, "python -m trainer.mine"):
        return _mine(args, labels, base_metrics, model_name, metadata, files, job_dir)


def _mine(args, labels, base_metrics, model_name, metadata, files, job_dir) -> dict:
    base_settings = base_metrics.get("settings", {})
    recipe = models.get_recipe(model_name)
    recipe = dataclasses.replace(
        recipe, epochs=args.epochs, warmup_epochs=0,
        learning_rate=args.learning_rate or recipe.learning_rate / 10,
        negative_weight=float(base_settings.get("negative_weight", recipe.negative_weight)))
    if recipe.augmentation is not None and "augmentation" in base_settings:
        recipe = dataclasses.replace(recipe, augmentation=dataclasses.replace(
            recipe.augmentation, max_shift=base_settings["augmentation"]["max_shift"]))
    run = settings.RunSettings(data_dir=args.data_dir, job_dir=job_dir, model=model_name,
                               seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    net = artifacts.load_keras_model(args.base_job)
    train_size = data.split_size(metadata, contract.TRAIN)
    val_recordings = calibrate.streams_for_minutes(args.data_dir, contract.VAL,
                                                   args.calibration_minutes)
    rounds = [{"round": 0, "val": val_point(net, labels, val_recordings)}]
    print(f"round 0 (the base job): val {_point(rounds[0]['val'])}", flush=True)
    clips = train_clips(args.data_dir, read_pool(args.pool) if args.pool else ())
    best_weights, mined_files, mined_total, history = net.get_weights(), [], 0, {}
    val_ds = data.make_dataset(files[contract.VAL], recipe.batch_size, False,
                               num_examples=data.split_size(metadata, contract.VAL))
    for number in range(1, args.rounds + 1):
        scorer = scoring.Scorer.of_keras(net, labels)
        config = events.default_config(labels)
        generated = train_streams(clips, args.minutes, 1000 * number)
        mined = []
        for stream in generated:
            probabilities = scoring.score_audio(stream.audio, scorer, config)
            mined += mine_stream(stream, probabilities, labels, config, args.near)
        found = summary(mined)
        print(f"round {number}: {found['windows']} windows mined "
              f"({', '.join(f'{n} {kind}' for kind, n in found['by_kind'].items())})",
              flush=True)
        if mined:
            path = f"{job_dir}/{MINED}/round-{number}.tfrecord"
            write_mined(path, mined, labels, number)
            mined_files.append(path)
            mined_total += len(mined)
        recipe.compile(net, train_size)
        dataset = recipe.train_dataset(files[contract.TRAIN], run, labels,
                                       extra_files=tuple(mined_files),
                                       extra_share=args.mined_share if mined_total else 0.0)
        fitted = net.fit(dataset, validation_data=val_ds, epochs=recipe.epochs,
                         steps_per_epoch=recipe.steps_per_epoch(train_size),
                         callbacks=recipe.callbacks(), verbose=args.verbose, shuffle=False)
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(value) for value in values)
        point = val_point(net, labels, val_recordings)
        rounds.append({"round": number, "mined": found, "val": point})
        print(f"round {number}: val {_point(point)}", flush=True)
        if _best(rounds) == number:
            best_weights = net.get_weights()
    chosen = _best(rounds)
    net.set_weights(best_weights)
    print(f"kept round {chosen} (highest val recall within the budget)")
    recorded = {**base_settings, "model": model_name, "data_dir": args.data_dir,
                "base_job": args.base_job, "mining": {
                    "rounds": args.rounds, "minutes": args.minutes, "near": args.near,
                    "epochs": args.epochs, "learning_rate": recipe.learning_rate,
                    "mined_share": args.mined_share, "pool": args.pool,
                    "kept_round": chosen}}
    return job.write_job(job_dir, job.Finished(
        net, recipe.serving_model(net), labels, args.data_dir, recorded, history,
        seed=args.seed, extra_metrics={"mining": rounds}), report=args.report,
        calibration_minutes=args.calibration_minutes)


def _key(point: dict) -> tuple:
    within = point["false_accepts_per_hour"] <= point["max_false_accepts_per_hour"]
    return (within, point["recall"], -point["false_accepts_per_hour"])


def _best(rounds: list[dict]) -> int:
    return max(range(len(rounds)), key=lambda i: (_key(rounds[i]["val"]), -i))


def _point(point: dict) -> str:
    return (f"recall {point['recall']:.3f} at {point['false_accepts_per_hour']:.1f} false "
            f"accepts per hour (threshold {point['threshold']}, smoothing "
            f"{point['smoothing']})")


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
