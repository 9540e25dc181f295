"""A real ONNX graph whose cost grows with the frame's pixels: one long ONNX Runtime run, to be stopped.

The tiny build's frames all run in milliseconds, and the real architectures' worst frames are
what issue 21 makes cheap, so neither can be relied on for a run that outlasts a deadline. This
graph can: a ``Loop`` multiplies a 512×512 matrix once per 256 pixels of the frame, so a 64×64
frame takes 16 products (70 ms on this 2-core machine) and a 720×1280 one 3600 (10-14 s here,
still about a second on a machine ten times faster). Its outputs: the
frame's first pixel (a run after a stopped one still reads its own input) and the product (an
output, so that no optimiser may drop the loop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vision_node.contract import FRAME_INPUT, ShapeBounds
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend

PIXELS_PER_STEP = 256
SIZE = 512
OUTPUTS = (
    {"name": "first", "dtype": "uint8", "shape": ["batch", 3]},
    {"name": "product", "dtype": "float32", "shape": [SIZE, SIZE]},
)


def write(path: Path) -> Path:
    import onnx  # a build-time dependency, as in the build step
    from onnx import TensorProto, helper, numpy_helper

    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((SIZE, SIZE)))[0].astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_in", "rotation"], ["x_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
    )
    nodes = [
        helper.make_node("Shape", [FRAME_INPUT], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "three"], ["hw"]),
        helper.make_node("ReduceProd", ["hw"], ["pixels"], keepdims=0),
        helper.make_node("Div", ["pixels", "per_step"], ["steps"]),
        helper.make_node("Loop", ["steps", "true", "start"], ["product"], body=body),
        helper.make_node("Slice", [FRAME_INPUT, "zero2", "one2", "one_two"], ["corner"]),  # [N, 1, 1, 3]
        helper.make_node("Squeeze", ["corner", "one_two"], ["first"]),
    ]
    constants = {
        "one": np.array([1], np.int64),
        "three": np.array([3], np.int64),
        "per_step": np.array(PIXELS_PER_STEP),
        "true": np.array(True),
        "start": np.eye(SIZE, dtype=np.float32),
        "rotation": rotation,
        "zero2": np.array([0, 0], np.int64),
        "one2": np.array([1, 1], np.int64),
        "one_two": np.array([1, 2], np.int64),
    }
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info(FRAME_INPUT, TensorProto.UINT8, ["batch", "height", "width", 3])],
        [
            helper.make_tensor_value_info("first", TensorProto.UINT8, ["batch", 3]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def backend(path: Path, bounds: ShapeBounds, **options) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, OUTPUTS, bounds, **options)
