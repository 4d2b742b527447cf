"""Trains a keyword model on a preprocessing run, evaluates it and exports it.

Locally::

    python -m trainer.task --data-dir runs/sample/data --job-dir runs/sample/job
    python -m trainer.task --data-dir OUT --job-dir JOB --model tutorial --epochs 10

On Vertex AI the job directory, TensorBoard logs and checkpoints default to
AIP_MODEL_DIR, AIP_TENSORBOARD_LOG_DIR and AIP_CHECKPOINT_DIR (see deploy/vertex/).

A run leaves in JOB: model.keras, export/ (SavedModel: raw-audio, spectrogram and
tf.Example signatures; LiteRT model.tflite and model_int8.tflite) with labels.txt,
metrics.json, history.json, the plots and report.html. Killed mid-way and started
again with the same command, it resumes from its last finished epoch.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from typing import Optional

from pipelines.errors import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import claim, contract  # noqa: E402
from pipelines.errors import PartialFailure, UserError, run_cli  # noqa: E402
from trainer import backup, data, distribute, job, models, settings, training, words  # noqa: E402
from trainer.settings import RunSettings  # noqa: E402

HISTORY_CSV = "history.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.task",
                                     description=__doc__.split("\n\n")[0])
    settings.add_flags(parser, models.names(), models.DEFAULT_MODEL)
    return parser


def _history_rows(path: str) -> list[dict]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    by_epoch = {int(row["epoch"]): row for row in rows}  # a resumed run may repeat one
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def read_history(job_dir: str) -> dict[str, list[float]]:
    """Every finished epoch of the run (across resumptions), as Keras' History.history."""
    rows = _history_rows(f"{job_dir}/{HISTORY_CSV}")
    keys = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    return {key: [float(row[key]) for row in rows] for key in keys}


def run_fingerprint(options: RunSettings, labels: list[str], recipe) -> dict:
    """What makes a resumed run the same run: data, labels, model, recipe and seed.

    The epoch count is left out, so a finished run can be extended with more --epochs.
    """
    with tf.io.gfile.GFile(f"{options.data_dir.rstrip('/')}/{contract.METADATA_FILE}",
                           "rb") as handle:
        data_digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    values = {key: value for key, value in recipe.settings().items() if key != "epochs"}
    return {"data": data_digest, "labels": labels, "model": options.model,
            "recipe": backup.digest(values), "seed": options.seed,
            "shuffle_buffer": options.shuffle_buffer}


def train_and_evaluate(options: RunSettings) -> dict:
    """Fits the model, evaluates it on the test split and writes every artifact."""
    if not options.job_dir:
        raise UserError("--job-dir is required (or set AIP_MODEL_DIR)")
    job_dir = options.job_dir.rstrip("/")
    labels = data.read_labels(options.data_dir)
    metadata = data.read_metadata(options.data_dir)
    # Before any TensorFlow op: workers set up the collectives first (and then wait for
    # one another, so what would stop a worker is checked before).
    dist = distribute.setup(options)
    recipe = dist.scale(models.get_recipe(options.model).for_run(options))
    files = data.check_shards(options.data_dir, metadata, contract.SPLITS)
    sizes = {split: data.split_size(metadata, split) for split in contract.SPLITS}
    for split, size in sizes.items():
        if size == 0:
            raise UserError(f"{options.data_dir}/{split}: empty split (no examples); "
                            "use more data or other --val-percent/--test-percent")
    if recipe.needs_waveforms and not metadata.waveforms:
        raise UserError(f"{options.data_dir}: model {options.model!r} augments audio and needs "
                        "stored waveforms; preprocess without --no-waveforms")
    shared_dir, job_dir = job_dir, dist.writable(job_dir, "job")  # others: their scratch

    if not dist.is_chief:
        return _train(options, dist, recipe, labels, metadata, files, sizes, shared_dir,
                      job_dir)
    with claim.Claim(shared_dir, "python -m trainer.task"):
        return _train(options, dist, recipe, labels, metadata, files, sizes, shared_dir,
                      job_dir)


def _train(options: RunSettings, dist: distribute.Distribution, recipe, labels: list[str],
           metadata, files: dict, sizes: dict, shared_dir: str, job_dir: str) -> dict:
    """Fits, then (on the chief) exports, evaluates and reports; see `train_and_evaluate`."""
    keras.utils.set_random_seed(options.seed)
    tf.io.gfile.makedirs(job_dir)
    checkpoint_dir = (options.checkpoint_dir or f"{shared_dir}/checkpoints").rstrip("/")
    log_dir = dist.writable(options.tensorboard_dir or f"{job_dir}/logs", "logs")
    classes = words.WordClasses(tuple(labels), (), {})
    if options.word_classes:
        fitted = {split: files[split] for split in (contract.TRAIN, contract.VAL)}
        classes = data.guard_corruption(fitted[contract.TRAIN] + fitted[contract.VAL],
                                        lambda: words.find(fitted, labels))
        print(f"{len(classes.words)} other words are classes of their own while training "
              f"(at least {words.MIN_CLIPS} training clips each)", flush=True)
    epoch_backup, resume_from = dist.backups(
        checkpoint_dir, run_fingerprint(options, labels + list(classes.words), recipe),
        options.restart)
    if options.restart:
        epoch_backup.discard()
    resume_from.check_same_run()
    if not resume_from.epochs() and tf.io.gfile.exists(f"{job_dir}/{HISTORY_CSV}"):
        tf.io.gfile.remove(f"{job_dir}/{HISTORY_CSV}")  # a fresh run, not a resumption

    relabel = classes.relabel() if classes.words else None
    train_ds = dist.train_input(recipe.train_dataset(dist.share(files[contract.TRAIN]), options,
                                                     labels, relabel=relabel))
    val_ds = dist.eval_input(data.make_dataset(files[contract.VAL], recipe.batch_size, False,
                                               num_examples=sizes[contract.VAL],
                                               relabel=relabel))
    spectrograms = data.make_dataset(files[contract.TRAIN], 256, False).map(lambda x, _: x)
    with dist.strategy.scope():
        net = data.guard_corruption(files[contract.TRAIN], lambda: models.build_model(
            options.model, classes.count, train_spectrograms=spectrograms))
        recipe.compile(net, sizes[contract.TRAIN])
        start = resume_from.restore(net)
    if start is not None:
        print(f"Resuming from the backup in {checkpoint_dir}: epoch {start + 1}")

    stop_on_nan = training.StopOnNaN()
    callbacks = [
        keras.callbacks.CSVLogger(f"{job_dir}/{HISTORY_CSV}", append=True),
        keras.callbacks.TensorBoard(log_dir=log_dir),
        stop_on_nan,
    ] + recipe.callbacks() + distribute.tuning_callbacks(options, dist) + [
        # Last, so an epoch counts as done only once its history row is written: a kill
        # in between repeats the epoch (its row is replaced) instead of losing the row.
        epoch_backup,
    ]
    all_files = files[contract.TRAIN] + files[contract.VAL]
    data.guard_corruption(all_files, lambda: net.fit(
        train_ds, validation_data=val_ds, epochs=recipe.epochs, callbacks=callbacks,
        initial_epoch=start or 0,
        steps_per_epoch=recipe.steps_per_epoch(sizes[contract.TRAIN]),
        verbose=options.verbose, shuffle=False))  # tf.data already shuffles
    if stop_on_nan.bad_epoch is not None:
        raise PartialFailure(f"training stopped: the loss became NaN or infinite in epoch "
                             f"{stop_on_nan.bad_epoch} (try a lower --learning-rate)")
    recipe.finalize(net)
    net = classes.merged(net)

    history = read_history(job_dir)
    net.save(f"{job_dir}/model.keras")
    if not dist.is_chief:
        return dist.finish()  # the chief evaluates, exports and reports
    net = dist.local_model(net, f"{job_dir}/model.keras")
    recorded = {"model": options.model, "data_dir": options.data_dir, "seed": options.seed,
                "shuffle_buffer": options.shuffle_buffer, **recipe.settings(),
                "epochs_run": len(next(iter(history.values()), [])),
                "split": metadata.split.to_dict(), **dist.settings(),
                "word_classes": list(classes.words) if options.word_classes else None}
    return job.write_job(job_dir, job.Finished(
        net, recipe.serving_model(net), labels, options.data_dir, recorded, history,
        seed=options.seed), report=options.report,
        calibration_minutes=options.calibration_minutes)


def run(argv: Optional[list[str]] = None) -> dict:
    flags = build_parser().parse_args(
        distribute.hyphenated(sys.argv[1:] if argv is None else argv))
    try:
        options = settings.from_flags(flags)
    except ValueError as error:
        raise UserError(str(error)) from None
    return train_and_evaluate(options)


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
