"""ONNX export of a fused graph, with its input and output dimensions checked afterwards."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from .errors import BuildError
from .specs import FRAME_INPUT

OPSET = 17  # LayerNormalization as one op (TensorRT keeps it in fp32-safe form); 18+ also works

# Output dims that follow the frames' batch, height and width; the rest are fixed.
_DYNAMIC_OUTPUT_DIMS = {
    "depth": {0: "batch", 1: "height", 2: "width"},
    "depth_min": {0: "batch"},
    "depth_max": {0: "batch"},
    "classes": {0: "batch", 1: "height", 2: "width"},
    "boxes": {0: "batch"},
    "box_scores": {0: "batch"},
    "keypoints": {0: "batch"},
    "keypoint_scores": {0: "batch"},
}


def export(graph: torch.nn.Module, output_names: tuple[str, ...], path: Path, example_hw: tuple[int, int]) -> None:
    """Trace ``graph`` with the TorchScript exporter (``dynamo=False``) and save it to ``path``.

    The dynamo exporter was measured to break Depth Anything at sizes other than the example
    and to turn named dynamic dimensions into static ones, hence the legacy exporter and the
    check of every dimension afterwards.
    """
    graph.eval()  # the legacy exporter restores the wrapper's own mode: it must be eval
    example = torch.zeros((1, *example_hw, 3), dtype=torch.uint8)
    dynamic_axes = {FRAME_INPUT: {0: "batch", 1: "height", 2: "width"}}
    dynamic_axes.update({name: _DYNAMIC_OUTPUT_DIMS[name] for name in output_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about Python values; the dims are checked below
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[FRAME_INPUT],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )
        fixed_shapes = [tuple(out.shape) for out in graph(example)]
    pin_fixed_dims(path, dynamic_axes, dict(zip(output_names, fixed_shapes)))
    check_dims(path, dynamic_axes)


def pin_fixed_dims(path: Path, dynamic_axes: dict[str, dict[int, str]], shapes: dict[str, tuple[int, ...]]) -> None:
    """Write the value of every output dimension that is not dynamic (e.g. pose's person slots K).

    The legacy exporter leaves some of them symbolic ("TopKbox_scores_dim_1"); a static value lets
    the server size its buffers from the manifest and TensorRT plan for it.
    """
    model = onnx.load(str(path))
    changed = False
    for value in model.graph.output:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis not in dynamic_axes.get(value.name, {}) and dim.dim_param:
                dim.dim_value = shapes[value.name][axis]  # a oneof: clears dim_param
                changed = True
    if changed:
        onnx.save(model, str(path))


def check_dims(path: Path, dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Fail when an exported input or output lost a dynamic dimension or its name."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    problems = []
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, name in dynamic_axes.get(value.name, {}).items():
            if axis >= len(dims) or dims[axis].dim_param != name:
                got = "missing" if axis >= len(dims) else (dims[axis].dim_param or dims[axis].dim_value)
                problems.append(f"{value.name}[{axis}] should be dynamic '{name}', is {got}")
        for axis, dim in enumerate(dims):
            if axis not in dynamic_axes.get(value.name, {}) and dim.dim_param:
                problems.append(f"{value.name}[{axis}] should be fixed, is '{dim.dim_param}'")
    if problems:
        raise BuildError(f"exported graph {path.name} has wrong dimensions: " + "; ".join(problems))


def io_signature(path: Path) -> dict[str, list[dict]]:
    """Names, dtypes and dims (ints or names) of the graph's inputs and outputs, for the manifest."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def float_weights(path: Path) -> dict[str, int]:
    """How many float weights (initializers and constants) the graph stores in each precision."""
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    counts: dict[str, int] = {}
    for tensor in tensors:
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            name = "float16" if tensor.data_type == onnx.TensorProto.FLOAT16 else "float32"
            counts[name] = counts.get(name, 0) + int(np.prod(tensor.dims, dtype=np.int64))
    return counts
