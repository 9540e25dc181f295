"""The TensorRT variant of a graph (``<graph>.trt.onnx``): the exported graph as TensorRT's parser takes it.

Its recipe's ``tensorrt_passes`` (``passes.selects``) rewrite a copy of the exported graph: the
conditionals TensorRT for RTX does not build as selects, the uint8 frame cast before the data movements
that lead it to its Cast. The file is written beside the graph, verified against transformers in ONNX
Runtime like the graph itself, checked against TensorRT's rules (``trt_rules``) as it is, hashed in the
manifest, and it is what every TensorRT build reads (``tensorrt.build_plan`` parses the file): no
TensorRT ever sees a graph that exists only in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import onnx

SUFFIX = ".trt.onnx"


def name_for(graph: Path) -> Path:
    """``depth-518x518-aspect.onnx`` -> ``depth-518x518-aspect.trt.onnx`` (fp16: ``....fp16.trt.onnx``)."""
    return graph.with_name(graph.name.removesuffix(".onnx") + SUFFIX)


def write(source: Path, target: Path, passes: Iterable[Callable[[onnx.ModelProto], Any]]) -> None:
    """``source`` rewritten by ``passes`` (in order), saved as ``target``."""
    model = onnx.load(str(source))
    for rewrite in passes:
        rewrite(model)
    onnx.save(model, str(target))
