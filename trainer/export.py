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
    archive.add_endpoint(contract.SIGNATURE_WAVEFORM, from_waveform, waveform_spec)
    archive.add_endpoint(contract.SIGNATURE_SPECTROGRAM, outputs, [
        tf.TensorSpec((None,) + contract.SPECTROGRAM_SHAPE, tf.float32, name="spectrogram")])
    archive.add_endpoint(contract.SIGNATURE_EXAMPLES, from_examples, [
        tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(export_dir, verbose=False)
    with tf.io.gfile.GFile(f"{export_dir.rstrip('/')}/{contract.LABELS_FILE}", "w") as handle:
        handle.write(contract.format_labels(labels))
    return export_dir


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An inference copy of `model` with each BatchNorm after a Conv2D folded into it.

    At inference a BatchNorm is a fixed per-channel affine map, so it can be absorbed
    into the preceding convolution's kernel and bias. That removes a third of the
    layers of the `kws` model, which matters for single-clip latency, where per-op
    overhead rather than arithmetic dominates. Outputs match the original at inference
    (up to float rounding); the copy is for export and serving, not for training.

    Args:
      model: a functional model, e.g. from `trainer.models.kws.build`.

    Returns:
      A new functional model with the same inputs and outputs.
    """
    folds = {}  # conv layer name -> the BatchNormalization that reads only it
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            source = layer.input._keras_history.operation
            if isinstance(source, keras.layers.Conv2D) and len(source._outbound_nodes) == 1:
                folds[source.name] = layer
    folded_norms = {norm.name for norm in folds.values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A folded norm is skipped: its input tensor goes straight on.
        return args[0] if layer.name in folded_norms else layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in folded_norms or isinstance(layer, keras.layers.InputLayer):
            continue
        target = folded.get_layer(layer.name)
        if layer.name in folds:
            norm = folds[layer.name]
            gamma = norm.gamma if norm.scale else 1.0
            beta = norm.beta if norm.center else 0.0
            scale = gamma / tf.sqrt(norm.moving_variance + norm.epsilon)
            bias = layer.bias if layer.use_bias else 0.0
            target.kernel.assign(layer.kernel * scale)
            target.bias.assign((bias - norm.moving_mean) * scale + beta)
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return folded
