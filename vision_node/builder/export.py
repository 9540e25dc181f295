"""ONNX export of a fused graph, with its input and output dimensions checked afterwards."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from ..contract import FRAME_PARAMETERS
from ..manifest import TensorSpec
from .errors import BuildError
from .passes import gated
from .passes.graph import FLOAT_TYPES, constant_tensors, tensor_elements
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
    check of every dimension afterwards. A graph with a head and a tail (pose) is exported as
    both and joined with the tail under an ``If`` (``gated``).
    """
    graph.eval()  # the legacy exporter restores the wrapper's own mode: it must be eval
    parameters = tuple(getattr(graph, "PARAMETERS", ()))  # per-frame float32 [N] inputs after the frames
    example = (
        torch.zeros((1, *example_hw, 3), dtype=torch.uint8),
        *(torch.full((1,), FRAME_PARAMETERS[name]) for name in parameters),
    )
    inputs = (FRAME_INPUT, *parameters)
    dynamic_axes = {FRAME_INPUT: {0: "batch", 1: "height", 2: "width"}}
    dynamic_axes.update({name: {0: "batch"} for name in parameters})
    dynamic_axes.update({name: _DYNAMIC_OUTPUT_DIMS[name] for name in output_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about Python values; the dims are checked below
        if hasattr(graph, "tail"):
            _export_gated(graph, example, inputs, output_names, dynamic_axes, path)
        else:
            _trace(graph, example, inputs, output_names, dynamic_axes, path)
        fixed_shapes = [tuple(out.shape) for out in graph(*example)]
    pin_fixed_dims(path, dynamic_axes, dict(zip(output_names, fixed_shapes)))
    check_dims(path, dynamic_axes)


def _trace(module, example: tuple, inputs, outputs, dynamic_axes: dict, path: Path) -> None:
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=list(inputs),
        output_names=list(outputs),
        dynamic_axes={name: axes for name, axes in dynamic_axes.items() if name in (*inputs, *outputs)},
    )


def _export_gated(graph, example: tuple, inputs, output_names, dynamic_axes: dict, path: Path) -> None:
    """The head (every frame) and the tail (only when the head keeps something), joined into one graph."""
    head_outputs = (*graph.HEAD_OUTPUTS, *graph.TAIL_INPUTS, graph.SKIP_TAIL)
    tail_outputs = [name for name in output_names if name not in graph.HEAD_OUTPUTS]
    # The tail's inputs beside the frames vary in their second dim too (pose: the boxes kept).
    axes = {**dynamic_axes, **{name: {0: "batch", 1: f"{name}_count"} for name in graph.TAIL_INPUTS}}
    head_path, tail_path = path.with_name(path.name + ".head"), path.with_name(path.name + ".tail")
    try:
        _trace(graph.head, example, inputs, head_outputs, axes, head_path)
        kept = graph.head(*example)[len(graph.HEAD_OUTPUTS) : -1]  # what the tail takes, at the default parameters
        tail_example = (example[0], *kept)
        _trace(graph.tail, tail_example, (FRAME_INPUT, *graph.TAIL_INPUTS), tail_outputs, axes, tail_path)
        zero_shapes = {name: tuple(out.shape[1:]) for name, out in zip(tail_outputs, graph.tail(*tail_example))}
        joined = gated.join(onnx.load(str(head_path)), onnx.load(str(tail_path)), graph.SKIP_TAIL, zero_shapes)
        onnx.save(joined, str(path))
    finally:
        head_path.unlink(missing_ok=True)
        tail_path.unlink(missing_ok=True)


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


def io_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Names, dtypes and dims (ints or names) of the graph's inputs and outputs, for the manifest."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[TensorSpec]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            out.append(TensorSpec(name=v.name, dtype=dtype, shape=dims))
        return out

    return describe(model.graph.input), describe(model.graph.output)


def float_weights(path: Path) -> dict[str, int]:
    """How many float weights (initializers and constants) the graph stores in each precision."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for tensor in constant_tensors(model.graph):
        if tensor.data_type in FLOAT_TYPES:
            name = FLOAT_TYPES[tensor.data_type]
            counts[name] = counts.get(name, 0) + tensor_elements(tensor)
    return counts
