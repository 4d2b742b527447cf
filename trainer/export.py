"""Exports a trained Keras model as a SavedModel for serving and batch prediction.

Signatures (each returns `class_ids` int64 [batch], `labels` string [batch] and
`probabilities` float32 [batch, num_labels]):

- `serving_default` / `waveform`: raw 16 kHz mono float32 audio [batch, samples] of any
  length; padded or truncated to one second and turned into the STFT magnitude in the
  graph, exactly as the preprocessing pipeline does. With `compile_waveform` (the
  default), the STFT and the model run as one XLA-compiled function: on CPU a small
  model's single-clip time is mostly per-op overhead, which fusing removes. XLA compiles
  once per batch size (the clip is padded first, so the length never varies); the
  batch signatures below stay uncompiled, as their batch sizes vary.
- `spectrogram`: the stored feature, float32 [batch, 124, 129].
- `examples`: serialized tf.Examples in the preprocessing contract (only `spectrogram` is
  read); the form tfx-bsl's RunInference feeds a model in batch prediction. Its `labels`
  are shaped [batch, 1]: RunInference splits outputs per example and needs an array,
  not a bare string, for each.

`labels.txt` is written beside the SavedModel.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pipelines import contract
from trainer import features

EXPORT_DIR = "export"
SIGNATURES = ("serving_default", "waveform", "spectrogram", "examples")


def export_model(model: keras.Model, labels: list[str], export_dir: str,
                 compile_waveform: bool = True) -> str:
    """Writes the SavedModel with the signatures above to `export_dir`; returns it."""
    label_table = tf.constant(labels)

    def from_logits(logits):
        class_ids = tf.argmax(logits, axis=-1)
        return {"class_ids": class_ids,
                "labels": tf.gather(label_table, class_ids),
                "probabilities": tf.nn.softmax(logits, axis=-1)}

    def outputs(spectrogram):
        return from_logits(model(spectrogram, training=False))

    def clip_logits(clips):  # [batch, 16000]: the length is fixed before XLA sees it
        return model(features.stft_magnitude(clips), training=False)

    if compile_waveform:
        clip_logits = tf.function(clip_logits, jit_compile=True)

    def from_waveform(waveform):
        return from_logits(clip_logits(features.pad_or_trim(tf.cast(waveform, tf.float32))))

    def from_examples(examples):
        parsed = tf.io.parse_example(examples, {
            contract.SPECTROGRAM: tf.io.FixedLenFeature([], tf.string)})
        spectrogram = tf.io.decode_raw(parsed[contract.SPECTROGRAM], tf.float32)
        result = outputs(tf.reshape(spectrogram, (-1,) + contract.SPECTROGRAM_SHAPE))
        result["labels"] = result["labels"][:, None]
        return result

    archive = keras.export.ExportArchive()
    archive.track(model)
    waveform_spec = [tf.TensorSpec([None, None], tf.float32, name="waveform")]
    archive.add_endpoint("serving_default", from_waveform, waveform_spec)
    archive.add_endpoint("waveform", from_waveform, waveform_spec)
    archive.add_endpoint("spectrogram", outputs, [
        tf.TensorSpec((None,) + contract.SPECTROGRAM_SHAPE, tf.float32, name="spectrogram")])
    archive.add_endpoint("examples", from_examples, [
        tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(export_dir, verbose=False)
    with tf.io.gfile.GFile(f"{export_dir.rstrip('/')}/{contract.LABELS_FILE}", "w") as handle:
        handle.write(contract.format_labels(labels))
    return export_dir
