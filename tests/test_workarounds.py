"""Each workaround for a runtime's behaviour, against the runtime installed here (builder/README.md's table).

A test per workaround that fails once the runtime's behaviour is gone: its message says what can go. The
TensorRT builds run in a fresh process: the behaviour once reported for TensorRT for RTX was a crash.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from vision_node.builder.passes import selects
from vision_node.builder.passes.gated import SKIP_NODE

RTX = (sys.platform.startswith("linux") and platform.machine() == "x86_64") or sys.platform == "win32"
needs_rtx = pytest.mark.skipif(not RTX, reason="TensorRT for RTX has no build for this platform")

# Builds an ONNX file with TensorRT for RTX (1 GiB of workspace, the tiny bounds' profile) and prints the outcome.
_BUILD = """
import json, sys
from pathlib import Path
import tensorrt_rtx as trt
from tests.conftest import TINY_BOUNDS
from vision_node.builder import engine_files
from vision_node.builder.errors import BuildError
from vision_node.builder.tensorrt import build_plan
from vision_node.runtime.flavours import TENSORRT_RTX
path, frames = Path(sys.argv[1]), json.loads(sys.argv[2])
shapes = {"frames": [tuple(s) for s in frames]} if frames else engine_files.profile_shapes(TINY_BOUNDS, 1)
try:
    plan, memory = build_plan(trt, TENSORRT_RTX, path, shapes, {"workspace_gib": 1})
    print(json.dumps({"built": True, "version": trt.__version__, "bytes": len(plan), "memory": memory}))
except BuildError as err:
    print(json.dumps({"built": False, "version": trt.__version__, "error": str(err)}))
"""


def _build_with_tensorrt_rtx(path: Path, frames=None) -> dict:
    """What TensorRT for RTX's builder makes of the file: built (and its figures) or not (and why); a crash too."""
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(path), json.dumps(frames)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=600,
    )
    if done.returncode != 0:
        return {"built": False, "crashed": done.returncode, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------ segmentation's activation: every If output has a buffer of its own


@needs_rtx
def test_tensorrt_for_rtx_still_gives_every_if_output_a_buffer_of_its_own(tmp_path):
    """Why argmax.py's fallback Ifs each return one block of cells, not a frame (docs/measurements.md): seen on
    1.7.1.116, five Ifs in a row each passing a 1080p float map on cost 58.1 MB against 17.4 for one, while ten
    layers inside one If cost no more than one (the fallback as one If per chunk of classes, each passing a frame's
    scores on, cost 577 MB). When this fails, a chain's outputs share memory: a fallback of fewer Ifs may fit."""
    from benchmarks.trt_conditionals import MAX_FRAME, chain_of_ifs

    frames = [[1, 64, 64, 3], [1, 720, 1280, 3], [1, *MAX_FRAME, 3]]
    figures = {}
    for count, depth in ((1, 1), (5, 1), (1, 10)):
        path = tmp_path / f"chain-{count}-{depth}.onnx"
        onnx.save(chain_of_ifs(count, depth), str(path))
        built = _build_with_tensorrt_rtx(path, frames)
        assert built["built"], built
        figures[count, depth] = built["memory"]["activation_bytes"]
    frame_map = MAX_FRAME[0] * MAX_FRAME[1] * 4  # one float map of the largest frame
    assert figures[5, 1] - figures[1, 1] >= 3.5 * frame_map, (built["version"], figures)  # ~4 more maps: 4 more Ifs
    assert figures[1, 10] <= figures[1, 1] + frame_map, (built["version"], figures)  # inside one If, layers share


# ---------------------------------------------------------------- argmax.py: one If per block of cells, not a Loop


def _loop_fold(chunks: int = 4, chunk: int = 8) -> onnx.ModelProto:
    """argmax's dense fold as an ONNX Loop: per chunk of classes, fold its max into a running (score, class)."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["i", "chunk"], ["start"]),
            helper.make_node("Add", ["start", "chunk"], ["end"]),
            helper.make_node("Slice", ["frames", "start", "end", "axis1"], ["part"]),
            helper.make_node("ReduceMax", ["part"], ["score"], keepdims=0, axes=[1]),
            helper.make_node("ArgMax", ["part"], ["index"], axis=1, keepdims=0),
            helper.make_node("Cast", ["index"], ["index_f"], to=f),
            helper.make_node("Cast", ["start"], ["start_f"], to=f),
            helper.make_node("Add", ["index_f", "start_f"], ["candidate"]),
            helper.make_node("Greater", ["score", "best_in"], ["better"]),
            helper.make_node("Where", ["better", "score", "best_in"], ["best_out"]),
            helper.make_node("Where", ["better", "candidate", "class_in"], ["class_out"]),
            helper.make_node("Identity", ["go_in"], ["go_out"]),
        ],
        "fold",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("best_in", f, ["n", "h", "w"]),
            helper.make_tensor_value_info("class_in", f, ["n", "h", "w"]),
        ],
        [
            helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("best_out", f, ["n", "h", "w"]),
            helper.make_tensor_value_info("class_out", f, ["n", "h", "w"]),
        ],
    )
    nodes = [
        helper.make_node("ReduceMin", ["frames"], ["lowest"], keepdims=0, axes=[1]),
        helper.make_node("Sub", ["lowest", "one"], ["first_best"]),
        helper.make_node("Mul", ["lowest", "zero"], ["first_class"]),
        helper.make_node("Loop", ["trips", "go", "first_best", "first_class"], ["best", "classes"], body=body),
    ]
    constants = [
        helper.make_tensor("trips", TensorProto.INT64, [], [chunks]),
        helper.make_tensor("go", TensorProto.BOOL, [], [True]),
        helper.make_tensor("chunk", TensorProto.INT64, [1], [chunk]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one", f, [], [1.0]),
        helper.make_tensor("zero", f, [], [0.0]),
    ]
    scores = helper.make_tensor_value_info("frames", f, ["n", chunks * chunk, "h", "w"])
    graph = helper.make_graph(
        nodes, "loop_fold", [scores], [helper.make_tensor_value_info("classes", f, None)], constants
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@needs_rtx
def test_tensorrt_for_rtx_still_cannot_build_the_dense_fold_as_a_loop(tmp_path):
    """argmax.py unrolls its fallback into one If per block of cells (130 at 128x128 logits: a 195 MB plan built in
    3 minutes) because TensorRT for RTX 1.7.1 fails on a Loop (an internal error in makeScopeNodesContiguous). The
    Loop here is a dense fold over chunks of classes, and right (ONNX Runtime's argmax)."""
    model = _loop_fold()
    scores = np.random.default_rng(0).normal(size=(1, 32, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"frames": scores})[0], scores.argmax(axis=1).astype(np.float32))
    path = tmp_path / "loop_fold.onnx"
    onnx.save(model, str(path))
    outcome = _build_with_tensorrt_rtx(path, [[1, 32, 8, 8], [1, 32, 64, 64], [1, 32, 128, 128]])
    assert not outcome["built"], (
        f"TensorRT for RTX {outcome['version']} builds a Loop: argmax.py's fallback blocks can be one Loop (a smaller "
        "plan, a faster build); measure its activation memory at 1080p bounds first (python -m "
        "benchmarks.trt_conditionals argmax: the unrolled blocks cost ~20 MB over the tiers)"
    )


# ------------------------------ selects.py: depth's resize and the pose gate as selects, for TensorRT


@needs_rtx
def test_tensorrt_for_rtx_still_crashes_building_the_keep_aspect_resize_as_an_if(tmp_path):
    """selects.shape_decided_ifs_as_selects turns the resize's pass-order If into a select because TensorRT for
    RTX's builder crashes on it (1.7.1.116: a segfault). Here the tiny depth model's preprocessing alone (Pillow's
    resize to the processor's keep-aspect size, its pass order under an If, at the default 1080p bounds) with the
    frame cast first inside the branches too, so that only the If differs from what the build hands TensorRT."""
    import torch

    from tests.conftest import TINY_ROLES
    from vision_node.builder import graphs, weights
    from vision_node.builder.specs import ShapeBounds
    from vision_node.sizing import Sizing

    processor = weights.load_demo(TINY_ROLES["depth"]).processor
    preprocess = graphs._Preprocess(processor, Sizing.of_processor(processor), ShapeBounds()).eval()
    exported = tmp_path / "resize.onnx"
    torch.onnx.export(
        preprocess,
        (torch.zeros((1, 512, 512, 3), dtype=torch.uint8),),
        str(exported),
        dynamo=False,
        opset_version=17,
        input_names=["frames"],
        output_names=["pixels"],
        dynamic_axes={"frames": {0: "batch", 1: "height", 2: "width"}},
    )
    model = selects.cast_frames_first_in_branches(onnx.load(str(exported)))
    assert [n.op_type for n in model.graph.node].count("If") == 1  # the pass order
    kept = tmp_path / "resize.if.onnx"
    onnx.save(model, str(kept))
    frames = np.zeros((1, 300, 451, 3), np.uint8)
    plain = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})
    assert np.array_equal(
        ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})[0], plain[0]
    )  # the same graph for ONNX Runtime
    outcome = _build_with_tensorrt_rtx(kept, [[1, 64, 64, 3], [1, 512, 512, 3], [1, 1080, 1920, 3]])
    assert not outcome["built"], (
        f"TensorRT for RTX {outcome['version']} builds the resize's pass order as an If: "
        "selects.shape_decided_ifs_as_selects can go (depth's recipe can take selects.cast_frames_first_in_branches "
        "as segmentation's and pose's do)"
    )


@needs_rtx
def test_tensorrt_for_rtx_builds_the_pose_gate_as_an_if(tiny_build, tmp_path):
    """selects.gate_as_select turns the pose gate's If (the keypoint model on a data-dependent count of boxes) into
    a select for the same crash reported of TensorRT for RTX 1.7. The installed builder (1.7.1.116) builds the gate
    as an If: this tiny graph, and the demo build's real pose graph at 1080p bounds. So the removal condition in
    builder/README.md is met for the ahead-of-time build; the select stays until an RTX card runs such an engine
    (its just-in-time build, never tried) and TensorRT 10 builds it on a GPU. This fails if the builder refuses or
    crashes on the gate again: the select is then needed whatever a card says."""
    out, entries = tiny_build
    pose = onnx.load(str(out / entries["pose"]["graphs"][0]["path"]))
    selects.cast_frames_first_in_branches(pose)  # the recipe's passes but gate_as_select
    ifs = [n.name for n in pose.graph.node if n.op_type == "If"]
    assert SKIP_NODE in ifs and len(ifs) == 2, ifs  # the gate, and the detector resize's pass order
    kept = tmp_path / "pose.gate-if.onnx"
    onnx.save(pose, str(kept))
    outcome = _build_with_tensorrt_rtx(kept)
    assert outcome["built"], f"TensorRT for RTX refuses the pose gate's If again (gate_as_select stays): {outcome}"
