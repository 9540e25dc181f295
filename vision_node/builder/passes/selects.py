"""The passes that make a graph's TensorRT variant (``tensorrt_onnx``): conditionals as selects, frames cast first.

Workaround (``shape_decided_ifs_as_selects``, ``gate_as_select``): TensorRT for RTX crashes (a segfault in
its builder) on a conditional whose branch reshapes by a size it does not see as a shape. Seen on TensorRT
for RTX 1.7.1.116 with the pass order of Pillow's resize (``pil_resize``) at the depth processor's keep-aspect
sizes; reported of 1.7 for the pose gate too (its keypoint batch is the count of boxes kept), which 1.7.1.116
builds. Each such ``If`` becomes both branches and a ``Where``: cheap on a GPU for the resize (the other order
of one frame: 106 of pose's 272 MB of activation at 1080p on the demo build), and for the gate one keypoint
crop on a frame with nobody in it (``gated``). Remove when TensorRT for RTX builds those Ifs and an RTX card runs
them: ``tests/test_workarounds.py`` fails for the resize once the builder takes it, and passes for the gate
today. Only depth's recipe still needs the resize as a select: segmentation's and pose's fixed-size resizes
build as Ifs (``cast_frames_first_in_branches``). Conditionals on data TensorRT does build stay (segmentation's
argmax fallback).

TensorRT also takes a uint8 tensor only where the network reads its input (a Cast, or a Shape), while
the resize lays the frame out for its first pass before its Cast (a quarter of the bytes to move on a
CPU). So a uint8 input that only data-movement operators read on its way to a Cast is cast first; the
Cast after them then casts float32 to itself. That is TensorRT's rule (every version), not a workaround.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .gated import SKIP_NODE
from .graph import SUBGRAPH_OPS, bodies, branch, cast_to, producers, readers, subgraphs

# Operators whose output depends on their input's shape only, not on its values.
_SHAPE_OPS = {"Shape", "Size", "Constant"}
# Operators that move elements without computing on them: the same result on uint8 or on float32.
_MOVES = {"Transpose", "Reshape", "Gather", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand"}


def gate_as_select(model: onnx.ModelProto) -> onnx.ModelProto:
    """The pose gate's ``If`` (``gated.SKIP_NODE``) as both branches and a ``Where`` (in place).

    Workaround for a builder crash reported of TensorRT for RTX 1.7; 1.7.1.116 builds the gate as an If
    (tests/test_workarounds.py), so it can go once an RTX card runs that engine and TensorRT 10 builds it."""
    graph = model.graph
    for index in reversed([i for i, n in enumerate(graph.node) if n.op_type == "If" and n.name == SKIP_NODE]):
        _inline_as_select(graph, index)
    return model


def shape_decided_ifs_as_selects(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every ``If`` decided by shapes and constants alone (the resize's pass order) as a select (in place).

    Workaround: TensorRT for RTX 1.7.1.116's builder segfaults on depth's resize If (tests/test_workarounds.py
    fails once it builds it; then cast the frame first inside the branches instead and drop this)."""
    graph = model.graph
    shape_only = _shape_only(graph)
    picked = [i for i, n in enumerate(graph.node) if n.op_type == "If" and shape_only(n.input[0])]
    for index in reversed(picked):  # from the last: inlining moves the nodes after it
        _inline_as_select(graph, index)
    return model


def cast_frames_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each uint8 graph input cast to float32 before the data movements that lead it to its Cast (in place)."""
    for value in model.graph.input:
        if value.type.tensor_type.elem_type == TensorProto.UINT8:
            _cast_first(model.graph, value.name)
    return model


def cast_frames_first_in_branches(model: onnx.ModelProto) -> onnx.ModelProto:
    """``cast_frames_first``, and every conditional's branches read the float32 copy of a uint8 input too (in place;
    a Shape keeps the uint8): what keeping the resize's pass order as an ``If`` needs (segmentation, pose), since
    its branches lay the uint8 frame out before their Cast.

    Not for depth: TensorRT for RTX 1.7.1.116's builder segfaults on its keep-aspect resize as an If (see above).
    Segmentation's and pose's fixed-size resizes build as Ifs, and then hold one pass order's intermediates,
    not both (docs/measurements.md, "Segmentation's activation on TensorRT for RTX")."""
    cast_frames_first(model)
    graph = model.graph
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        name = value.name
        cast = next((n for n in graph.node if n.name == f"cast_first/{name}"), None)
        if cast is None:
            float32 = TensorProto.FLOAT
            cast = helper.make_node("Cast", [name], [f"{name}/float32"], name=f"cast_first/{name}", to=float32)
            graph.node.insert(0, cast)
        for body in (b for node in graph.node for sub in subgraphs(node) for b in bodies(sub)):
            _read_float_copy(body, name, cast.output[0])
    return model


def _read_float_copy(body: onnx.GraphProto, name: str, copy: str) -> None:
    """In one branch, every reader of ``name`` but a Shape reads ``copy`` (and no value info says uint8)."""
    kept = [v for v in body.value_info if v.type.tensor_type.elem_type != TensorProto.UINT8]
    del body.value_info[:]
    body.value_info.extend(kept)
    for node in body.node:
        if node.op_type != "Shape":
            node.input[:] = [copy if n == name else n for n in node.input]


def _cast_first(graph: onnx.GraphProto, name: str) -> None:
    """Cast the uint8 input ``name`` to float32 before each data movement that reads it on its way to a
    Cast to float32 (or a Shape); any other reader keeps the uint8 (TensorRT's parser then names it)."""
    read_by = readers(graph)
    cast = helper.make_node("Cast", [name], [f"{name}/float32"], name=f"cast_first/{name}", to=TensorProto.FLOAT)
    stale: set[str] = set()
    for first in read_by.get(name, []):
        moved = _moves_to_a_cast(first, name, read_by)
        if moved:
            first.input[0] = cast.output[0]
            stale.update(out for node in moved for out in node.output)
    if stale:
        kept = [v for v in graph.value_info if v.name not in stale]  # their value infos said uint8
        del graph.value_info[:]
        graph.value_info.extend(kept)
        graph.node.insert(0, cast)


def _moves_to_a_cast(first: onnx.NodeProto, name: str, read_by: dict) -> list[onnx.NodeProto]:
    """``first`` and the data movements after it, if they lead only to Casts to float32 or Shapes; else []."""
    if first.op_type not in _MOVES or first.input[0] != name:
        return []
    moved, stack = [first], list(first.output)
    while stack:
        for node in read_by.get(stack.pop(), []):
            if node.op_type in ("Shape", "Size") or cast_to(node) == TensorProto.FLOAT:
                continue
            if node.op_type not in _MOVES or node.input[0] not in {o for m in moved for o in m.output}:
                return []  # computes on uint8, or reads it as indices
            moved.append(node)
            stack.extend(node.output)
    return moved


def _shape_only(graph: onnx.GraphProto):
    """A test: does this value follow from shapes and constants alone (no graph input's values)?"""
    producer = producers(graph)
    constants = {init.name for init in graph.initializer}
    known: dict[str, bool] = {}

    def test(name: str) -> bool:
        if name not in known:
            known[name] = _reaches_no_values(name, producer, constants, known)
        return known[name]

    return test


def _reaches_no_values(name: str, producer: dict, constants: set, known: dict) -> bool:
    """Walk ``name``'s ancestry (iteratively: a value's may lead back through the whole model)."""
    stack, visited = [name], set()
    while stack:
        value = stack.pop()
        if not value or value in constants or value in visited or known.get(value) is True:
            continue
        node = producer.get(value)
        if known.get(value) is False or node is None or node.op_type in SUBGRAPH_OPS:  # a graph input's values
            return False
        visited.add(value)
        if node.op_type not in _SHAPE_OPS:
            stack.extend(node.input)
    known.update(dict.fromkeys(visited, True))
    return True


def _inline_as_select(graph: onnx.GraphProto, index: int) -> None:
    """Replace ``graph.node[index]`` (an If) by both of its branches' nodes and a Where per output."""
    node = graph.node[index]
    then, other = branch(node, "then_branch"), branch(node, "else_branch")
    inlined = [*then.node, *other.node]
    inlined += [
        helper.make_node("Where", [node.input[0], t.name, e.name], [out], name=f"select/{out}")
        for t, e, out in zip(then.output, other.output, node.output)
    ]
    del graph.node[index]
    for offset, inner in enumerate(inlined):
        graph.node.insert(index + offset, inner)
