"""The graph as ONNX Runtime optimises it, written at build time so that a node's start does not redo it.

ONNX Runtime spends most of a session's creation on graph optimisation (fusions, constant folding):
on the demo build, segmentation's session took 0.9 s from the exported graph and 0.2 s from this copy.
The copy is optimised at the *extended* level, whose fusions are ONNX Runtime's CPU kernels but not this
CPU's: the node loads it with every optimisation on, which adds only the layout ones for its own CPU
(a copy saved at that level would be bound to the build machine's instruction set). It is tied to the
ONNX Runtime version that wrote it (its fused operators are that version's): a node with another
version loads the exported graph instead, and says so.

Before ONNX Runtime optimises it, chains of ``If``s on one condition are merged into one
(``merged_ifs``: segmentation's dense argmax fold), which ONNX Runtime does not do itself.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import onnx

from ..manifest import OptimisedCopy
from .passes import merged_ifs

SUFFIX = ".ort.onnx"
LEVEL = "extended"


def write(graph: Path) -> OptimisedCopy:
    """Save ``graph`` optimised beside it; its manifest record (path, sha256, bytes, version, level)."""
    import onnxruntime as ort  # the cpu extra; only the build writes the copy

    target = graph.with_name(graph.name.removesuffix(".onnx") + SUFFIX)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    model = onnx.load(str(graph))
    source = model.SerializeToString() if merged_ifs.merge(model) else str(graph)
    del model
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return OptimisedCopy.of(target, version=metadata.version("onnxruntime"), level=LEVEL)
