"""TensorRT's rules, checked on the ONNX graph at build time: every violation named by its node.

The same graphs then go through TensorRT for RTX's real parser and builder in
``test_tensorrt_compile.py``; these checks need no TensorRT and run first in every build.
"""

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vision_node.builder import export, tensorrt_onnx, trt_rules
from vision_node.builder.errors import BuildError
from vision_node.builder.passes import selects

FRAMES = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", "height", "width", 3])


def graph(nodes, outputs, domains=()):
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(helper.make_graph(nodes, "g", [FRAMES], outputs), opset_imports=opsets)


def float_output(name="out"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def named(violations):
    return {(v.node, v.op) for v in violations}


def test_every_tensorrt_variant_fp32_and_fp16_keeps_the_rules_as_it_is_written(tiny_build):
    out, entries = tiny_build
    for entry in entries.values():
        for graph_ in entry["graphs"]:
            for path in (graph_["tensorrt_onnx"]["path"], graph_["fp16"]["tensorrt_onnx"]["path"]):
                assert path.endswith(".trt.onnx") and trt_rules.check(onnx.load(str(out / path))) == [], path


def test_uint8_read_by_anything_but_a_cast_to_float_is_named():
    transpose = helper.make_node("Transpose", ["frames"], ["t"], name="transpose_u8", perm=[0, 3, 1, 2])
    cast = helper.make_node("Cast", ["t"], ["out"], name="cast", to=TensorProto.FLOAT)
    violations = trt_rules.check(graph([transpose, cast], [float_output()]))
    assert named(violations) == {("transpose_u8", "Transpose")}
    assert any("reads uint8 tensor 'frames' (a graph input)" in str(v) for v in violations)
    # Cast first, then transpose: accepted. Shape reads no data: accepted too.
    cast = helper.make_node("Cast", ["frames"], ["f"], name="cast", to=TensorProto.FLOAT)
    transpose = helper.make_node("Transpose", ["f"], ["out"], name="transpose", perm=[0, 3, 1, 2])
    shape = helper.make_node("Shape", ["frames"], ["shape"], name="shape")
    shape_out = helper.make_tensor_value_info("shape", TensorProto.INT64, [4])
    assert trt_rules.check(graph([cast, transpose, shape], [float_output(), shape_out])) == []


def test_a_uint8_output_must_come_from_a_float_cast():
    argmax = helper.make_node("ArgMax", ["f"], ["ids"], name="argmax", axis=3, keepdims=0)
    cast_in = helper.make_node("Cast", ["frames"], ["f"], name="cast_in", to=TensorProto.FLOAT)
    to_uint8 = helper.make_node("Cast", ["ids"], ["classes"], name="ids_to_uint8", to=TensorProto.UINT8)
    classes = helper.make_tensor_value_info("classes", TensorProto.UINT8, None)
    assert named(trt_rules.check(graph([cast_in, argmax, to_uint8], [classes]))) == {("ids_to_uint8", "Cast")}
    via_float = helper.make_node("Cast", ["ids"], ["idsf"], name="ids_to_float", to=TensorProto.FLOAT)
    to_uint8 = helper.make_node("Cast", ["idsf"], ["classes"], name="float_to_uint8", to=TensorProto.UINT8)
    assert trt_rules.check(graph([cast_in, argmax, via_float, to_uint8], [classes])) == []


def test_float64_anywhere_is_named():
    cast = helper.make_node("Cast", ["frames"], ["f"], name="cast", to=TensorProto.FLOAT)
    table = helper.make_tensor("table", TensorProto.DOUBLE, [1], [0.5])
    constant = helper.make_node("Constant", [], ["c"], name="position_table", value=table)
    to_float = helper.make_node("Cast", ["c"], ["cf"], name="c_to_float", to=TensorProto.FLOAT)
    mul = helper.make_node("Mul", ["f", "cf"], ["out"], name="mul")
    violations = trt_rules.check(graph([cast, constant, to_float, mul], [float_output()]))
    assert named(violations) == {("position_table", "Constant")} and "float64" in str(violations[0])


def test_operators_outside_the_parser_and_int_inputs_to_float_only_layers_are_named():
    cast = helper.make_node("Cast", ["frames"], ["f"], name="cast", to=TensorProto.FLOAT)
    unique = helper.make_node("Unique", ["f"], ["u"], name="unique")
    nonzero = helper.make_node("NonZero", ["f"], ["nz"], name="nonzero")  # full TensorRT has it, for RTX does not
    ints = helper.make_node("Cast", ["frames"], ["i"], name="to_int", to=TensorProto.INT64)
    matmul = helper.make_node("MatMul", ["i", "i"], ["m"], name="int_matmul")
    custom = helper.make_node("Decode", ["f"], ["out"], name="plugin", domain="com.example")
    outputs = [helper.make_tensor_value_info(n, t, None) for n, t in (("u", 1), ("m", 7), ("nz", 7))]
    outputs.append(float_output())
    nodes = [cast, unique, nonzero, ints, matmul, custom]
    violations = trt_rules.check(graph(nodes, outputs, domains=["com.example"]))
    expected = {("unique", "Unique"), ("nonzero", "NonZero"), ("int_matmul", "MatMul")}
    assert expected | {("plugin", "com.example.Decode")} <= named(violations)
    assert ("to_int", "Cast") in named(violations)  # uint8 to int64: TensorRT converts uint8 to floats only


def test_the_build_refuses_an_exported_graph_that_breaks_them_naming_the_node(tmp_path: Path):
    class ArithmeticFirst(torch.nn.Module):  # computes on the uint8 frame before casting it
        def forward(self, frames):
            depth = (frames // 2).float().mean(dim=3)
            return depth, depth.flatten(1).amin(dim=1), depth.flatten(1).amax(dim=1)

    path = tmp_path / "bad.onnx"
    export.export(ArithmeticFirst(), ("depth", "depth_min", "depth_max"), path, example_hw=(64, 64))
    onnx.checker.check_model(str(path))  # valid ONNX, which ONNX Runtime runs: only TensorRT's rules refuse it
    with pytest.raises(BuildError, match=r"(?s)bad\.onnx breaks TensorRT's rules.*\(Div\)"):
        trt_rules.enforce(path)


def test_a_graph_that_moves_the_uint8_frame_before_its_cast_is_cast_first_for_tensorrt(tmp_path: Path):
    class TransposeFirst(torch.nn.Module):  # what the resize does: lay the frame out as uint8, then cast
        def forward(self, frames):
            depth = frames.permute(0, 3, 1, 2).float().mean(dim=1)
            return depth, depth.flatten(1).amin(dim=1), depth.flatten(1).amax(dim=1)

    path = tmp_path / "moves.onnx"
    export.export(TransposeFirst(), ("depth", "depth_min", "depth_max"), path, example_hw=(64, 64))
    assert named(trt_rules.check(onnx.load(str(path)))) == {("/Transpose", "Transpose")}  # as exported
    variant = tensorrt_onnx.name_for(path)
    tensorrt_onnx.write(path, variant, (selects.cast_frames_first,))
    trt_rules.enforce(variant)  # as TensorRT is given it: cast, then transposed


def test_a_float64_constant_inside_an_if_branch_is_found():
    cast = helper.make_node("Cast", ["frames"], ["f"], name="cast", to=TensorProto.FLOAT)
    flag = helper.make_node("ReduceMax", ["f"], ["m"], name="max", keepdims=0)
    positive = helper.make_node("Greater", ["m", "zero"], ["c"], name="positive")
    zero = helper.make_node(
        "Constant", [], ["zero"], name="zero_const", value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])
    )
    double = helper.make_tensor("d", TensorProto.DOUBLE, [], [1.0])
    branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one64"], name="one64", value=double),
            helper.make_node("Cast", ["one64"], ["one"], name="to_float", to=TensorProto.FLOAT),
        ],
        "branch",
        [],
        [float_output("one")],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["m"], ["same"], name="same")], "other", [], [float_output("same")]
    )
    choose = helper.make_node("If", ["c"], ["out"], name="choose", then_branch=branch, else_branch=other)
    violations = trt_rules.check(graph([cast, flag, zero, positive, choose], [float_output()]))
    assert named(violations) == {("one64", "Constant")}
