"""LiteRT (TFLite) versions of the serving model, float32 and int8, and a runner for them.

`write_litert_models` writes, beside the SavedModel in JOB/export/:

- `model.tflite`: float32 throughout.
- `model_int8.tflite`: post-training full-integer quantisation (int8 weights and
  activations, int32 biases), calibrated on a representative sample of training
  clips. The STFT and log-mel front end stays float32 inside the same file: the FFT
  has no integer kernel, and the |STFT| and mel energies span six orders of magnitude,
  which 8 bits cannot hold before the log (`front_end="int8"` quantises every op that
  has an integer kernel, for comparison; benchmarks/litert.py measures both).

Both take one clip of raw 16 kHz mono float32 audio, input `waveform` [1, 16000]
(shorter clips zero-padded at the end, longer ones cut to their first second, as
`trainer.features.pad_or_trim` does), and return `probabilities` float32
[1, num_labels] in labels.txt's order. They are converted with TensorFlow's converter
from a concrete function of the serving model on [1, 16000] (never from the
XLA-compiled export signature) and run with the LiteRT interpreter (`ai-edge-litert`)::

    model = litert.LiteRTModel("JOB/export/model_int8.tflite")
    probabilities = model.probabilities(waveform)   # float32 [samples] -> [num_labels]

A training run (`export_run`) also writes the streaming variants, 32 ms of audio per
call (`trainer.litert_stream`). Convert an existing job (e.g. one trained before these
files existed)::

    python -m trainer.litert --job-dir JOB --data-dir OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert import interpreter as litert_interpreter  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from tensorflow.python.framework import convert_to_constants  # noqa: E402

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, first_line, run_cli  # noqa: E402
from trainer import artifacts, data, models  # noqa: E402
from trainer.models import kws  # noqa: E402

FLOAT_FILE = "model.tflite"
INT8_FILE = "model_int8.tflite"
INPUT = "waveform"
OUTPUT = "probabilities"
SIGNATURE = "serving_default"
FRONT_END = "front_end"  # name scope of the ops kept float in the int8 model
FRONT_END_MODES = ("float", "int8")
# Layers that belong to the front end when they come first in the model: the log
# compresses the mel energies into a range that int8 holds.
FRONT_END_LAYERS = (kws.LogMel,)
CALIBRATION_CLIPS = 300
ARENA_ALIGNMENT = 16  # bytes, as TFLite Micro's memory planner aligns buffers

BLOCKS = contract.CLIP_SAMPLES // contract.FRAME_STEP  # 125 hops of 128 samples
# Frame i is hop i followed by the first 127 samples of hop i + 1; padded to the FFT
# length with one zero, that is hops i and i + 1 with the last window weight 0.
assert contract.CLIP_SAMPLES % contract.FRAME_STEP == 0
assert contract.FRAME_STEP < contract.FRAME_LENGTH <= 2 * contract.FRAME_STEP
assert contract.FFT_LENGTH == 2 * contract.FRAME_STEP
assert BLOCKS - 1 == contract.NUM_FRAMES


def hops_magnitude(hops: tf.Tensor) -> tf.Tensor:
    """[batch, n + 1, 128] consecutive hops -> [batch, n, 129] |STFT| of the n frames."""
    frames = tf.concat([hops[:, :-1], hops[:, 1:]], axis=-1)
    window = tf.concat([tf.signal.hann_window(contract.FRAME_LENGTH),
                        tf.zeros([contract.FFT_LENGTH - contract.FRAME_LENGTH])], axis=0)
    return tf.abs(tf.signal.rfft(frames * window, [contract.FFT_LENGTH]))


def stft_magnitude(clips: tf.Tensor) -> tf.Tensor:
    """[batch, 16000] float32 -> [batch, 124, 129] |STFT|, as `features.stft_magnitude`.

    Frames are built from reshaped hops rather than by `tf.signal.frame`, whose
    gather indices would add a 124 x 255 int32 constant (126 KB) to the file.
    """
    return hops_magnitude(tf.reshape(clips, [-1, BLOCKS, contract.FRAME_STEP]))


def split_front_end(model: keras.Model) -> tuple[list[keras.layers.Layer], keras.Model]:
    """The model's leading front-end layers (FRONT_END_LAYERS) and the network after them."""
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    front = []
    for layer in layers:
        if not isinstance(layer, FRONT_END_LAYERS):
            break
        front.append(layer)
    if not front:
        return [], model
    return front, keras.Model(front[-1].output, model.output, name=f"{model.name}_network")


def frozen(function: tf.types.experimental.PolymorphicFunction
           ) -> tf.types.experimental.ConcreteFunction:
    """`function` (one input signature, a dict out) with its weights made constants."""
    concrete = function.get_concrete_function()
    names = sorted(concrete.structured_outputs)
    constant = convert_to_constants.convert_variables_to_constants_v2(concrete)

    # Freezing drops the outputs' names (it returns them in sorted order); calling the
    # frozen function again restores them.
    @tf.function(input_signature=function.input_signature)
    def named(*inputs):
        return dict(zip(names, constant(*inputs)))

    return named.get_concrete_function()


def apply_front_end(front: list[keras.layers.Layer], magnitude: tf.Tensor) -> tf.Tensor:
    for layer in front:
        magnitude = layer(magnitude)
    return magnitude


def clip_function(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """The serving model on one clip, weights frozen into constants.

    The STFT and any front-end layers run under the name scope FRONT_END, which is how
    the int8 conversion finds the ops to keep float.
    """
    front, network = split_front_end(model)

    @tf.function(input_signature=[tf.TensorSpec([1, contract.CLIP_SAMPLES], tf.float32,
                                                name=INPUT)])
    def probabilities(waveform):
        with tf.name_scope(FRONT_END):
            features = apply_front_end(front, stft_magnitude(waveform))
        return {OUTPUT: tf.nn.softmax(network(features, training=False), axis=-1)}

    return frozen(probabilities)


def _converter(function) -> tf.lite.TFLiteConverter:
    # The empty module selects the converter's current path (signatures with names).
    return tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())


def convert_float(model: keras.Model) -> bytes:
    """The float32 LiteRT flatbuffer of the serving model."""
    return _converter(clip_function(model)).convert()


def convert_int8(model: keras.Model, representative_clips: np.ndarray,
                 front_end: str = "float") -> bytes:
    """The full-integer LiteRT flatbuffer, calibrated on `representative_clips`.

    Args:
      model: the serving model (|STFT| in, logits out).
      representative_clips: float32 [n, 16000] training clips for calibration.
      front_end: "float" keeps the ops under FRONT_END float32; "int8" quantises
        every op with an integer kernel (the FFT and its magnitude stay float anyway).

    Returns:
      The flatbuffer: float32 input and output, int8 in between (see `op_types`).
    """
    clips = np.asarray(representative_clips, np.float32).reshape(-1, contract.CLIP_SAMPLES)
    if not len(clips):
        raise ValueError("no representative clips to calibrate on")
    return quantize(clip_function(model), lambda: ({INPUT: clip[None, :]} for clip in clips),
                    front_end)


def quantize(function: tf.types.experimental.ConcreteFunction, representative_inputs,
             front_end: str = "float") -> bytes:
    """Full-integer conversion of a frozen function (see `convert_int8`).

    Args:
      function: from `frozen`.
      representative_inputs: a callable returning an iterable of {input name: array}.
      front_end: "float" or "int8", as in `convert_int8`.
    """
    if front_end not in FRONT_END_MODES:
        raise ValueError(f"front_end must be one of {FRONT_END_MODES}, not {front_end!r}")
    converter = _converter(function)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_inputs
    # Integer kernels where they exist, float ones for the rest (RFFT2D, COMPLEX_ABS).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        # Calibration runs TensorFlow's own (deprecated) interpreter inside the converter.
        warnings.simplefilter("ignore")
        if front_end == "int8":
            return converter.convert()
        # Selective quantisation through the converter's public debugging API: the
        # debugger calibrates, then quantises every op but the denylisted ones.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_inputs)
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(debugger.calibrated_model))
        return debugger.get_nondebug_quantized_model()


def write_litert_models(model: keras.Model, labels: list[str], export_dir: str,
                        representative_clips: Optional[np.ndarray]) -> dict[str, str]:
    """Writes FLOAT_FILE and INT8_FILE of the serving `model` into `export_dir`.

    Args:
      model: the serving model (e.g. the recipe's `serving_model`), |STFT| in, logits out.
      labels: its labels, in output order (labels.txt is written beside the models if
        the SavedModel export has not written it).
      export_dir: local or gs:// folder, usually JOB/export.
      representative_clips: float32 [n, 16000] training clips (see `CALIBRATION_CLIPS`);
        None writes the float model only.

    Returns:
      {"float": path, "int8": path}, without "int8" when there were no clips.
    """
    # A Sequential model reloaded or resumed may have no symbolic output: ask for the shape.
    outputs = int(model.compute_output_shape((1,) + contract.SPECTROGRAM_SHAPE)[-1])
    if outputs != len(labels):
        raise ValueError(f"the model has {outputs} outputs but there are {len(labels)} labels")
    export_dir = export_dir.rstrip("/")
    tf.io.gfile.makedirs(export_dir)
    contents = {"float": convert_float(model)}
    if representative_clips is not None:
        contents["int8"] = convert_int8(model, representative_clips)
    paths = write_files(export_dir, contents, {"float": FLOAT_FILE, "int8": INT8_FILE})
    labels_path = f"{export_dir}/{contract.LABELS_FILE}"
    if not tf.io.gfile.exists(labels_path):
        with tf.io.gfile.GFile(labels_path, "w") as handle:
            handle.write(contract.format_labels(labels))
    return paths


def write_files(export_dir: str, contents: dict[str, bytes], names: dict[str, str]
                ) -> dict[str, str]:
    """Writes each kind's content to `export_dir`/`names[kind]`; returns {kind: path}."""
    paths = {}
    for kind, content in contents.items():
        paths[kind] = f"{export_dir.rstrip('/')}/{names[kind]}"
        with tf.io.gfile.GFile(paths[kind], "wb") as handle:
            handle.write(content)
    return paths


def export_run(model: keras.Model, labels: list[str], export_dir: str, data_dir: str,
               seed: int = 42, count: int = CALIBRATION_CLIPS) -> dict[str, str]:
    """The LiteRT files of a training run, int8 calibrated on its training clips.

    Writes the clip models (`write_litert_models`) and the streaming ones
    (`trainer.litert_stream`). A run preprocessed with --no-waveforms has no clips to
    calibrate on: it gets the float models and a note.

    Returns:
      {"float", "int8", "stream_float", "stream_int8": path}, without the int8 ones
      when there were no clips.
    """
    from trainer import litert_stream  # pylint: disable=import-outside-toplevel  # imports us
    clips = None
    if data.read_metadata(data_dir).get("waveforms", False):
        clips = representative_clips(data_dir, count, seed)
    else:
        print(f"note: {data_dir} stores no waveforms (--no-waveforms), so there are no "
              f"clips to calibrate the int8 models on; writing the float ones only")
    paths = write_litert_models(model, labels, export_dir, clips)
    streaming = litert_stream.write_stream_models(model, export_dir, clips)
    return paths | {f"stream_{kind}": path for kind, path in streaming.items()}


def representative_sample(dataset: tf.data.Dataset, count: int = CALIBRATION_CLIPS
                          ) -> np.ndarray:
    """The first `count` waveforms of a (waveform, label) batch dataset, float32 [n, 16000]."""
    clips = []
    for waveforms, _ in dataset:
        clips.extend(waveforms.numpy().reshape(-1, contract.CLIP_SAMPLES))
        if len(clips) >= count:
            break
    return np.stack(clips[:count]).astype(np.float32)


def pad_or_trim(waveform: np.ndarray) -> np.ndarray:
    """float32 [n] -> [16000]: the first second, zero-padded at the end (as the export)."""
    clip = np.zeros(contract.CLIP_SAMPLES, np.float32)
    head = np.asarray(waveform, np.float32)[:contract.CLIP_SAMPLES]
    clip[:len(head)] = head
    return clip


def load_interpreter(path: Optional[str] = None, content: Optional[bytes] = None,
                     num_threads: int = 1):
    """`content`, or the file at `path` (local or gs://), in the LiteRT interpreter.

    Returns:
      (content, interpreter, the runner of its SIGNATURE).
    """
    if content is None:
        with tf.io.gfile.GFile(path, "rb") as handle:
            content = handle.read()
    interpreter = litert_interpreter.Interpreter(model_content=content,
                                                 num_threads=num_threads)
    return content, interpreter, interpreter.get_signature_runner(SIGNATURE)


class LiteRTModel:
    """A LiteRT model file loaded into the LiteRT interpreter, run one clip at a time."""

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
        return self._runner(**{INPUT: pad_or_trim(waveform)[None, :]})[OUTPUT][0]


ENGINES = ("savedmodel", "tflite", "tflite-int8")  # --engine of trainer.predict and detect
ENGINE_FILES = {"tflite": FLOAT_FILE, "tflite-int8": INT8_FILE}


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
    except (ValueError, RuntimeError) as error:
        raise UserError(f"{path}: cannot load the LiteRT model ({first_line(error)})") from None
    labels = artifacts.read_model_labels(path.rsplit("/", 1)[0])
    if model.num_labels != len(labels):
        raise UserError(f"{path}: {model.num_labels} outputs but {len(labels)} labels in "
                        f"{contract.LABELS_FILE}")
    return model, labels


# --- what a file holds: op types and memory ------------------------------------------

def _model(content: bytes):
    return schema.Model.GetRootAsModel(content, 0)


_OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
_TYPE_NAMES = {value: name for name, value in vars(schema.TensorType).items()
               if not name.startswith("_")}


def op_output_names(content: bytes) -> list[str]:
    """The output tensor name of every op, in execution order."""
    graph = _model(content).Subgraphs(0)
    return [graph.Tensors(graph.Operators(i).Outputs(0)).Name().decode()
            for i in range(graph.OperatorsLength())]


def float_nodes(content: bytes) -> list[str]:
    """Ops kept float in the int8 model: the front end, and those that write an output
    other than the probabilities (a streaming model's state, passed back unchanged)."""
    model = _model(content)
    graph = model.Subgraphs(0)
    state = set()
    if model.SignatureDefsLength():
        signature = model.SignatureDefs(0)
        state = {signature.Outputs(i).TensorIndex() for i in range(signature.OutputsLength())
                 if signature.Outputs(i).Name().decode() != OUTPUT}
    names = []
    for i in range(graph.OperatorsLength()):
        output = graph.Operators(i).Outputs(0)
        name = graph.Tensors(output).Name().decode()
        if name.startswith(f"{FRONT_END}/") or output in state:
            names.append(name)
    return names


def op_types(content: bytes) -> list[tuple[str, str, str]]:
    """(op, input dtype, output dtype) of every op in execution order, e.g. CONV_2D, INT8."""
    model = _model(content)
    graph = model.Subgraphs(0)
    rows = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        data_in = _TYPE_NAMES[graph.Tensors(op.Inputs(0)).Type()]
        data_out = _TYPE_NAMES[graph.Tensors(op.Outputs(0)).Type()]
        rows.append((_OP_NAMES.get(builtin, str(builtin)), data_in, data_out))
    return rows


def arena_bytes(content: bytes, first_op: int = 0) -> int:
    """Bytes of the tensor arena a static planner needs for one inference.

    Every tensor that is neither a constant nor a weight (inputs, activations, outputs)
    lives from the op that writes it to the last op that reads it; tensors are placed
    largest first at the lowest 16-byte-aligned offset free for their whole lifetime,
    as TFLite Micro's GreedyMemoryPlanner does. Interpreter bookkeeping (tensor and op
    structs, a few KB) comes on top.

    Args:
      content: a LiteRT flatbuffer.
      first_op: plan only the ops from this one on (e.g. the int8 part of a model whose
        front end runs elsewhere); what they read from earlier ops is their input.
    """
    model = _model(content)
    graph = model.Subgraphs(0)
    last_op = graph.OperatorsLength() - 1
    first, last = {}, {}
    if first_op == 0:
        for index in range(graph.InputsLength()):
            first[graph.Inputs(index)] = 0
    for step in range(first_op, graph.OperatorsLength()):
        op = graph.Operators(step)
        for i in range(op.InputsLength()):
            if op.Inputs(i) >= 0:  # -1: an optional input left out
                first.setdefault(op.Inputs(i), step)
                last[op.Inputs(i)] = step
        for i in range(op.OutputsLength()):
            first.setdefault(op.Outputs(i), step)
    for index in range(graph.OutputsLength()):
        last[graph.Outputs(index)] = last_op
    buffers = []
    for tensor_index, start in first.items():
        tensor = graph.Tensors(tensor_index)
        if model.Buffers(tensor.Buffer()).DataLength():
            continue  # a constant: stored in the file, not the arena
        size = int(np.prod(tensor.ShapeAsNumpy())) * _element_bytes(tensor.Type())
        size = -(-size // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
        buffers.append((size, start, last.get(tensor_index, start)))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    for size, start, end in sorted(buffers, key=lambda b: (-b[0], b[1])):
        offset = 0
        for other_offset, other_size, other_start, other_end in sorted(placed):
            if other_end < start or other_start > end:
                continue  # never alive at the same time
            if offset + size <= other_offset:
                break
            offset = max(offset, other_offset + other_size)
        placed.append((offset, size, start, end))
    return max((offset + size for offset, size, _, _ in placed), default=0)


def _element_bytes(tensor_type: int) -> int:
    name = _TYPE_NAMES[tensor_type]
    return {"INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "FLOAT16": 2, "INT32": 4,
            "FLOAT32": 4, "INT64": 8, "COMPLEX64": 8, "FLOAT64": 8}[name]


# --- converting an existing job ------------------------------------------------------

def representative_clips(data_dir: str, count: int = CALIBRATION_CLIPS,
                         seed: int = 42) -> np.ndarray:
    """`count` training clips of a preprocessing run, drawn across its shards and labels."""
    files = data.shard_files(data_dir, contract.TRAIN)
    dataset = data.make_dataset(files, 64, True, seed=seed, waveform=True,
                                shuffle_buffer=4 * count)
    return data.guard_corruption(files, lambda: representative_sample(dataset, count))


def job_model_name(job_dir: str) -> str:
    """The architecture a job trained, from its metrics.json."""
    path = f"{job_dir}/metrics.json"
    if not tf.io.gfile.exists(path):
        raise UserError(f"{job_dir}: not a finished training job (metrics.json missing)")
    with tf.io.gfile.GFile(path, "r") as handle:
        name = json.loads(handle.read()).get("model")
    if name not in models.names():
        raise UserError(f"{path}: unknown model {name!r}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.litert",
                                     description="Writes a training job's LiteRT models "
                                                 f"(export/{FLOAT_FILE}, export/{INT8_FILE} "
                                                 "and the streaming ones).")
    parser.add_argument("--job-dir", required=True, help="a training job (model.keras, export/)")
    parser.add_argument("--data-dir", required=True,
                        help="the preprocessing run it was trained on (calibration clips)")
    parser.add_argument("--clips", type=int, default=CALIBRATION_CLIPS,
                        help=f"training clips to calibrate the int8 model on "
                             f"(default {CALIBRATION_CLIPS})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace LiteRT files the job already has")
    return parser


def run(argv: Optional[list[str]] = None) -> dict[str, str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    job_dir = args.job_dir.rstrip("/")
    export_dir = contract.find_export(job_dir)
    from trainer import litert_stream  # pylint: disable=import-outside-toplevel
    existing = [name for name in (FLOAT_FILE, INT8_FILE, litert_stream.FLOAT_FILE,
                                  litert_stream.INT8_FILE)
                if tf.io.gfile.exists(f"{export_dir}/{name}")]
    if existing and not args.overwrite:
        raise UserError(f"{export_dir}: already holds {', '.join(existing)} (use --overwrite "
                        "to replace)")
    model_name = job_model_name(job_dir)
    net = artifacts.load_keras_model(job_dir)
    labels = artifacts.read_model_labels(job_dir)
    paths = export_run(models.get_recipe(model_name).serving_model(net), labels, export_dir,
                       args.data_dir, count=args.clips)
    for kind, path in paths.items():
        print(f"{kind:<13}{path}")
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
