"""Your own keyword from a few recordings: a detector for a new word in minutes.

    python -m trainer.enroll --base-job JOB --keyword hello --recordings a.wav b.wav ... \\
        --job-dir NEWJOB [--keep-keywords] [--max-false-accepts-per-hour 2] \\
        [--held-back-minutes 180]

1. **Utterances.** Each recording (any format and rate the other commands read) is
   a one-second clip of the word, or a longer recording where it is said several times:
   the utterances are cut where the short-time energy rises above the recording's own
   noise floor (`cut_utterances`), and each becomes the second of audio around it.
   What was cut is printed and kept in metrics.json.
2. **Held back.** About a third of the utterances, by speaker where the file names say
   who spoke (`<speaker>_nohash_<n>`), else by file, else (one file) the last ones, are
   held back to choose the threshold.
3. **Training.** The base job's network, frozen, turns every clip into its
   embedding (the input of its classifier); a new classifier is trained on: the kept
   utterances, each replayed many times with the training augmentation (speed, shift,
   background noise, microphone response, frequency warp); the base job's training split
   as negatives (its `_unknown_`, synthetic speech included where the run has it, and
   `_silence_`; its keywords too, as `_unknown_`, unless `--keep-keywords`, which keeps
   them as keywords; clips of the new word itself among its other words are left
   out). On a base trained with `trainer.task --word-classes` the new
   classifier keeps its word classes (and the base keywords it does not keep, as words):
   it starts from the base classifier's weights for them and merges them into
   `_unknown_` (`words.MergeWords`), so the new word is told from each other word, not
   from one lump. `--synthetic-voices N` adds the word said by N voices of eSpeak NG,
   and the words that sound nearest it as negatives. Then the whole network (batch
   normalisation frozen) is trained `--fine-tune` epochs more (default 6; 0 keeps the
   network frozen).
4. **The operating point.** Three hours (`--held-back-minutes`) of recordings of the
   held-back utterances among the base run's val words and background noise are
   scored; the threshold is the highest recall
   with at most `--max-false-accepts-per-hour` (with `--keep-keywords` the base keywords
   keep theirs).

NEWJOB is a job like any other (`export/` with SavedModel, LiteRT files and
detection.json, labels.txt, metrics.json, report.html): `trainer.detect`,
`pipelines.detect`, `trainer.predict` and `trainer.live` run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Collection, Iterable, Iterator, Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import audio, claim, contract, dataset, events  # noqa: E402
from pipelines import scoring as pipeline_scoring  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import (artifacts, augment, calibrate, data, detection, features, job,  # noqa: E402
                     models, scoring, streams, words)
from trainer.utterances import Utterance, hold_back, read_utterances  # noqa: E402
from trainer.report import page, writer  # noqa: E402

MIN_UTTERANCES = 3
MAX_RECORDINGS = 50
REPLAYS = 80  # augmented copies of each kept utterance
SYNTHETIC_REPLAYS = 8  # augmented copies of each synthetic clip
NEAR_WORDS = 20  # words that sound near the new one, said as negatives with --synthetic-voices
NEAR_VOICES = 8  # voice settings that say each of them
HEAD_EPOCHS = 60
FINE_TUNE_EPOCHS = 6  # chosen on validation recordings: docs/experiments.md
held_back_minutes = events.positive_at_most(24 * 60)  # the --held-back-minutes type


def decode(path: str) -> np.ndarray:
    """A recording, local or gs://, as float32 samples at 16 kHz."""
    with scoring.open_recording(path) as handle:
        return audio.decode_wav(handle)


class Progress:
    """Says what it is doing, with the time taken so far."""

    def __init__(self):
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f} s] {text}", flush=True)


# --- training ----------------------------------------------------------------------------

def classifier_of(net: keras.Model) -> keras.layers.Layer:
    """The base network's last layer, or the one before its `words.MergeWords`."""
    classifier = net.layers[-1]
    if isinstance(classifier, words.MergeWords):
        classifier = classifier.input._keras_history.operation
    return classifier


def feature_extractor(net: keras.Model) -> keras.Model:
    """The base network up to its classifier's input (frozen)."""
    classifier = classifier_of(net)
    if not isinstance(classifier, keras.layers.Dense):
        raise UserError("the base job's model does not end in a classifier layer; enrol "
                        "on a job of the kws or tutorial model")
    extractor = keras.Model(net.inputs[0], classifier.input, name="features")
    extractor.trainable = False
    return extractor


def head_classes(labels: list[str], base_labels: list[str],
                 base_words: list[str]) -> tuple[str, ...]:
    """The new classifier's classes: `labels`, then, where the base network was trained
    with word classes, the words it tells apart that the new job merges into `_unknown_`:
    its word classes and the base keywords it does not keep."""
    if not base_words:
        return tuple(labels)
    others = [w for w in base_words if w not in labels]
    others += [k for k in base_labels if k not in labels and not k.startswith("_")
               and k not in others]
    return tuple(labels) + tuple(others)


def with_new_head(net: keras.Model, labels: list[str], classes: tuple[str, ...],
                  base_classes: tuple[str, ...]) -> keras.Model:
    """The base network with a new classifier over `classes` (same name), started from
    the base classifier's weights for the classes it had; more classes than `labels` are
    word classes, merged into `_unknown_` (`words.MergeWords`) like the base job's."""
    classifier = classifier_of(net)
    head = keras.layers.Dense(len(classes), name=classifier.name)
    logits = head(classifier.input)
    kernel, bias = (np.array(w) for w in head.get_weights())
    old_kernel, old_bias = classifier.get_weights()
    position = {name: index for index, name in enumerate(base_classes)}
    for index, name in enumerate(classes):
        if name in position:
            kernel[:, index] = old_kernel[:, position[name]]
            bias[index] = old_bias[position[name]]
    head.set_weights([kernel, bias])
    outputs = logits
    if len(classes) > len(labels):
        outputs = words.MergeWords(len(labels), labels.index(events.UNKNOWN_LABEL),
                                   name="merge_words")(logits)
    model = keras.Model(net.inputs[0], outputs, name=f"{net.name}_enrolled")
    for layer in model.layers:
        layer.trainable = layer is head
    return model


def logits_of(model: keras.Model) -> keras.Model:
    """`model` up to its classifier (before any `words.MergeWords`), sharing its weights:
    what is trained on targets over all its classes."""
    classifier = classifier_of(model)
    return model if classifier is model.layers[-1] else keras.Model(
        model.inputs[0], classifier.output)


def replay(clips: np.ndarray, count: int, bank, settings: augment.Augmentation,
           seed: int) -> np.ndarray:
    """|STFT| of `count` augmented copies of each clip (the training augmentation)."""
    out, batch = [], tf.constant(clips)
    for copy in range(count):
        out.append(augment.augment_clips(batch, bank, tf.constant([seed, copy], tf.int64),
                                         settings).numpy())
    return np.concatenate(out)


def negatives(data_dir: str, keyword: str, classes: tuple[str, ...], bank,
              settings: augment.Augmentation, seed: int, transform) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """The base run's training clips, each as stored and once more augmented, through
    `transform` (|STFT| batch -> what to keep: embeddings, or the |STFT| itself), with
    their index among the new `classes`: its label's, or its word's where that is a class
    (`pipelines.dataset.word_of`), else `_unknown_`'s. Clips of `keyword` itself (a word
    of the base run's `_unknown_`) are left out: they are not negatives."""
    files = data.shard_files(data_dir, contract.TRAIN)
    index_of = {name: i for i, name in enumerate(classes)}
    unknown = index_of[events.UNKNOWN_LABEL]
    kept, targets = [], []
    batches = data.make_dataset(files, 256, False, waveform=True, keep_features=True)
    for number, batch in enumerate(batches):
        names = [name.decode() for name in batch[contract.LABEL_NAME].numpy()]
        said = [dataset.word_of(path.decode("utf-8", "replace")) if name.startswith("_")
                else name for name, path in zip(names, batch[contract.PATH].numpy())]
        index = np.array([index_of[name] if name in index_of and name != events.UNKNOWN_LABEL
                          else index_of.get(word, unknown) for name, word in zip(names, said)],
                         np.int64)
        keep = np.array([word != keyword or name == keyword
                         for name, word in zip(names, said)])
        if not keep.any():
            continue
        pair = tf.constant([seed, 10_000 + number], tf.int64)
        augmented = augment.augment_clips(batch[contract.WAVEFORM], bank, pair, settings)
        kept += [transform(batch[contract.SPECTROGRAM].numpy()[keep]),
                 transform(augmented.numpy()[keep])]
        targets += [index[keep], index[keep]]
    return np.concatenate(kept), np.concatenate(targets).astype(np.int64)


def embedder(extractor: keras.Model):
    """|STFT| batch -> the frozen network's embeddings (numpy)."""
    return lambda spectra: np.concatenate([
        extractor(spectra[start:start + 256], training=False).numpy()
        for start in range(0, len(spectra), 256)])


def class_weights(targets: np.ndarray, labels: list[str], count: int) -> dict:
    """Weights that give every label the same total weight; a word class (an index past
    the labels) weighs what `_unknown_`, which takes it in, does."""
    unknown = labels.index(events.UNKNOWN_LABEL)
    merged = np.where(targets >= len(labels), unknown, targets)
    counts = np.bincount(merged, minlength=len(labels)).astype(np.float64)
    weight = [float(len(targets) / (len(labels) * c)) if c else 0.0 for c in counts]
    return {i: weight[i if i < len(labels) else unknown] for i in range(count)}


def train_head(model: keras.Model, labels: list[str], embedded: np.ndarray,
               targets: np.ndarray, seed: int) -> dict:
    """Trains the new classifier on the frozen network's embeddings; its history."""
    head = classifier_of(model)
    inputs_ = keras.Input(embedded.shape[1:])
    trainer = keras.Model(inputs_, head(inputs_))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    fitted = trainer.fit(embedded, targets, epochs=HEAD_EPOCHS, batch_size=256,
                         class_weight=class_weights(targets, labels, head.units), verbose=0,
                         shuffle=True)
    return {key: [float(v) for v in values] for key, values in fitted.history.items()}


def fine_tune(model: keras.Model, labels: list[str], spectra: np.ndarray,
              targets: np.ndarray, epochs: int, seed: int) -> dict:
    """Trains the whole network (batch normalisation kept frozen) a few epochs more."""
    for layer in model.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    trained = logits_of(model)
    weights = class_weights(targets, labels, trained.output_shape[-1])
    trained.compile(optimizer=keras.optimizers.Adam(3e-4),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    fitted = trained.fit(spectra, targets, epochs=epochs, batch_size=64, class_weight=weights,
                         verbose=0, shuffle=True)
    return {key: [float(v) for v in values] for key, values in fitted.history.items()}


def synthetic_speech(keyword: str, voices: int, seed: int, say) -> tuple[np.ndarray,
                                                                         np.ndarray]:
    """(the new word said by `voices` voice settings of eSpeak NG, the NEAR_WORDS words
    that sound nearest it, homophones left out, each said by NEAR_VOICES): clips."""
    from pipelines import synthesize, tts  # pylint: disable=import-outside-toplevel
    synthesizer = tts.synthesizer()
    grid = tts.voice_grid(synthesizer.variants())
    rng = np.random.default_rng(seed)
    said = [synthesizer.clip(keyword, voice, rng)
            for voice in tts.choose_voices(grid, voices, seed)]
    near = synthesize.plan_words([], [keyword], NEAR_WORDS, 0, synthesize.VOCABULARY,
                                 synthesizer)
    others = [synthesizer.clip(word, voice, rng) for word in near for voice in
              tts.choose_voices(grid, NEAR_VOICES, synthesize.word_seed(word, seed))]
    say(f"synthetic speech: {keyword!r} said by {len(said)} voices; {len(near)} words near "
        f"it as negatives ({', '.join(sorted(near))})")
    keep = [clip for clip in said if np.any(clip)]
    if not keep:
        raise UserError(f"the speech synthesiser says nothing for {keyword!r}; enrol without "
                        "--synthetic-voices")
    others = [clip for clip in others if np.any(clip)]
    return np.stack(keep), (np.stack(others) if others else
                            np.zeros((0, contract.CLIP_SAMPLES), np.float32))


# --- the operating point -----------------------------------------------------------------

def held_streams(held: list[Utterance], keyword: str, data_dir: str, keep_keywords: bool,
                 minutes: float, seed: int) -> Iterator:
    """Recordings of the held-back utterances among the base run's val words over its
    background noise (the base keywords as other words, or as keywords with
    `keep_keywords`), built one at a time as they are scored: hours of audio are never
    all in memory at once."""
    base_keywords, unknowns = calibrate.split_clips(data_dir, contract.VAL)
    noises = calibrate.background_recordings(data_dir)
    others = list(unknowns)
    said = [(keyword, u.clip) for u in held]
    if keep_keywords:
        said += base_keywords
    else:
        others += [clip for _, clip in base_keywords]
    count = max(1, math.ceil(minutes / 10))
    return (streams.build_stream(said, others, noises, minutes * 60 / count, seed + i,
                                 unknown_percent=50 if keep_keywords else 85)
            for i in range(count))


def pick_threshold(rows: list[dict], budget: float) -> dict:
    """Of the rows within the budget, the highest recall and of those the lowest
    threshold; with none within it, the fewest false accepts."""
    within = [row for row in rows if row["false_accepts_per_hour"] <= budget]
    if not within:
        return detection.best_row(rows, budget)
    top = max(row["recall"] for row in within)
    return min((row for row in within if row["recall"] == top),
               key=lambda row: row["threshold"])


def over_budget_note(estimate: dict, budget: float) -> Optional[str]:
    """What to tell the user when no threshold kept the held-back recordings within the
    budget (the one with the fewest false accepts was taken); None when one did."""
    if estimate["false_accepts_per_hour"] <= budget:
        return None
    return (f"note: no threshold keeps the held-back recordings within {budget:g} false "
            f"accepts per hour; the one with the fewest ({estimate['false_accepts_per_hour']:.1f}"
            ") is used: to this network the word sounds like some of the base run's val "
            "words (more recordings, or a base job that learnt more words and speakers, "
            "may help)")


def choose_point(scorer: scoring.Scorer, generated: Iterable, keyword: str,
                 base: events.Config, budget: float, kept: Collection[str] = (),
                 kept_budget: float = detection.MAX_FALSE_ACCEPTS_PER_HOUR,
                 ) -> tuple[events.Config, dict]:
    """The new keyword's threshold: the highest recall on the held-back utterances within
    `budget` false accepts per hour of its own, and of equal recalls the lowest threshold
    (a few held-back utterances measure recall in coarse steps, hours of other words
    measure false accepts finely).

    The base keywords `kept` (with --keep-keywords) get one threshold chosen again on the
    same recordings, as the base job chose theirs: the highest recall of their own within
    `kept_budget` (the base job's budget). The new network's scores are not the base
    network's, and at the base job's threshold they fired several times as often.
    """
    scored = calibrate.score_streams(generated, scorer, base)
    rows = detection.keyword_curve(scored, scorer.labels, base, keyword)
    row = pick_threshold(rows, budget)
    thresholds = dict(base.thresholds)
    thresholds[keyword] = row["threshold"]
    hours = sum(s.num_samples for s in scored) / contract.SAMPLE_RATE / 3600
    chosen_on = {"max_false_accepts_per_hour": budget, "hours": round(hours, 4),
                 "recall": row["recall"], "false_accepts_per_hour": row["false_accepts_per_hour"],
                 "split": "held-back recordings", "streams": len(scored)}
    chosen = {"det_curve": rows, "estimate": row}
    if kept:
        kept_rows = detection.keywords_curve(scored, scorer.labels, base, kept)
        kept_row = detection.best_row(kept_rows, kept_budget)
        thresholds.update({label: kept_row["threshold"] for label in kept})
        chosen_on["kept_keywords"] = {"max_false_accepts_per_hour": kept_budget, **kept_row}
        chosen.update(kept_det_curve=kept_rows, kept_estimate=kept_row)
    config = dataclasses.replace(base, thresholds=thresholds, chosen_on=chosen_on)
    return config, chosen


# --- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.enroll",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-job", default=scoring.SHIPPED_MODEL_DIR,
                        help="a trained job (default: the detector that comes with the "
                             "repository); its preprocessing run gives the negatives")
    parser.add_argument("--data-dir", default=None,
                        help="the base job's preprocessing run (default: the one its "
                             "metrics.json names)")
    parser.add_argument("--keyword", required=True, help="the new word's label")
    parser.add_argument("--recordings", nargs="+", required=True, metavar="FILE",
                        help=f"{MIN_UTTERANCES} to {MAX_RECORDINGS} recordings of it")
    parser.add_argument("--job-dir", required=True, help="where the new job goes")
    parser.add_argument("--keep-keywords", action="store_true",
                        help="detect the base job's keywords too")
    parser.add_argument("--replace", action="store_true",
                        help="allow a --keyword that is already a label of the base job "
                             "(its recordings replace that label's clips)")
    parser.add_argument("--max-false-accepts-per-hour", type=float, default=2.0,
                        help="false-accept budget of the threshold (default 2)")
    parser.add_argument("--held-back-minutes", type=held_back_minutes, default=180.0,
                        metavar="MINUTES",
                        help="length of the recordings of the held-back utterances the "
                             "threshold is chosen on (default 180)")
    parser.add_argument("--fine-tune", type=int, default=FINE_TUNE_EPOCHS, metavar="EPOCHS",
                        help="after the new classifier, train the whole network this many "
                             f"epochs (default {FINE_TUNE_EPOCHS}; 0: the frozen network with "
                             "the new classifier alone)")
    parser.add_argument("--synthetic-voices", type=int, default=0, metavar="N",
                        help="also learn from the word said by N voice settings of eSpeak "
                             f"NG, and from the {NEAR_WORDS} words that sound nearest it as "
                             "negatives (default 0: the recordings alone)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-report", dest="report", action="store_false")
    return parser


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fine_tune < 0:
        parser.error(f"--fine-tune: must be 0 or more, got {args.fine_tune}")
    say = Progress()
    keyword = args.keyword.strip()
    if not keyword or keyword.startswith("_") or "/" in keyword or keyword != args.keyword:
        raise UserError(f"--keyword {args.keyword!r}: a label is a word without spaces at "
                        "its ends, '/', or a leading '_'")
    if len(args.recordings) > MAX_RECORDINGS:
        raise UserError(f"{len(args.recordings)} recordings: at most {MAX_RECORDINGS}")
    if not 0 <= args.synthetic_voices <= 1000:
        raise UserError("--synthetic-voices must be in [0, 1000]")
    if not args.max_false_accepts_per_hour > 0:
        raise UserError("--max-false-accepts-per-hour must be positive")
    base_labels = artifacts.read_model_labels(args.base_job)
    if keyword in base_labels and not args.replace:
        raise UserError(f"{args.base_job}: {keyword!r} is already one of its labels; pass "
                        "--replace to learn it from these recordings instead")
    if events.UNKNOWN_LABEL not in base_labels:
        raise UserError(f"{args.base_job}: no {events.UNKNOWN_LABEL} class: enrol on a "
                        "keyword-spotting job (preprocessed with --unknown-percent)")
    base_settings = artifacts.read_job_metrics(args.base_job).get("settings", {})
    data_dir = args.data_dir or base_settings.get("data_dir")
    if not base_settings.get("word_classes"):
        say(f"note: {args.base_job} was trained without --word-classes: its embeddings keep "
            "other words apart less well than a job trained with it (docs/reference.md"
            "#enrolling-a-new-word)")
    if not data_dir:
        raise UserError(f"{args.base_job}: its metrics.json names no preprocessing run; "
                        "give --data-dir")
    metadata = data.read_metadata(data_dir)
    if not metadata.waveforms:
        raise UserError(f"{data_dir}: no stored waveforms (preprocess without --no-waveforms)")
    say(f"reading {len(args.recordings)} recording(s) of {keyword!r}")
    utterances, found = read_utterances(args.recordings, decode, say)
    if len(utterances) < MIN_UTTERANCES:
        raise UserError(f"{len(utterances)} usable utterance(s) of {keyword!r} in "
                        f"{len(args.recordings)} recording(s); at least {MIN_UTTERANCES} "
                        "are needed (see the lines above)")
    job_dir = args.job_dir.rstrip("/")
    with claim.Claim(job_dir, "python -m trainer.enroll"):
        return _enroll(args, keyword, base_labels, list(base_settings.get("word_classes")
                                                        or []), data_dir, utterances, found,
                       job_dir, say)


def _enroll(args, keyword, base_labels, base_words, data_dir, utterances, found, job_dir,
            say) -> dict:
    kept, held, how = hold_back(utterances)
    say(f"{len(utterances)} utterances: {len(kept)} to learn from, {len(held)} held back "
        f"(by {how}) to choose the threshold")
    if args.keep_keywords:
        labels = sorted(set(base_labels) | {keyword})
    else:
        labels = sorted({events.UNKNOWN_LABEL, keyword}
                        | ({events.SILENCE_LABEL} & set(base_labels)))
    model_name = artifacts.job_model_name(args.base_job)
    recipe = models.get_recipe(model_name)
    # A model whose recipe does not augment (tutorial) replays with the default's.
    settings = recipe.augmentation or models.get_recipe(models.DEFAULT_MODEL).augmentation
    bank = data.background_bank(data_dir)
    # Same seed, same job: the new classifier's first weights and the dropout layers'
    # seeds (drawn as the network is loaded) come from the seeded generators.
    keras.utils.set_random_seed(args.seed)
    net = artifacts.load_keras_model(args.base_job)
    base_classes = tuple(base_labels) + tuple(base_words)
    outputs = classifier_of(net).units
    if outputs != len(base_classes):
        raise UserError(f"{args.base_job}: its classifier has {outputs} outputs, its labels "
                        f"and word classes {len(base_classes)}")
    classes = head_classes(labels, base_labels, base_words)
    model = with_new_head(net, labels, classes, base_classes)
    # The frozen network's embeddings are all the new classifier needs; fine-tuning the
    # whole network needs the |STFT| itself.
    extractor = feature_extractor(net)
    transform = (lambda spectra: np.asarray(spectra)) if args.fine_tune else \
        embedder(extractor)
    say("the base run's training clips as negatives")
    kept_x, kept_y = negatives(data_dir, keyword, classes, bank, settings, args.seed,
                               transform)
    if args.replace:
        keep = kept_y != labels.index(keyword)
        kept_x, kept_y = kept_x[keep], kept_y[keep]
    if len(classes) > len(labels):
        say(f"{len(classes) - len(labels)} other words are classes of their own in the new "
            f"classifier, merged into {events.UNKNOWN_LABEL}")
    say(f"replaying {len(kept)} utterances {REPLAYS} times each")
    positives = transform(replay(np.stack([u.clip for u in kept]), REPLAYS, bank, settings,
                                 args.seed))
    if args.synthetic_voices:
        said, near = synthetic_speech(keyword, args.synthetic_voices, args.seed, say)
        positives = np.concatenate([positives, transform(replay(
            said, SYNTHETIC_REPLAYS, bank, settings, args.seed + 1))])
        near = transform(replay(near, 2, bank, settings, args.seed + 2))
        kept_x = np.concatenate([kept_x, near])
        kept_y = np.concatenate([kept_y, np.full(len(near), labels.index(
            events.UNKNOWN_LABEL))])
    inputs_ = np.concatenate([kept_x, positives])
    targets = np.concatenate([kept_y, np.full(len(positives), labels.index(keyword))])
    say(f"training the new classifier on {len(targets)} clips ({len(positives)} of "
        f"{keyword!r})")
    embedded = embedder(extractor)(inputs_) if args.fine_tune else inputs_
    history = train_head(model, labels, embedded, targets, args.seed)
    if args.fine_tune:
        say(f"fine-tuning the whole network for {args.fine_tune} epochs")
        history.update({f"fine_tune_{k}": v for k, v in fine_tune(
            model, labels, inputs_, targets, args.fine_tune, args.seed).items()})
    scorer = scoring.Scorer.of_keras(model, labels)
    base_config = events.default_config(labels)
    text, stored, _ = pipeline_scoring.read_operating_point(
        contract.find_export(args.base_job), base_labels, None)
    kept_budget = detection.MAX_FALSE_ACCEPTS_PER_HOUR
    if text is not None:  # the base job's smoothing, and its keywords' thresholds
        stored_budget = (stored.chosen_on or {}).get("max_false_accepts_per_hour")
        if isinstance(stored_budget, (int, float)) and not isinstance(stored_budget, bool) \
                and stored_budget > 0:
            kept_budget = float(stored_budget)
        base_config = dataclasses.replace(stored, thresholds={
            **{k: v for k, v in stored.thresholds.items() if k in base_config.thresholds},
            keyword: events.DEFAULT_THRESHOLD}, chosen_on=None)
    say(f"choosing the threshold on {args.held_back_minutes:g} min of recordings of the "
        "held-back utterances among the base run's val words")
    generated = held_streams(held, keyword, data_dir, args.keep_keywords,
                             args.held_back_minutes, args.seed)
    kept_keywords = [label for label in events.keywords_of(base_labels)
                     if label != keyword] if args.keep_keywords else []
    config, chosen = choose_point(scorer, generated, keyword, base_config,
                                  args.max_false_accepts_per_hour, kept_keywords, kept_budget)
    estimate = chosen["estimate"]
    say(f"threshold {estimate['threshold']}: estimated recall {estimate['recall']:.2f} at "
        f"{estimate['false_accepts_per_hour']:.1f} false accepts per hour")
    if kept_keywords:
        again = chosen["kept_estimate"]
        say(f"the base keywords' threshold {again['threshold']}: estimated recall "
            f"{again['recall']:.2f} at {again['false_accepts_per_hour']:.1f} false accepts "
            f"per hour (the base job's budget: {kept_budget:g})")
        if again["false_accepts_per_hour"] > kept_budget:
            say(f"note: no threshold keeps the base keywords within {kept_budget:g} false "
                "accepts per hour on the held-back recordings; the one with the fewest is "
                "used: the new network tells them apart less well than the base job "
                "(without --keep-keywords, the base job still detects them on its own)")
    note = over_budget_note(estimate, args.max_false_accepts_per_hour)
    if note:
        say(note)
    return write(job_dir, model, scorer, model_name, data_dir, config, chosen, history,
                 {"keyword": keyword, "base_job": args.base_job, "data_dir": data_dir,
                  "word_classes": list(classes[len(labels):]),
                  "keep_keywords": args.keep_keywords, "fine_tune_epochs": args.fine_tune,
                  "recordings": found, "held_back": {
                      "by": how, "utterances": [[u.path, u.start_s, u.end_s] for u in held]},
                  "learnt_from": [[u.path, u.start_s, u.end_s] for u in kept],
                  "replays": REPLAYS, "synthetic_voices": args.synthetic_voices},
                 held, args, say)


def write(job_dir, model, scorer, model_name, data_dir, config, chosen, history, enrolment,
          held, args, say) -> dict:
    """The new job's files (as `trainer.job` writes a trained one's; the held-back
    utterances stand for a test split)."""
    say("writing the job: model, SavedModel, LiteRT files, detection.json, report")
    labels = scorer.labels
    export_dir = job.export_job(job_dir, model, models.get_recipe(model_name).serving_model(
        model), labels, data_dir, args.seed)
    calibrate.write_config(export_dir, config)
    probabilities = scorer(np.stack([u.clip for u in held]))
    predicted = probabilities.argmax(axis=1)
    truth = np.full(len(held), labels.index(enrolment["keyword"]))
    loss = float(-np.mean(np.log(probabilities[np.arange(len(held)), truth] + 1e-12)))
    from trainer.report import metrics as classification  # pylint: disable=C0415
    scores = classification.classification_metrics(truth, predicted, labels)
    metrics = {
        "model": model_name, "parameters": int(model.count_params()), "labels": labels,
        "test_accuracy": float(scores["accuracy"]), "test_loss": loss,
        "test_examples": len(held), "split": "held-back utterances",
        "per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"],
        "settings": {"model": model_name, "data_dir": data_dir, "seed": args.seed,
                     "enrolled": enrolment["keyword"],
                     "word_classes": enrolment["word_classes"] or None},
        "export_dir": export_dir, "enrolment": enrolment,
        "operating_point": events.config_to_dict(config),
        "estimate": chosen["estimate"], "held_back_det_curve": chosen["det_curve"],
        **({"kept_keywords_det_curve": chosen["kept_det_curve"]}
           if "kept_det_curve" in chosen else {})}
    writer.write_json(f"{job_dir}/metrics.json", metrics)
    writer.write_json(f"{job_dir}/history.json", history)
    if args.report:
        examples = [{"waveform": u.clip, "spectrogram": features.stft_magnitude(
            tf.constant(u.clip[None, :])).numpy()[0], "label": enrolment["keyword"],
            "path": u.path} for u in held[:9]]
        page.write_report(job_dir, metrics=metrics, history=history, labels=labels,
                          examples=examples, prediction={
                              "path": held[0].path, "label": enrolment["keyword"],
                              "probabilities": probabilities[0].tolist()})
    say(f"done: {job_dir} (python -m trainer.detect --model-dir {job_dir} FILE)")
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
