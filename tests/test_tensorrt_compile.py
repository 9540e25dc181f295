"""A real TensorRT builder on every graph: TensorRT for RTX compiles ahead of time on this CPU, no GPU.

TensorRT for RTX has TensorRT's ONNX parser and type rules (strongly typed, like TensorRT 11), so a
graph it refuses would be refused on users' GPUs too. Every graph the tests build, fp32 and fp16,
of all three capabilities, goes through its parser and builder here; executing the engines needs
an RTX card (``python -m vision_node selftest --backend tensorrt-rtx``).
"""

import json
import logging
import platform
import shutil
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from vision_node import manifest
from vision_node.builder import cli
from vision_node.builder import tensorrt as build_trt
from vision_node.builder.errors import BuildError
from vision_node.runtime.flavours import TENSORRT_RTX

# TensorRT for RTX ships for Linux x86-64 and Windows only. Elsewhere, nothing to run; here, a missing
# module is a failure (it is in the dev install), never a skip.
SUPPORTED = (sys.platform.startswith("linux") and platform.machine() == "x86_64") or sys.platform == "win32"
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="TensorRT for RTX has no build for this platform")


@pytest.fixture(scope="module")
def trt():
    import tensorrt_rtx  # a failure here fails the test: CI installs the trt-rtx extra

    return tensorrt_rtx


def test_every_graph_fp32_and_fp16_of_every_capability_compiles_within_1_gib(tiny_build, compiled_build, trt):
    engines, rows = compiled_build  # compile_check, then memory.record_compile_check (conftest)
    graphs = {(r["capability"], r["precision"]) for r in rows}
    assert graphs == {(c, p) for c in ("depth", "segmentation", "pose") for p in ("fp32", "fp16")}
    listed = {f["tensorrt_onnx"]["path"] for e in tiny_build[1].values() for g in e["graphs"] for f in (g, g["fp16"])}
    assert {r["graph"] for r in rows} == listed  # what was compiled: the TensorRT variants the manifest lists
    assert all(r["bytes"] > 100_000 for r in rows), rows
    # The builder states each engine's device memory at the profile's largest shapes; the manifest keeps it.
    assert all(0 < r["memory"]["weights_bytes"] < r["bytes"] and r["memory"]["activation_bytes"] > 0 for r in rows)
    for entry in manifest.load(engines)["capabilities"].values():
        figures = entry["graphs"][0]["memory"]["tensorrt_rtx"]
        assert set(figures) == {"fp32", "fp16"} and figures["fp16"]["max_hw"] == entry["bounds"]["max_hw"]
        assert figures["fp16"]["activation_bytes"] < 1 << 30 and figures["fp16"]["workspace_gib"] == 1


def test_the_real_segmentation_graph_compiles_at_the_default_bounds_within_1_gib(tmp_path, trt):
    """SegFormer-B0 as served (demo weights, real size): at 4K bounds it needed 4 GiB, at 1080p under 1."""
    from vision_node.builder import engine_files, export, tensorrt_onnx, trt_rules, weights
    from vision_node.builder.graphs import SegmentationGraph
    from vision_node.builder.recipes import recipe_for
    from vision_node.builder.specs import DEFAULT_MODELS, OUTPUTS, spec_for
    from vision_node.contract import ShapeBounds
    from vision_node.sizing import Sizing

    loaded = weights.load_demo(spec_for(DEFAULT_MODELS["segmentation"]), seed=0)
    bounds = ShapeBounds()
    assert bounds.max_hw == (1080, 1920)
    graph = SegmentationGraph(loaded.model, loaded.processor, Sizing.of_processor(loaded.processor), bounds, 8)
    exported, path = tmp_path / "segmentation.onnx", tmp_path / "segmentation.trt.onnx"
    export.export(graph, OUTPUTS["segmentation"], exported, example_hw=bounds.opt_hw)
    tensorrt_onnx.write(exported, path, recipe_for("segmentation").tensorrt_passes)  # as the build writes it
    trt_rules.enforce(path, name=path.name)
    plan, figures = build_trt.build_plan(
        trt, TENSORRT_RTX, path, engine_files.profile_shapes(bounds, 1), {"workspace_gib": 1}
    )
    assert len(plan) > 1_000_000 and 0 < figures["activation_bytes"] < 1 << 30, figures


def test_the_parser_takes_each_tensorrt_file_as_it_is_on_disk_and_refuses_the_exported_graph(tiny_build, trt):
    """TensorRT for RTX's parser reads the .trt.onnx files the manifest lists, fp32 and fp16 of every capability,
    from disk as they are (``parse_from_file``, as ``build_plan`` does: the test above builds each of them); the
    exported graph, which ONNX Runtime serves and the variant is made from, no TensorRT parser takes as it is."""
    from vision_node.builder.trt_memory import recording_logger

    out, entries = tiny_build
    logger = recording_logger(trt)

    kept = []  # the builders and networks outlive their parsers (TensorRT's objects do not keep each other alive)

    def parser_of(path):
        builder = trt.Builder(logger)
        network = builder.create_network(TENSORRT_RTX.network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        kept.append((builder, network, parser))
        return parser.parse_from_file(str(path)), parser

    for entry in entries.values():
        for graph in entry["graphs"]:
            for onnx_file in (graph, graph["fp16"]):
                variant = out / onnx_file["tensorrt_onnx"]["path"]
                assert variant.name.endswith(".trt.onnx")
                assert manifest.sha256(variant) == onnx_file["tensorrt_onnx"]["sha256"]  # the file the build verified
                parsed, parser = parser_of(variant)
                assert parsed, f"{variant.name}:\n  {build_trt.parser_errors(parser)}"
                parsed, parser = parser_of(out / onnx_file["path"])
                assert not parsed and "UInt8" in build_trt.parser_errors(parser), onnx_file["path"]


def test_a_graph_the_parser_refuses_fails_naming_its_node(tmp_path, trt):
    frames = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", "height", "width", 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    nodes = [  # arithmetic on the uint8 frame (a transpose of it ``selects`` would cast first)
        helper.make_node("Mul", ["frames", "two"], ["t"], name="mul_u8"),
        helper.make_node("Cast", ["t"], ["out"], name="cast", to=TensorProto.FLOAT),
    ]
    opset = [helper.make_opsetid("", 17)]
    two = helper.make_tensor("two", TensorProto.UINT8, [], [2])
    model = helper.make_model(helper.make_graph(nodes, "bad", [frames], [out], [two]), opset_imports=opset)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    shapes = {"frames": ((1, 64, 64, 3), (1, 128, 128, 3), (1, 256, 256, 3))}
    with pytest.raises(BuildError) as refused:
        build_trt.build_plan(trt, TENSORRT_RTX, path, shapes, {})
    message = str(refused.value)
    assert "bad.onnx: tensorrt_rtx's ONNX parser refused it" in message
    assert "node 'mul_u8' (Mul)" in message and "UInt8" in message
    assert "cudaError" not in message  # this CPU machine's driver complaint is not the reason


def test_the_compile_check_of_the_cli_fails_naming_the_node(tiny_build, tmp_path, trt, caplog):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)
    data = json.loads((engines / "manifest.json").read_text())
    broken = engines / data["capabilities"]["depth"]["graphs"][0]["tensorrt_onnx"]["path"]  # what TensorRT reads
    model = onnx.load(str(broken))
    # an extra output that computes on the uint8 frame before casting it
    model.graph.initializer.append(helper.make_tensor("two", TensorProto.UINT8, [], [2]))
    model.graph.node.extend(
        [
            helper.make_node("Mul", ["frames", "two"], ["doubled"], name="mul_u8"),
            helper.make_node("Cast", ["doubled"], ["doubled_f"], to=TensorProto.FLOAT),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("doubled_f", TensorProto.FLOAT, None))
    onnx.save(model, str(broken))
    caplog.set_level(logging.INFO, logger="build")
    argv = ["--tensorrt-only", "--compile-check", "--capabilities", "depth", "--out", str(engines)]
    assert cli.main(argv) == 1
    assert "parser refused it" in caplog.text and "node 'mul_u8' (Mul)" in caplog.text


def test_tensorrt_rtx_engines_are_built_ahead_of_time_from_the_fp16_graph(tiny_build, tmp_path, trt, caplog):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)
    argv = [
        "--tensorrt-only",
        "--tensorrt-rtx",
        "--rtx-targets",
        "8.6,8.9",
        "--capabilities",
        "depth",
        "--out",
        str(engines),
    ]
    caplog.set_level(logging.INFO, logger="build")
    assert cli.main(argv) == 0
    graph = manifest.load(engines)["capabilities"]["depth"]["graphs"][0]
    record = graph["tensorrt"][0]
    assert record["runtime"] == "tensorrt-rtx" and record["tensorrt"] == trt.__version__
    assert record["onnx_sha256"] == graph["fp16"]["tensorrt_onnx"]["sha256"]  # built from the fp16 TensorRT file
    assert record["options"]["precision"] == "fp16"
    assert record["options"]["targets"] == ["8.6", "8.9"] and record["gate"] is None  # gated on the card
    plan = engines / record["plan"]
    assert plan.name.startswith("depth-98x98-aspect.fp16.rtx") and manifest.sha256(plan) == record["sha256"]
    caplog.clear()
    assert cli.main(argv) == 0  # the same graph, version and options: reused
    assert "reuse (built for this graph" in caplog.text
    assert manifest.load(engines)["capabilities"]["depth"]["graphs"][0]["tensorrt"] == [record]


def test_every_parser_refusal_is_reported_not_only_the_last():
    """parser_errors names each refused node (it once rebound its list in the loop and kept the last one only).
    The parser here is a stand-in with TensorRT's parser's face (num_errors, get_error): the texts are ours."""

    class Refusal:
        def __init__(self, node, op, desc):
            self.node, self.op, self.text = node, op, desc

        def node_name(self):
            return self.node

        def node_operator(self):
            return self.op

        def desc(self):
            return self.text

        def code(self):
            return type("Code", (), {"name": "UNSUPPORTED_NODE"})

    class Parser:
        errors = [
            Refusal("Transpose_980", "Transpose", "first input has type UInt8 but must have type Float"),
            Refusal("mul_u8", "Mul", "Invalid Node - mul_u8\nUInt8 is not supported for Mul"),
        ]
        num_errors = len(errors)

        def get_error(self, i):
            return self.errors[i]

    text = build_trt.parser_errors(Parser())
    assert "node 'Transpose_980' (Transpose): UNSUPPORTED_NODE: first input has type UInt8" in text
    assert "node 'mul_u8' (Mul): UNSUPPORTED_NODE: UInt8 is not supported for Mul" in text
