"""The rewrites of exported graphs for one runtime: ONNX Runtime's optimised copy, selects (TensorRT's).

Each rewritten graph must give the same outputs as the exported one, in ONNX Runtime, down to the bit,
on both sides of every condition it touches.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from tests.conftest import TINY_BOUNDS, TINY_ROLES
from tests.test_ops import TIERS
from vision_node import samples
from vision_node.builder import argmax, export, graphs, ort_optimised, pil_resize, weights
from vision_node.builder.passes.graph import all_nodes, branch
from vision_node.builder.recipes import recipe_for
from vision_node.builder.specs import OUTPUTS
from vision_node.sizing import Sizing


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(node.op_type == op for node in model.graph.node)


def _chain(links: int) -> onnx.ModelProto:
    """Ifs on data: x, flag -> each link, where flag: state = state * 2 + link; else the state passes through."""
    nodes = [helper.make_node("Cast", ["flag"], ["taken"], to=TensorProto.BOOL)]
    state = "x"
    for i in range(links):
        step = helper.make_tensor(f"step{i}", TensorProto.FLOAT, [], [float(i + 1)])
        then = helper.make_graph(
            [
                helper.make_node("Constant", [], [f"c{i}"], value=step),
                helper.make_node("Mul", [state, "two"], [f"m{i}"]),
                helper.make_node("Add", [f"m{i}", f"c{i}"], [f"t{i}"]),
            ],
            f"then{i}",
            [],
            [helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, None)],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", [state], [f"e{i}"])],
            f"else{i}",
            [],
            [helper.make_tensor_value_info(f"e{i}", TensorProto.FLOAT, None)],
        )
        nodes.append(helper.make_node("If", ["taken"], [f"s{i}"], name=f"link{i}", then_branch=then, else_branch=other))
        state = f"s{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("flag", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info(state, TensorProto.FLOAT, None)],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fallback_blocks_ran(copy: Path, frames: np.ndarray) -> int:
    """How many of the argmax fallback's Ifs (each scoring every class over a block of cells: its then-branch has
    the ArgMax) ran their then-branch in ONNX Runtime on ``frames`` (its profile says)."""
    model = onnx.load(str(copy))
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    blocks = [n for n in ifs if any(m.op_type == "ArgMax" for m in branch(n, "then_branch").node)]
    assert blocks, "no fallback blocks in the graph"
    then = {m.name: b.name for b in blocks for m in branch(b, "then_branch").node}
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(copy.parent / "profile")
    session = ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
    session.run(None, {"frames": frames})
    events = json.loads(Path(session.end_profiling()).read_text())
    ran = {then.get(e["name"].removesuffix("_kernel_time")) for e in events if e.get("cat") == "Node"}
    return len(ran - {None})


@pytest.mark.parametrize("tiers", ["shipped", "overflowing"])
def test_onnx_runtimes_copy_of_the_segmentation_graph_runs_fallback_blocks_only_where_the_tiers_overflow(
    tiers, tmp_path, monkeypatch
):
    # Shipped tiers: these frames fit them (no block runs); tiers of a few cells: blocks run.
    monkeypatch.setattr(argmax, "ARGMAX_TIERS", TIERS[tiers])
    loaded = weights.load_demo(TINY_ROLES["segmentation"])
    graph = graphs.SegmentationGraph(
        loaded.model, loaded.processor, Sizing.of_processor(loaded.processor), TINY_BOUNDS, 8
    )
    exported = tmp_path / "segmentation.onnx"
    export.export(graph, OUTPUTS["segmentation"], exported, example_hw=(128, 128))
    ort_optimised.write(exported)  # as segmentation's recipe writes it
    copy = ort_optimised.name_for(exported)
    plain = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    optimised = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    frames = samples.frames(300, 500, batch=2)
    assert np.array_equal(optimised.run(None, {"frames": frames})[0], plain.run(None, {"frames": frames})[0])
    blocks = sum(n.op_type == "If" for n in onnx.load(str(copy)).graph.node) - 1  # the resize's pass order
    ran = _fallback_blocks_ran(copy, frames)
    assert blocks >= 2 and ((ran == 0) if tiers == "shipped" else (0 < ran <= blocks)), (ran, blocks)


def _resize_graph(tmp_path) -> onnx.ModelProto:
    class Resize(torch.nn.Module):
        def forward(self, frames):
            return pil_resize.resize_like_pil(frames, (96, 96), "bicubic")

    path = tmp_path / "resize.onnx"
    axes = {"frames": {0: "batch", 1: "height", 2: "width"}}
    torch.onnx.export(
        Resize(),
        (torch.zeros((1, 120, 160, 3), dtype=torch.uint8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["frames"],
        output_names=["x"],
        dynamic_axes=axes,
    )
    return onnx.load(str(path))


def _as_tensorrt_is_given_it(model: onnx.ModelProto, capability: str) -> onnx.ModelProto:
    """``model`` rewritten by ``capability``'s recipe's TensorRT passes, as its ``.trt.onnx`` is written."""
    for rewrite in recipe_for(capability).tensorrt_passes:
        rewrite(model)
    return model


def test_for_depth_on_tensorrt_the_resize_order_becomes_a_select_with_the_same_results(tmp_path):
    exported = _resize_graph(tmp_path)
    selected = _as_tensorrt_is_given_it(_resize_graph(tmp_path), "depth")
    assert _count(exported, "If") == 1 and _count(selected, "If") == 0
    assert [n.op_type for n in selected.graph.node if n.name.startswith("select/")] == ["Where"]
    for h, w in [(120, 160), (400, 110), (50, 70)]:  # horizontal first, vertical first (portrait), upscaling
        feeds = {"frames": samples.frames(h, w)}
        assert np.array_equal(_session(selected).run(None, feeds)[0], _session(exported).run(None, feeds)[0])


@pytest.mark.parametrize("capability", ["segmentation", "pose"])
def test_for_segmentation_and_pose_the_resize_order_stays_an_if_reading_the_float_frame_with_the_same_results(
    capability, tmp_path
):
    exported = _resize_graph(tmp_path)
    kept = _as_tensorrt_is_given_it(_resize_graph(tmp_path), capability)
    assert _count(kept, "If") == 1 and _count(kept, "Where") == _count(exported, "Where")
    uint8_readers = [  # TensorRT takes the uint8 frame only into a Cast or a Shape, in a branch too
        n.op_type for n in all_nodes(kept.graph) if "frames" in n.input and n.op_type not in ("Cast", "Shape")
    ]
    assert uint8_readers == []
    for h, w in [(120, 160), (400, 110), (50, 70)]:  # horizontal first, vertical first (portrait), upscaling
        feeds = {"frames": samples.frames(h, w)}
        assert np.array_equal(_session(kept).run(None, feeds)[0], _session(exported).run(None, feeds)[0])


@pytest.mark.parametrize("capability", ["depth", "segmentation", "pose"])
def test_for_tensorrt_an_if_on_data_stays(capability):
    model = _chain(2)  # decided by the value of the input flag, not by a shape
    assert _count(_as_tensorrt_is_given_it(model, capability), "If") == 2


@pytest.mark.parametrize("which", ["ort", "trt"])
def test_a_runtimes_copy_that_disagrees_with_transformers_fails_the_build_naming_it(which, tmp_path, monkeypatch):
    """ONNX Runtime's optimised copy (what CPU nodes serve) and the TensorRT variant (what TensorRT builds from) are
    verified on the same frames, against the same reference and tolerances, as the exported graph: here one of them
    has its depth scaled by 1.5 after it is written, the graph itself agrees, and the build refuses all three."""
    from tests.conftest import tiny_plan
    from vision_node.builder import pipeline, tensorrt_onnx
    from vision_node.builder.errors import BuildError

    module = ort_optimised if which == "ort" else tensorrt_onnx
    real_write = module.write

    def write_then_scale(source, target=None, passes=()):
        real_write(source, target, passes)
        model = onnx.load(str(target))
        producer = next(n for n in model.graph.node if "depth" in n.output)
        producer.output[list(producer.output).index("depth")] = "depth/unscaled"
        model.graph.initializer.append(helper.make_tensor("depth/scale", TensorProto.FLOAT, [], [1.5]))
        model.graph.node.append(helper.make_node("Mul", ["depth/unscaled", "depth/scale"], ["depth"]))
        onnx.save(model, str(target))

    monkeypatch.setattr(module, "write", write_then_scale)
    plan = tiny_plan(tmp_path, verify_sizes=((90, 160),), fp16=False, measure_memory=False)
    with pytest.raises(BuildError) as refused:
        pipeline.build_capability("depth", plan)
    message = str(refused.value)
    name = f"depth-98x98-aspect.{which}.onnx"
    assert f"{name} disagrees with transformers where depth-98x98-aspect.onnx agrees" in message
    assert f"{name} 1x90x160: max_rel_err" in message
    assert list(tmp_path.iterdir()) == []  # nothing of the graph is kept
