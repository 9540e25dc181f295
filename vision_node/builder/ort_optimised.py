"""The graph as ONNX Runtime optimises it, written at build time so that a node's start does not redo it.

ONNX Runtime spends most of a session's creation on graph optimisation (fusions, constant folding):
on the demo build, segmentation's session took 0.9 s from the exported graph and 0.2 s from this copy.
The copy is optimised at the *extended* level, whose fusions are ONNX Runtime's CPU kernels but not this
CPU's: the node loads it with every optimisation on, which adds only the layout ones for its own CPU
(a copy saved at that level would be bound to the build machine's instruction set). It is tied to the
ONNX Runtime version that wrote it (its fused operators are that version's): a node with another
version loads the exported graph instead, and says so.

Before ONNX Runtime optimises it, its recipe's ``onnxruntime_passes`` rewrite it (none does today: segmentation's
chain of ``If``s, which ONNX Runtime copied through when skipped, is gone with its dense fold of whole frames).
The build verifies the copy against transformers like the exported graph (``pipeline``): a copy that
disagrees fails the build, naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from ..manifest import OptimisedCopy

SUFFIX = ".ort.onnx"
LEVEL = "extended"


def name_for(graph: Path) -> Path:
    """``depth-518x518-aspect.onnx`` -> ``depth-518x518-aspect.ort.onnx``."""
    return graph.with_name(graph.name.removesuffix(".onnx") + SUFFIX)


def write(graph: Path, target: Path | None = None, passes: Iterable[Callable[[onnx.ModelProto], Any]] = ()) -> None:
    """Save ``graph`` rewritten by ``passes`` (its recipe's), then as ONNX Runtime
    optimises it, to ``target`` (default: ``name_for(graph)``)."""
    import onnxruntime as ort  # the cpu extra; only the build writes the copy

    target = target or name_for(graph)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    source: str | bytes = str(graph)
    if passes:
        model = onnx.load(str(graph))
        for rewrite in passes:
            rewrite(model)
        source = model.SerializeToString()
        del model
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def record(target: Path) -> OptimisedCopy:
    """The manifest's record of the copy at ``target`` (path, sha256, bytes, version, level)."""
    return OptimisedCopy.of(target, version=metadata.version("onnxruntime"), level=LEVEL)
