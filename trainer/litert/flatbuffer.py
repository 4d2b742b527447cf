"""What a LiteRT flatbuffer holds: its ops and their types, and the memory it needs.

Read straight from the file with LiteRT's flatbuffer schema (`ai-edge-litert`): the op
of every step with its input and output types (`op_types`), the ops the int8
conversion keeps float (`float_nodes`), and the tensor arena a static planner needs
(`arena_bytes`), as TFLite Micro plans it.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from trainer.litert.runtime import OUTPUT

FRONT_END = "front_end"  # name scope of the ops kept float in the int8 model
ARENA_ALIGNMENT = 16  # bytes, as TFLite Micro's memory planner aligns buffers


def root(content: bytes):
    """The flatbuffer's Model table."""
    return schema.Model.GetRootAsModel(content, 0)


OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
TYPE_NAMES = {value: name for name, value in vars(schema.TensorType).items()
               if not name.startswith("_")}


def op_output_names(content: bytes) -> list[str]:
    """The output tensor name of every op, in execution order."""
    graph = root(content).Subgraphs(0)
    return [graph.Tensors(graph.Operators(i).Outputs(0)).Name().decode()
            for i in range(graph.OperatorsLength())]


def float_nodes(content: bytes) -> list[str]:
    """Ops kept float in the int8 model: the front end, and those that write an output
    other than the probabilities (a streaming model's state, passed back unchanged)."""
    model = root(content)
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
    model = root(content)
    graph = model.Subgraphs(0)
    rows = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        data_in = TYPE_NAMES[graph.Tensors(op.Inputs(0)).Type()]
        data_out = TYPE_NAMES[graph.Tensors(op.Outputs(0)).Type()]
        rows.append((OP_NAMES.get(builtin, str(builtin)), data_in, data_out))
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
    model = root(content)
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
        size = int(np.prod(tensor.ShapeAsNumpy())) * element_bytes(tensor.Type())
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


def element_bytes(tensor_type: int) -> int:
    name = TYPE_NAMES[tensor_type]
    return {"INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "FLOAT16": 2, "INT32": 4,
            "FLOAT32": 4, "INT64": 8, "COMPLEX64": 8, "FLOAT64": 8}[name]
