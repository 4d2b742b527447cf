"""Running a job's LiteRT files with the LiteRT interpreter (`ai-edge-litert`).

A job's export/ holds four files (`trainer.litert.export` writes them)::

    model.tflite               float32, one clip per call
    model_int8.tflite          int8 network, float front end, one clip per call
    model_stream.tflite        float32, 32 ms of audio per call, state in and out
    model_stream_int8.tflite   the same, int8 network

Clip models: input `waveform` float32 [1, 16000] (one second, padded or cut), output
`probabilities` float32 [1, labels] in labels.txt's order::

    model = runtime.LiteRTModel("JOB/export/model_int8.tflite")
    probabilities = model.probabilities(waveform)   # float32 [samples] -> [labels]

Streaming models (`StreamingModel`): inputs `frame` [1, 512] (the next 32 ms), `tail`
[1, 128] and `features` [1, 124, F] (the state), outputs `probabilities` (of the last
second) and `next_tail`, `next_features` (the state for the next call). A stream starts
from the state after one second of silence (`StreamingModel.reset`).

No TensorFlow here: files are read through Beam's FileSystems (local or gs://).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ai_edge_litert import interpreter as litert_interpreter

from pipelines import audio, contract, errors

FLOAT_FILE = "model.tflite"
INT8_FILE = "model_int8.tflite"
STREAM_FLOAT_FILE = "model_stream.tflite"
STREAM_INT8_FILE = "model_stream_int8.tflite"
FILES = (FLOAT_FILE, INT8_FILE, STREAM_FLOAT_FILE, STREAM_INT8_FILE)
SIGNATURE = "serving_default"
INPUT = "waveform"
OUTPUT = "probabilities"
# Streaming signature.
FRAME = "frame"
TAIL = "tail"
FEATURES = "features"
NEXT = "next_"
STREAM_HOPS = 4
FRAME_SAMPLES = STREAM_HOPS * contract.FRAME_STEP  # 512 samples, 32 ms
WARMUP_CALLS = -(-contract.NUM_FRAMES // STREAM_HOPS)  # calls that refill every frame

SAVEDMODEL = "savedmodel"
ENGINE_FILES = {"tflite": FLOAT_FILE, "tflite-int8": INT8_FILE}
ENGINES = (SAVEDMODEL,) + tuple(ENGINE_FILES)  # --engine of trainer.predict and detect


def read_file(path: str) -> bytes:
    """A file's bytes (local or gs://)."""
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    with FileSystems.open(path) as handle:
        return handle.read()


def load_interpreter(path: Optional[str] = None, content: Optional[bytes] = None,
                     num_threads: int = 1):
    """`content`, or the file at `path` (local or gs://), in the LiteRT interpreter.

    Returns:
      (content, interpreter, the runner of its SIGNATURE).
    """
    if content is None:
        content = read_file(path)
    with errors.quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = litert_interpreter.Interpreter(model_content=content,
                                                     num_threads=num_threads)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner(SIGNATURE)
    return content, interpreter, runner


class LiteRTModel:
    """A clip model file in the LiteRT interpreter, run one clip at a time."""

    def __init__(self, path: Optional[str] = None, content: Optional[bytes] = None,
                 num_threads: int = 1):
        """Loads `content`, or the file at `path` (local or gs://); one CPU thread by default."""
        self.content, self.interpreter, self._runner = load_interpreter(path, content,
                                                                        num_threads)
        shape = tuple(self._runner.get_input_details()[INPUT]["shape"])
        if shape != (1, contract.CLIP_SAMPLES):
            raise ValueError(f"{path or 'model'}: input shape {shape}, expected "
                             f"(1, {contract.CLIP_SAMPLES})")

    @property
    def num_labels(self) -> int:
        return int(self._runner.get_output_details()[OUTPUT]["shape"][-1])

    def probabilities(self, waveform: np.ndarray) -> np.ndarray:
        """float32 audio [samples] at 16 kHz -> probabilities [num_labels]."""
        return self._runner(**{INPUT: audio.pad_or_trim(waveform)[None, :]})[OUTPUT][0]


class StreamingModel:
    """A streaming file in the LiteRT interpreter, its state kept between `step` calls."""

    def __init__(self, path: Optional[str] = None, content: Optional[bytes] = None,
                 num_threads: int = 1):
        self.content, self.interpreter, self._runner = load_interpreter(
            path, content, num_threads)
        details = self._runner.get_input_details()
        self._features_shape = tuple(details[FEATURES]["shape"])
        self.reset()

    @property
    def num_labels(self) -> int:
        return int(self._runner.get_output_details()[OUTPUT]["shape"][-1])

    def reset(self) -> None:
        """The state after one second of silence."""
        self._state = {TAIL: np.zeros((1, contract.FRAME_STEP), np.float32),
                       FEATURES: np.zeros(self._features_shape, np.float32)}
        silence = np.zeros(FRAME_SAMPLES, np.float32)
        for _ in range(WARMUP_CALLS):
            self.step(silence)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """The next 512 samples -> probabilities of the last second [num_labels]."""
        outputs = self._runner(**{FRAME: np.asarray(frame, np.float32).reshape(1, -1)},
                               **self._state)
        self._state = {TAIL: outputs[NEXT + TAIL], FEATURES: outputs[NEXT + FEATURES]}
        return outputs[OUTPUT][0]


def engine_file(model_dir: str, engine: str) -> str:
    """The LiteRT file of `engine` in a job (JOB/export/FILE) or export directory."""
    name = ENGINE_FILES[engine]
    folder = contract.find_export(model_dir, name, missing=(
        f"no {contract.EXPORT_DIR}/{name} for --engine {engine} (write it with "
        "python -m trainer.litert --job-dir JOB --data-dir DATA)"))
    return f"{folder}/{name}"


def load_engine(model_dir: str, engine: str, num_threads: int = 1
                ) -> tuple[LiteRTModel, list[str]]:
    """The LiteRT model of `engine` in `model_dir` and its labels, checked to match."""
    path = engine_file(model_dir, engine)
    try:
        model = LiteRTModel(path, num_threads=num_threads)
    except (ValueError, RuntimeError, IOError, OSError) as error:
        raise errors.UserError(f"{path}: cannot load the LiteRT model "
                               f"({errors.first_line(error)})") from None
    labels = contract.read_export_labels(path.rsplit("/", 1)[0])
    if model.num_labels != len(labels):
        raise errors.UserError(f"{path}: {model.num_labels} outputs but {len(labels)} labels "
                               f"in {contract.LABELS_FILE}")
    return model, labels
