"""One ONNX graph from two exported parts, the second inside an ``If`` that skips it when there is nothing for it.

torch's ONNX exporter (the TorchScript one, ``export.py`` says why) traces Python control flow away and
cannot trace a scripted ``If`` around a module. So a gated graph (pose: detector, then the keypoint
model only when a box is kept) is exported as its head and its tail, and joined here:

    head: frames, parameters -> its own outputs, the tail's inputs, skip (bool)
    If skip: zeros of the tail's output shapes, else: the tail's nodes

TensorRT for RTX 1.7 crashes building a conditional whose branch reshapes by a data-dependent size (the
keypoint model's batch is the count of boxes kept), so for TensorRT the If becomes a select
(``selects``): both branches run and ``Where`` picks; the head always hands the tail at least one
box, so on a GPU no person costs one keypoint crop (ONNX Runtime, which runs the If, skips it).

The tail's values and initializers are renamed under a prefix (ONNX names are unique across scopes);
its inputs are the head's values of the same names, read from the outer scope (the frames through a
cast outside the If, see ``_split``).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..errors import BuildError
from .graph import copy_node, has_subgraph

TAIL = "tail/"
SKIP_NODE = "skip_tail"


def join(head: onnx.ModelProto, tail: onnx.ModelProto, skip: str, zero_shapes: dict[str, tuple[int, ...]]):
    """``head`` with ``tail`` inside ``If(skip)``; ``zero_shapes``: each tail output's dims after the batch."""
    graph = head.graph
    outer = {v.name for v in (*graph.input, *graph.output)}
    tail_inputs = [v.name for v in tail.graph.input]
    missing = [name for name in (*tail_inputs, skip) if name not in outer]
    if missing:
        raise BuildError(f"gated export: the head has no output {missing} for the tail")

    def inside(name: str) -> str:
        return name if name in tail_inputs or not name else TAIL + name

    nodes, hoisted = _split(tail, tail_inputs, inside)
    for init in tail.graph.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = TAIL + init.name
        graph.initializer.append(moved)  # read from the outer scope by the branch

    outputs = [v.name for v in tail.graph.output]
    else_branch = helper.make_graph(nodes, "tail", [], [_value(TAIL + name, tail, name) for name in outputs])
    then_branch = _zeros(tail_inputs[-1], outputs, tail, zero_shapes)
    graph.node.extend(hoisted)
    graph.node.append(
        helper.make_node("If", [skip], outputs, name=SKIP_NODE, then_branch=then_branch, else_branch=else_branch)
    )
    kept = [v for v in graph.output if v.name not in (*tail_inputs, skip)]
    del graph.output[:]
    graph.output.extend(kept + [_value(name, tail, name) for name in outputs])
    return head


def _split(tail: onnx.ModelProto, tail_inputs: list[str], inside) -> tuple[list, list]:
    """The tail's nodes, renamed: (those in the branch, the casts of its inputs that run before the If).

    TensorRT takes a uint8 tensor only where the network reads its input (a Cast, or a Shape) and a
    conditional's inputs only as bool, int32 or floats: so the frames are cast outside the If and the
    branch reads their shape from that cast.
    """
    uint8 = {v.name for v in tail.graph.input if v.type.tensor_type.elem_type == TensorProto.UINT8}
    casts = {n.input[0]: inside(n.output[0]) for n in tail.graph.node if n.op_type == "Cast" and n.input[0] in uint8}
    nodes, hoisted = [], []
    for node in tail.graph.node:
        if has_subgraph(node):
            raise BuildError(f"gated export: tail node {node.name} ({node.op_type}) has a subgraph; not supported")
        copy = copy_node(node)
        copy.name = TAIL + node.name
        copy.output[:] = [inside(n) for n in node.output]
        if node.op_type == "Cast" and node.input[0] in tail_inputs:
            hoisted.append(copy)
            continue
        read = [n for n in node.input if n in uint8]
        if read and (node.op_type != "Shape" or read[0] not in casts):
            raise BuildError(f"gated export: tail node {node.name} ({node.op_type}) reads uint8 {read[0]} directly")
        copy.input[:] = [casts[n] if n in uint8 else inside(n) for n in node.input]
        nodes.append(copy)
    return nodes, hoisted


def _value(name: str, tail: onnx.ModelProto, source: str) -> onnx.ValueInfoProto:
    """A value info named ``name`` with the type and dims of ``tail``'s output ``source``."""
    value = onnx.ValueInfoProto()
    value.CopyFrom(next(v for v in tail.graph.output if v.name == source))
    value.name = name
    return value


def _zeros(batch_of: str, outputs: list[str], tail: onnx.ModelProto, zero_shapes: dict) -> onnx.GraphProto:
    """A branch that gives each output as zeros of [batch of ``batch_of``, *zero_shapes[output]] in its dtype."""
    nodes = [helper.make_node("Shape", [batch_of], ["zeros/batch"], start=0, end=1)]
    values = []
    for name in outputs:
        dims = helper.make_tensor(
            f"zeros/{name}_dims", TensorProto.INT64, [len(zero_shapes[name])], list(zero_shapes[name])
        )
        dtype = next(v for v in tail.graph.output if v.name == name).type.tensor_type.elem_type
        nodes += [
            helper.make_node("Constant", [], [f"zeros/{name}_rest"], value=dims),
            helper.make_node("Concat", ["zeros/batch", f"zeros/{name}_rest"], [f"zeros/{name}_shape"], axis=0),
            helper.make_node(
                "ConstantOfShape",
                [f"zeros/{name}_shape"],
                [f"zeros/{name}"],
                value=helper.make_tensor("zero", dtype, [1], [0]),
            ),
        ]
        values.append(_value(f"zeros/{name}", tail, name))
    return helper.make_graph(nodes, "zeros", [], values)
