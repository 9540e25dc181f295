"""A chain of ONNX ``If``s on one condition, each passing the last one's values through when not taken, as one ``If``.

Segmentation's dense argmax fold (``argmax._dense_fallback``) is one ``If`` per chunk of classes, each
taking the running (score, class) pair from the one before. TensorRT for RTX needs that form: it
fails on a Loop, and one conditional around every chunk cost it 1,031 MiB of activation memory at
1080p bounds against 581. ONNX Runtime, though, copies the pair out of every skipped branch (its
``Identity`` outputs): 19 × two frame-sized copies, ~50 ms of a 1080p frame on this CPU. So the copy
ONNX Runtime loads (``ort_optimised``) has the chain merged: one ``If`` whose then-branch runs every
chunk in turn, whose else-branch passes the first pair through once. Same operators, same order.

A workaround, seen on ONNX Runtime 1.32.0 (19 skipped links at 1080p: ~26 ms against ~2 ms merged). Remove
when a skipped branch passes its inputs through without copying: tests/test_workarounds.py measures it and
fails then (and when TensorRT for RTX builds a Loop, the chain itself can go: ``argmax``).
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto, helper

from .graph import branch, cast_to, copy_node, deep_readers, has_subgraph, producers, replace_nodes


def merge(model: onnx.ModelProto) -> int:
    """Merge every chain in ``model``'s main graph (in place); the number of Ifs removed."""
    graph = model.graph
    names = Counter(n.name for n in graph.node)
    removed, conditions = 0, set[str]()  # the removed links' conditions: their Casts may have no reader left
    for chain in _chains(graph):
        if any(not link.name or names[link.name] > 1 for link in chain):
            continue  # merged by name below: leave an unnamed chain as it is
        removed += len(chain) - 1
        conditions.update(link.input[0] for link in chain[:-1])
        _merge_chain(graph, chain)
    _drop_unread_casts(graph, conditions)
    return removed


def _chains(graph: onnx.GraphProto) -> list[list[onnx.NodeProto]]:
    """Runs of Ifs where each next one is on the same condition and passes the previous one's outputs through."""
    readers = deep_readers(graph)
    producer = producers(graph)
    chains: list[list[int]] = []
    current: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "If":
            continue
        if current and _continues(graph.node[current[-1]], node, index, producer, readers):
            current.append(index)
            continue
        if len(current) > 1:
            chains.append(current)
        current = [index]
    if len(current) > 1:
        chains.append(current)
    return [[graph.node[i] for i in chain] for chain in chains]


def _continues(last, node, index: int, producer, readers) -> bool:
    """Does ``node`` take ``last``'s outputs as its state, on the same condition, and nothing else read them?"""
    if _condition(last, producer) != _condition(node, producer):
        return False
    passed = _passed_through(branch(node, "else_branch"))
    if passed is None or not set(passed.values()) <= set(last.output):
        return False
    if _passed_through(branch(last, "else_branch")) is None:  # the chain's first
        return False
    if any(has_subgraph(n) for n in branch(node, "then_branch").node):
        return False
    return all(readers.get(out, set()) == {index} for out in last.output)


def _passed_through(branch: onnx.GraphProto) -> dict[str, str] | None:
    """Each output of a branch made of Identities only -> the outer value it passes; None for any other branch."""
    passed = {n.output[0]: n.input[0] for n in branch.node if n.op_type == "Identity"}
    if len(branch.node) != len(passed) or any(v.name not in passed for v in branch.output):
        return None
    return passed


def _condition(node, producer) -> str:
    """The value an If decides on: its condition, or what that is a bool Cast of."""
    cast = producer.get(node.input[0])
    if cast is not None and cast_to(cast) == TensorProto.BOOL:
        return cast.input[0]
    return node.input[0]


def _merge_chain(graph: onnx.GraphProto, chain: list[onnx.NodeProto]) -> None:
    first, last = chain[0], chain[-1]
    nodes, state = [], None  # state: each chain link's outputs -> the then-branch values that compute them
    for link in chain:
        then = branch(link, "then_branch")
        for inner in then.node:
            copy = copy_node(inner)
            if state:
                copy.input[:] = [state.get(name, name) for name in inner.input]
            nodes.append(copy)
        state = {out: value.name for out, value in zip(link.output, then.output)}
    # The else-branch: the first link's inputs, passed through to the outputs the last link still has.
    # Every link's else-branch passes its inputs through: _chains took only such links (_continues).
    first_else = branch(first, "else_branch")
    passed = _passed_through(first_else)
    assert passed is not None
    origin = {out: passed[v.name] for out, v in zip(first.output, first_else.output)}
    for link in chain[1:]:
        other = branch(link, "else_branch")
        passed = _passed_through(other)
        assert passed is not None
        origin = {out: origin[passed[v.name]] for out, v in zip(link.output, other.output)}
    then = branch(last, "then_branch")
    values = [
        helper.make_tensor_value_info(f"merged_else/{out}", v.type.tensor_type.elem_type, None)
        for out, v in zip(last.output, then.output)
    ]
    identities = [helper.make_node("Identity", [origin[out]], [value.name]) for out, value in zip(last.output, values)]
    merged_then = helper.make_graph(nodes, "merged_then", [], list(then.output))
    other = helper.make_graph(identities, "merged_else", [], values)
    merged = helper.make_node(
        "If", [last.input[0]], list(last.output), name=f"merged/{last.name}", then_branch=merged_then, else_branch=other
    )
    names = {link.name for link in chain}
    kept = [n for n in graph.node if n.op_type != "If" or n.name not in names]
    at = next(i for i, n in enumerate(graph.node) if n.op_type == "If" and n.name == last.name)
    at -= len(graph.node) - len(kept) - 1  # the links before it are gone
    kept.insert(at, merged)
    replace_nodes(graph, kept)


def _drop_unread_casts(graph: onnx.GraphProto, conditions: set[str]) -> None:
    """The Casts that made ``conditions``, where nothing reads them any more."""
    readers = deep_readers(graph)
    outputs = {v.name for v in graph.output}
    dropped = {o for o in conditions if not readers.get(o) and o not in outputs}
    replace_nodes(graph, [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in dropped)])
