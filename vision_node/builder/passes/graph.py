"""What every pass and check reads off an ONNX graph: who makes a value, who reads it, subgraphs, attributes.

Plain functions over onnx's own protobufs, shared by ``selects``, ``gated`` and
``trt_rules`` (each once had its own copy). Kept hand-written rather than onnx-ir or
onnx-graphsurgeon: the passes need only these few maps over the protos they load and save, and a
second graph model would be one more dependency and one more conversion on each side.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Value name -> the node of ``graph`` (not of its subgraphs) that makes it."""
    return {out: node for node in graph.node for out in node.output}


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> the nodes of ``graph`` that take it as an input (subgraphs' reads not counted)."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for value in node.input:
            found.setdefault(value, []).append(node)
    return found


def deep_readers(graph: onnx.GraphProto) -> dict[str, set[int]]:
    """Value name -> indices of ``graph``'s nodes that read it, directly or from inside their subgraphs."""
    found: dict[str, set[int]] = {}
    for index, node in enumerate(graph.node):
        for name in reads(node):
            found.setdefault(name, set()).add(index)
    return found


def reads(node: onnx.NodeProto) -> set[str]:
    """Every value ``node`` reads: its inputs, and whatever its subgraphs read or pass out (outer ones included)."""
    names = set(node.input)
    for sub in subgraphs(node):
        for inner in sub.node:
            names |= reads(inner)
        names |= {v.name for v in sub.output}
    return names


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies a node carries (an If's branches, a Loop's or Scan's body)."""
    found: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def bodies(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every If/Loop/Scan body in it, nested ones included."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from bodies(sub)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, nested bodies' included."""
    for body in bodies(graph):
        yield from body.node


def branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    """An If's ``then_branch`` or ``else_branch``."""
    return next(a.g for a in node.attribute if a.name == name)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default``."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def cast_to(node: onnx.NodeProto) -> int | None:
    """The element type a Cast makes (``TensorProto.FLOAT``...); None for any other node."""
    return attribute(node, "to") if node.op_type == "Cast" else None


def constant_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The main graph's stored tensors: its initializers and its Constant nodes' values."""
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant":
            yield from (a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    return int(numpy_helper.to_array(tensor).nbytes)


def tensor_elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


FLOAT_TYPES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


def copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """``graph``'s nodes become ``nodes``, in that order."""
    del graph.node[:]
    graph.node.extend(nodes)
