"""Scoring recordings window by window with any of a job's exported models.

`Scorer` runs the SavedModel (`pipelines.scoring.SavedModelScorer`: batches, shared
STFT frames) or one of the LiteRT clip files (`trainer.litert.runtime`, a window per
call). `WindowScorer` takes a recording's audio as it arrives, in blocks of any size
(`push`), and scores every window as soon as its second of audio is complete; `finish`
scores the last windows, which reach past the end of the audio (zeros there). So a file
read in blocks, a generated stream in memory and a live microphone are scored by the
same code, and give the same scores for the same audio. `detect_blocks` turns the
scores into events (`pipelines.events.EventStream`).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Iterable, NamedTuple, Optional

import numpy as np

from pipelines import audio, contract, events, inputs, scoring
from trainer.litert import runtime

# The detector that comes with the repository (models/README.md): what the commands that
# run a model use when given no --model-dir.
SHIPPED_MODEL_DIR = str(pathlib.Path(__file__).resolve().parents[1] / "models" / "speech-commands")
BATCH_WINDOWS = scoring.BATCH_WINDOWS
BLOCK_SAMPLES = BATCH_WINDOWS * contract.SAMPLE_RATE * events.HOP_MS // 1000
PEAKS_PER_SECOND = 50


class Scorer:
    """A job's exported model, loaded once, that scores one-second windows.

    Args:
      model_dir: a job directory or its export/ folder.
      engine: `runtime.SAVEDMODEL` or a LiteRT engine (`runtime.ENGINE_FILES`); a
        LiteRT engine needs only its .tflite file and labels.txt.
      batch_windows: windows per SavedModel call.
    """

    def __init__(self, model_dir: Optional[str], engine: str = runtime.SAVEDMODEL,
                 batch_windows: int = BATCH_WINDOWS):
        self.engine = engine
        self.lite_model = None
        self.spans: Optional[scoring.SpanScorer] = None  # TensorFlow: windows in batches
        if model_dir is None:  # `of_keras` fills it in
            return
        if engine == runtime.SAVEDMODEL:
            self.spans = scoring.SavedModelScorer(model_dir, batch_windows)
            self.export_dir, self.labels = self.spans.export_dir, self.spans.labels
        else:
            self.lite_model, self.labels = runtime.load_engine(model_dir, engine)
            self.export_dir = runtime.engine_file(model_dir, engine).rsplit("/", 1)[0]

    @classmethod
    def of_keras(cls, net, labels: list[str], batch_windows: int = BATCH_WINDOWS) -> "Scorer":
        """A Keras model being trained (logits out), scored as its export would be."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        scorer = cls(None, "keras")
        scorer.labels, scorer.export_dir = list(labels), None
        scorer.spans = scoring.SpanScorer(
            scorer.labels, lambda spectrograms: tf.nn.softmax(net(spectrograms, training=False),
                                                              axis=-1), batch_windows)
        return scorer

    def _empty(self) -> np.ndarray:
        return np.zeros((0, len(self.labels)), np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """float32 [n, window samples] -> probabilities [n, labels]."""
        if self.spans is not None:
            return self.spans(windows)
        if not len(windows):
            return self._empty()
        return np.stack([self.lite_model.probabilities(window) for window in windows])

    def score_span(self, samples: np.ndarray, offset: int, first: int, count: int,
                   config: events.Config) -> np.ndarray:
        """Probabilities [count, labels] of windows first..first+count-1 (see
        `pipelines.scoring.SavedModelScorer.score_span`)."""
        if self.spans is not None:
            return self.spans.score_span(samples, offset, first, count, config)
        return self(events.frame_windows(samples, offset, first, count, config.window,
                                         config.hop))

    def operating_point(self, threshold: Optional[float] = None, quiet: bool = False
                        ) -> tuple[Optional[str], events.Config]:
        """(detection.json's text or None, the Config to run with); notes on stderr."""
        text, config, notes = scoring.read_operating_point(self.export_dir, self.labels,
                                                           threshold)
        if not quiet:
            for note in notes:
                print(note, file=sys.stderr)
        return text, config


def load_config(scorer: Scorer, threshold: Optional[float]) -> events.Config:
    """The stored operating point (or the default), `threshold` applied; notes on stderr."""
    return scorer.operating_point(threshold)[1]


def read_config(scorer: Scorer) -> Optional[events.Config]:
    """export/detection.json, or None when training left none."""
    text, config = scorer.operating_point(quiet=True)
    return None if text is None else config


class WindowBatch(NamedTuple):
    first: int  # number of the first window
    probabilities: np.ndarray  # [n, labels]
    times: np.ndarray  # seconds at which each window ends


def peaks(block: np.ndarray) -> np.ndarray:
    """Largest |sample| of each 1/PEAKS_PER_SECOND s of a block (a waveform's outline)."""
    step = contract.SAMPLE_RATE // PEAKS_PER_SECOND
    whole = len(block) // step * step
    found = np.abs(block[:whole]).reshape(-1, step).max(axis=1) if whole else np.zeros(0)
    if whole < len(block):
        found = np.append(found, np.abs(block[whole:]).max())
    return found.astype(np.float32)


class WindowScorer:
    """Scores one recording's windows as its audio arrives.

    Holds the audio of the windows not yet scored (about a second), so a recording of
    any length costs the memory of one block.
    """

    def __init__(self, scorer: Scorer, config: events.Config, keep_peaks: bool = False):
        self.scorer, self.config = scorer, config
        self.num_samples = 0
        self.keep_peaks = keep_peaks
        self.envelope: list[np.ndarray] = []  # per-block peaks, for plots
        self._buffer = np.zeros(0, np.float32)
        self._offset = 0  # recording sample of the buffer's first sample
        self._next = 0  # the next window to score

    def push(self, block: np.ndarray) -> Optional[WindowBatch]:
        """Adds the next samples; returns the windows they complete (None if none)."""
        window, hop = self.config.window, self.config.hop
        block = np.asarray(block, np.float32)
        self.num_samples += len(block)
        if self.keep_peaks and len(block):
            self.envelope.append(peaks(block))
        self._buffer = np.concatenate([self._buffer, block]) if len(self._buffer) else block
        complete = (self.num_samples - window) // hop + 1 if self.num_samples >= window else 0
        batch = None
        if complete > self._next:
            batch = self._score(self._next, complete - self._next, 2 ** 62)
            self._next = complete
        drop = self._next * hop - self._offset
        self._buffer, self._offset = self._buffer[drop:], self._offset + drop
        return batch

    def finish(self) -> Optional[WindowBatch]:
        """The windows that reach past the end of the audio (raises AudioError if none)."""
        if self.num_samples == 0:
            raise audio.AudioError("zero-length audio")
        total = events.num_windows(self.num_samples, self.config.window, self.config.hop)
        if total <= self._next:
            return None
        batch = self._score(self._next, total - self._next, self.num_samples)
        self._next = total
        return batch

    def _score(self, first: int, count: int, num_samples: int) -> WindowBatch:
        window, hop = self.config.window, self.config.hop
        times = events.window_times(first, count, num_samples, window, hop)
        return WindowBatch(first, self.scorer.score_span(self._buffer, self._offset, first,
                                                         count, self.config), times)


def window_batches(blocks: Iterable[np.ndarray], windows: WindowScorer
                   ) -> Iterable[WindowBatch]:
    """Every WindowBatch of a recording given as consecutive blocks."""
    for block in blocks:
        batch = windows.push(block)
        if batch is not None:
            yield batch
    batch = windows.finish()
    if batch is not None:
        yield batch


class Update(NamedTuple):
    """What a stream's latest audio gave: the events it fired, and the windows scored."""
    events: list  # events.Event
    times: np.ndarray  # seconds at which each window ends
    smoothed: np.ndarray  # [windows, labels] smoothed scores


class StreamDetector:
    """Events of one stream of audio as it arrives, in blocks of any size.

    The one implementation of detection on audio: `detect_blocks` (files) and the live
    server (a microphone over a WebSocket) push audio through it, and the
    same audio gives the same events whatever the block sizes.
    """

    def __init__(self, scorer: Scorer, config: events.Config, keep_peaks: bool = False):
        self.config = config
        self.windows = WindowScorer(scorer, config, keep_peaks)
        self._events = events.EventStream(scorer.labels, config)

    @property
    def num_samples(self) -> int:
        return self.windows.num_samples

    def _update(self, batch: Optional[WindowBatch]) -> Update:
        if batch is None:
            return Update([], np.zeros(0), np.zeros((0, len(self.windows.scorer.labels)),
                                                    np.float32))
        fired, smoothed = self._events.push(batch.probabilities, batch.times)
        return Update(fired, batch.times, smoothed)

    def push(self, block: np.ndarray) -> Update:
        """The next samples (16 kHz float32) -> what they completed."""
        return self._update(self.windows.push(block))

    def finish(self) -> Update:
        """The end of the stream: the last windows, padded past the end with zeros."""
        return self._update(self.windows.finish())


class Detection(NamedTuple):
    events: list  # events.Event
    num_samples: int
    trace: Optional[dict]  # times, smoothed scores and waveform peaks, when asked for


def detect_blocks(blocks: Iterable[np.ndarray], scorer: Scorer, config: events.Config,
                  trace: bool = False, on_event=None) -> Detection:
    """Events of one recording given as consecutive 16 kHz blocks.

    Args:
      on_event: called with each Event as it fires (before the recording ends).
    """
    detector = StreamDetector(scorer, config, keep_peaks=trace)
    found, times, smoothed = [], [], []

    def take(update: Update) -> None:
        for event in update.events:
            if on_event is not None:
                on_event(event)
        found.extend(update.events)
        if trace and len(update.times):
            times.append(update.times)
            smoothed.append(update.smoothed)

    for block in blocks:
        take(detector.push(block))
    take(detector.finish())
    recorded = None
    if trace:
        recorded = {"times": np.concatenate(times), "smoothed": np.concatenate(smoothed),
                    "peaks": np.concatenate(detector.windows.envelope),
                    "peaks_per_second": PEAKS_PER_SECOND}
    return Detection(found, detector.num_samples, recorded)


def open_recording(path: str):
    """A recording opened for reading, local or gs:// (a local name that is not UTF-8 by its
    raw bytes), through TensorFlow's file system: a gs:// path that cannot be reached
    fails in seconds, with TensorFlow's reason."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile.GFile(inputs.path_bytes(path), "rb")


def detect_file(path: str, scorer: Scorer, config: events.Config, trace: bool = False,
                on_event=None) -> Detection:
    """Events of an audio file (raises audio.AudioError, OSError or a TensorFlow OpError
    when it cannot be read)."""
    with open_recording(path) as handle:
        return detect_blocks(audio.read_blocks(handle, BLOCK_SAMPLES), scorer, config, trace,
                             on_event)


def score_audio(samples: np.ndarray, scorer: Scorer, config: events.Config) -> np.ndarray:
    """Probabilities of every window of a recording held in memory (a generated stream)."""
    blocks = (samples[start:start + BLOCK_SAMPLES]
              for start in range(0, len(samples), BLOCK_SAMPLES))
    return np.concatenate([batch.probabilities for batch in window_batches(
        blocks, WindowScorer(scorer, config))])
