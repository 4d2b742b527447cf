"""Running a job's exported SavedModel on windows of audio, and reading its detection.json.

What every command that runs a trained model reads from its export, whichever package
the command lives in: `load_saved_model` (the SavedModel with this project's signatures),
`read_operating_point` (export/detection.json, checked) and `SavedModelScorer`, which
scores one-second windows in batches and, when the hop is a whole number of STFT steps,
computes each STFT frame of a recording once for all the windows that share it.

The SavedModel is the contract between training and everything after it: this module
needs the export folder and `pipelines.contract`, nothing of the trainer. TensorFlow is
imported when a model is loaded, not when the module is.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pipelines import contract, errors, events

BATCH_WINDOWS = 64  # windows per model call


def load_saved_model(export_dir: str):
    """The SavedModel in `export_dir`; UserError unless it has this project's signatures."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
        loaded = tf.saved_model.load(export_dir)
    except Exception as error:  # pylint: disable=broad-except  # TF raises many kinds
        raise errors.UserError(f"{export_dir}: cannot load the SavedModel "
                               f"({errors.first_line(error)})") from None
    missing = [name for name in contract.SIGNATURES if name not in loaded.signatures]
    if missing:
        raise errors.UserError(f"{export_dir}: not a keyword model export (no signature "
                               f"{', '.join(missing)})")
    return loaded


def read_operating_point(export_dir: str, labels: list[str], threshold: Optional[float]
                         ) -> tuple[Optional[str], events.Config, list[str]]:
    """export/detection.json, checked against `labels`, with `threshold` applied.

    Returns:
      (the file's text or None when training left none, the Config to run with, notes
      for stderr). A file that is not a valid config is a UserError naming the key.
    """
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    path = f"{export_dir.rstrip('/')}/{events.CONFIG_FILE}"
    text = None
    if FileSystems.exists(path):
        try:
            with FileSystems.open(path) as handle:
                text = handle.read().decode("utf-8")
        except (IOError, OSError, UnicodeDecodeError) as error:
            raise errors.UserError(f"{path}: cannot read ({errors.first_line(error)})") \
                from None
    try:
        config, notes = events.operating_point(text, labels, threshold, export_dir)
    except ValueError as error:
        raise errors.UserError(f"{path}: not a valid detection config: {error}") from None
    return text, config, notes


class SpanScorer:
    """Scores one-second windows with a function of their |STFT|, in batches.

    When the hop is a whole number of STFT steps (128 samples) the windows share their
    STFT frames: `score_span` computes each frame of the audio once and gives the model
    the windows' frames. With 1 s windows every 96 ms each frame belongs to ten windows,
    so this takes the STFT, about a quarter of a window's cost when each window computes
    its own, almost out of the bill. The frames are those a window's own STFT gives (same
    samples, same STFT), so the scores are the same.

    Args:
      labels: the model's labels, in output order.
      probabilities: a TensorFlow function, float32 [n, 124, 129] |STFT| -> [n, labels].
      batch_windows: windows per call.
    """

    def __init__(self, labels: list[str], probabilities, batch_windows: int = BATCH_WINDOWS):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self._tf = tf
        self.labels = labels
        self.batch_windows = batch_windows
        self._probabilities = probabilities
        self._span = tf.function(self._span_probabilities, input_signature=[
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None, contract.NUM_FRAMES], tf.int32)])
        self._windows = tf.function(self._window_probabilities, input_signature=[
            tf.TensorSpec([None, None], tf.float32)])

    def _empty(self) -> np.ndarray:
        return np.zeros((0, len(self.labels)), np.float32)

    def _magnitude(self, samples):
        tf = self._tf
        return tf.abs(tf.signal.stft(samples, frame_length=contract.FRAME_LENGTH,
                                     frame_step=contract.FRAME_STEP,
                                     fft_length=contract.FFT_LENGTH))

    def _window_probabilities(self, windows):
        clips = windows[:, :contract.CLIP_SAMPLES]
        missing = contract.CLIP_SAMPLES - self._tf.shape(clips)[1]
        return self._probabilities(self._magnitude(self._tf.pad(clips, [[0, 0], [0, missing]])))

    def _span_probabilities(self, samples, frame_index):
        return self._probabilities(self._tf.gather(self._magnitude(samples), frame_index))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """float32 [n, window samples] -> probabilities [n, labels], in batches."""
        out = [self._windows(self._tf.constant(windows[start:start + self.batch_windows],
                                               self._tf.float32)).numpy()
               for start in range(0, len(windows), self.batch_windows)]
        return np.concatenate(out) if out else self._empty()

    def score_span(self, samples: np.ndarray, offset: int, first: int, count: int,
                   config: events.Config) -> np.ndarray:
        """Probabilities [count, labels] of windows first..first+count-1.

        Args:
          samples: audio whose sample 0 is sample `offset` of the recording, holding
            the windows (samples past the end of the recording may be missing).
          offset, first, count: as `events.frame_windows`.
          config: window and hop.
        """
        window, hop = config.window, config.hop
        if window != contract.CLIP_SAMPLES or hop % contract.FRAME_STEP:
            return self(events.frame_windows(samples, offset, first, count, window, hop))
        out = []
        step = hop // contract.FRAME_STEP
        for batch_first in range(first, first + count, self.batch_windows):
            batch = min(self.batch_windows, first + count - batch_first)
            span = events.frame_windows(samples, offset, batch_first, 1,
                                        (batch - 1) * hop + window, hop)[0]
            index = (np.arange(batch)[:, None] * step
                     + np.arange(contract.NUM_FRAMES)[None, :]).astype(np.int32)
            out.append(self._span(self._tf.constant(span),
                                  self._tf.constant(index)).numpy())
        return np.concatenate(out) if out else self._empty()


class SavedModelScorer(SpanScorer):
    """A job's SavedModel, loaded once, scoring windows as `SpanScorer` (its `spectrogram`
    signature), or a batch of whole windows through its XLA-compiled `waveform` one."""

    def __init__(self, model_dir: str, batch_windows: int = BATCH_WINDOWS):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.export_dir = contract.find_export(model_dir)
        labels = contract.read_export_labels(self.export_dir)
        self.model = load_saved_model(self.export_dir)
        self._serve = self.model.signatures[contract.SIGNATURE_WAVEFORM]
        spectrogram = self.model.signatures[contract.SIGNATURE_SPECTROGRAM]
        outputs = spectrogram(spectrogram=tf.zeros((1,) + contract.SPECTROGRAM_SHAPE))
        count = int(outputs["probabilities"].shape[-1])
        if count != len(labels):
            raise errors.UserError(
                f"{self.export_dir}: {contract.LABELS_FILE} has {len(labels)} labels but "
                f"the model has {count} outputs ({contract.LABELS_FILE} of another model?)")
        super().__init__(labels, lambda spectrograms: spectrogram(
            spectrogram=spectrograms)["probabilities"], batch_windows)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """float32 [n, window samples] -> probabilities [n, labels], in batches."""
        out = []
        for start in range(0, len(windows), self.batch_windows):
            batch = windows[start:start + self.batch_windows]
            count = len(batch)
            if count < self.batch_windows:  # the XLA-compiled signature: one batch size
                batch = np.concatenate([batch, np.zeros(
                    (self.batch_windows - count, batch.shape[1]), np.float32)])
            outputs = self._serve(waveform=self._tf.constant(batch))
            out.append(outputs["probabilities"].numpy()[:count])
        return np.concatenate(out) if out else self._empty()
