"""Word classes: a network that tells other words apart instead of lumping them together.

With `trainer.task --word-classes`, every other word of the training split (a folder that
is not a label, or a name under `_unknown_`: `pipelines.dataset.word_of`) with at least
`MIN_CLIPS` training clips is a class of its own while training. The trained network's
`_unknown_` output is then the sum of their probabilities (`MergeWords`: the log-sum-exp
of their logits and `_unknown_`'s own), so the job has its preprocessing run's labels and
works with every command unchanged. What it gains: embeddings that keep one word apart
from another, which is what `trainer.enroll` builds a new word's classifier on.
"""

from __future__ import annotations

import collections
import dataclasses

import keras
import tensorflow as tf

from pipelines import contract, dataset
from pipelines.events import UNKNOWN_LABEL
from trainer import data

MIN_CLIPS = 3  # training clips a word needs to be a class of its own
_PACKAGE = "kws_trainer"


@dataclasses.dataclass(frozen=True)
class WordClasses:
    """The classes a network is trained on: the run's labels, then the other words."""
    labels: tuple[str, ...]
    words: tuple[str, ...]
    paths: dict  # path of an `_unknown_` clip whose word is a class -> its class index

    @property
    def count(self) -> int:
        return len(self.labels) + len(self.words)

    def relabel(self):
        """(label batch, path batch) -> class batch, for `data.make_dataset`; built once
        per dataset (a lookup table of the paths)."""
        keys = sorted(self.paths)
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys or [""], tf.string),
            tf.constant([self.paths[k] for k in keys] or [-1], tf.int64)), default_value=-1)

        def apply(label, path):
            found = table.lookup(path)
            return tf.where(found >= 0, found, tf.cast(label, tf.int64))

        return apply

    def merged(self, net: keras.Model) -> keras.Model:
        """`net` (logits over every class) with one output per label: `_unknown_`'s is
        the log-sum-exp of its own and the words'."""
        if not self.words:
            return net
        outputs = MergeWords(len(self.labels), self.labels.index(UNKNOWN_LABEL),
                             name="merge_words")(net.output)
        return keras.Model(net.inputs, outputs, name=net.name)


def find(files: dict[str, list[str]], labels: list[str]) -> WordClasses:
    """The word classes of a preprocessing run's shards (`files`: split -> shard paths,
    those the network is fitted and validated on): words of the training split's
    `_unknown_` clips with at least MIN_CLIPS clips; their clips in every split given are
    relabelled (a word that only val has stays `_unknown_`)."""
    if UNKNOWN_LABEL not in labels:
        return WordClasses(tuple(labels), (), {})
    clips = collections.defaultdict(list)  # (split, word) -> paths
    for split, shards in files.items():
        for batch in data.make_dataset(shards, 1024, False, keep_features=True,
                                       keys=[contract.LABEL_NAME, contract.PATH]):
            for name, path in zip(batch[contract.LABEL_NAME].numpy(),
                                  batch[contract.PATH].numpy()):
                if name.decode() == UNKNOWN_LABEL:
                    path = path.decode("utf-8", "replace")
                    clips[split, dataset.word_of(path)].append(path)
    words = sorted(word for (split, word), paths in clips.items()
                   if split == contract.TRAIN and len(paths) >= MIN_CLIPS
                   and word not in labels and not word.startswith("_"))
    index = {word: len(labels) + i for i, word in enumerate(words)}
    paths = {path: index[word] for (_, word), found in clips.items() if word in index
             for path in found}
    return WordClasses(tuple(labels), tuple(words), paths)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MergeWords(keras.layers.Layer):
    """Logits over labels + words -> logits over the labels, `_unknown_` taking in the
    words: softmax of the output = the class probabilities with the words' summed into
    `_unknown_`'s."""

    def __init__(self, num_labels: int, unknown_index: int, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.unknown_index = unknown_index

    def call(self, logits):
        u = self.unknown_index
        others = keras.ops.concatenate([logits[:, u:u + 1], logits[:, self.num_labels:]], 1)
        unknown = keras.ops.logsumexp(others, axis=1, keepdims=True)
        return keras.ops.concatenate([logits[:, :u], unknown,
                                      logits[:, u + 1:self.num_labels]], 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_labels)

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels,
                "unknown_index": self.unknown_index}
