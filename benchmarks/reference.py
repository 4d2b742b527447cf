"""The "Simple audio recognition" tutorial's own code, run on a preprocessing run's split.

A reference for accuracy comparisons: the notebook's input pipeline
(`audio_dataset_from_directory`, in-memory `.cache()`), its `get_spectrogram`, model and
training loop, applied to exactly the WAV files that the preprocessing run put in
train, val and test (linked into a temporary folder per split). If `trainer.task
--model tutorial` and this score alike, the project reproduces the tutorial.

    python -m benchmarks.reference --data-dir runs/subset/data --seed 42
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Optional

from pipelines.errors import import_tensorflow_quietly, run_cli

import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402
from tensorflow.keras import layers, models  # noqa: E402

from pipelines import contract  # noqa: E402
from trainer import data  # noqa: E402


def link_split(data_dir: str, split: str, root: str) -> str:
    """Links the split's source WAVs into root/split/<label>/ (the tutorial's layout)."""
    files = data.shard_files(data_dir, split)
    for batch in data.make_dataset(files, 256, False, keep_features=True):
        for path, label in zip(batch[contract.PATH].numpy(), batch[contract.LABEL_NAME].numpy()):
            folder = os.path.join(root, split, label.decode())
            os.makedirs(folder, exist_ok=True)
            source = path.decode()
            os.symlink(os.path.abspath(source), os.path.join(folder, os.path.basename(source)))
    return os.path.join(root, split)


def tutorial_accuracy(data_dir: str, seed: int, epochs: int = 10) -> float:
    """Trains and tests the tutorial's notebook code on the run's split; test accuracy."""
    tf.keras.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory() as root:
        def load(split, shuffle):
            dataset = tf.keras.utils.audio_dataset_from_directory(
                link_split(data_dir, split, root), batch_size=64, seed=0, shuffle=shuffle,
                output_sequence_length=16000, verbose=False)
            return dataset, dataset.class_names

        def get_spectrogram(waveform):
            spectrogram = tf.signal.stft(waveform, frame_length=255, frame_step=128)
            return tf.abs(spectrogram)[..., tf.newaxis]

        def make_spec_ds(dataset):
            return dataset.map(lambda audio, label: (get_spectrogram(tf.squeeze(audio, -1)), label),
                               num_parallel_calls=tf.data.AUTOTUNE)

        (train_ds, label_names), (val_ds, _), (test_ds, _) = (
            load(contract.TRAIN, True), load(contract.VAL, False), load(contract.TEST, False))
        train_spectrogram_ds = make_spec_ds(train_ds).cache().shuffle(10000).prefetch(
            tf.data.AUTOTUNE)
        val_spectrogram_ds = make_spec_ds(val_ds).cache().prefetch(tf.data.AUTOTUNE)
        test_spectrogram_ds = make_spec_ds(test_ds).cache().prefetch(tf.data.AUTOTUNE)

        norm_layer = layers.Normalization()
        norm_layer.adapt(data=train_spectrogram_ds.map(map_func=lambda spec, label: spec))
        model = models.Sequential([
            layers.Input(shape=(124, 129, 1)),
            layers.Resizing(32, 32),
            norm_layer,
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(len(label_names)),
        ])
        model.compile(optimizer=tf.keras.optimizers.Adam(),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(train_spectrogram_ds, validation_data=val_spectrogram_ds, epochs=epochs,
                  callbacks=tf.keras.callbacks.EarlyStopping(verbose=0, patience=2),
                  verbose=0)
        return float(model.evaluate(test_spectrogram_ds, return_dict=True,
                                    verbose=0)["accuracy"])


def run(argv: Optional[list[str]] = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    data.read_labels(args.data_dir)
    accuracy = tutorial_accuracy(args.data_dir, args.seed, args.epochs)
    print(f"tutorial notebook code, seed {args.seed}: test accuracy {accuracy:.4f}")
    return accuracy


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
