"""TensorRT's rules for an ONNX graph, checked at build time without TensorRT.

A graph that breaks them is refused by every TensorRT builder (10.x, 11.x, for RTX), but only once
an operator tries, often inside a container on a GPU. These checks run right after export and name
the node:

- uint8 only at the network's edges: a uint8 tensor is a graph input (or constant) read only by a
  Cast to float32/float16 (or by Shape, which reads no data), or a graph output made by a Cast from
  float32/float16 (TensorRT's ``DataType.UINT8``).
- no float64, nor any other type TensorRT lacks (uint16/32/64, int16, strings, complex);
- every operator in the ONNX-TensorRT parser's support matrix for TensorRT 10.x, standard domain.

They are checked on the file TensorRT is given, as it is written: the TensorRT variant (``*.trt.onnx``,
``tensorrt_onnx``). Torch-free: it needs only ``onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from .errors import BuildError
from .passes.graph import all_nodes, bodies, cast_to, producers

# ONNX-TensorRT parser for TensorRT 10.x (onnx-tensorrt docs/operators.md, the 10.15 matrix:
# "Supported" Y), and the ops its "Supported Types" column allows only in float (fp32/fp16/bf16).
# Less NonZero: TensorRT for RTX 1.7's parser refuses it ("NonZero plugin creator version 1 was not
# found"), and every graph must build with both.
TENSORRT10_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu
    Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression Not OneHot Or PRelu Pad
    ParametricSoftplus Pow QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign
    RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
FLOAT_ONLY_OPS = frozenset(
    """
    Acos Acosh Asin Asinh Atan Atanh Ceil Celu Clip Cos Cosh CumSum Einsum Elu Erf Exp Floor Log Reciprocal
    Round Sin Sinh Sqrt Tan Tanh HardSigmoid HardSwish Hardmax LeakyRelu LogSoftmax PRelu Selu Sigmoid
    Softmax Softplus Softsign ThresholdedRelu AveragePool Conv ConvTranspose Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool LpPool MatMul MaxPool BatchNormalization GroupNormalization
    InstanceNormalization LayerNormalization LRN LpNormalization MeanVarianceNormalization RMSNormalization
    Dropout IsInf Resize Upsample GridSample Mish RoiAlign NonMaxSuppression
    """.split()
)
BOOL_ONLY_OPS = frozenset({"And", "Or", "Not", "Xor"})

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16}
_ANY_FLOAT = _FLOATS | {TensorProto.BFLOAT16}
# Types no TensorRT layer takes.
_UNSUPPORTED: dict[int, str] = {
    TensorProto.DOUBLE: "float64",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.INT16: "int16",
    TensorProto.STRING: "string",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
}


@dataclass(frozen=True)
class Violation:
    node: str  # the node's name (or the tensor's, for inputs and initializers)
    op: str
    rule: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op}): {self.rule}"


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names, from shape inference, initializers and constants."""
    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except onnx.shape_inference.InferenceError:  # e.g. an operator of an unknown domain: check what is typed
        graph = model.graph
    types: dict[str, int] = {}
    for body in bodies(graph):  # If/Loop/Scan bodies too: a branch's constants reach TensorRT as well
        types.update(
            {
                v.name: v.type.tensor_type.elem_type
                for v in (*body.input, *body.output, *body.value_info)
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
            }
        )
        types.update({t.name: t.data_type for t in body.initializer})
        for node in body.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        types[node.output[0]] = attr.t.data_type
    return types


def check(model: onnx.ModelProto) -> list[Violation]:
    """Every violation of TensorRT's rules in ``model``, in graph order."""
    graph = model.graph
    types = _types(model)
    found: list[Violation] = []
    for node in all_nodes(graph):
        if node.domain not in ("", "ai.onnx"):
            found.append(Violation(node.name, f"{node.domain}.{node.op_type}", "custom operator: no TensorRT plugin"))
        elif node.op_type not in TENSORRT10_OPS:
            found.append(Violation(node.name, node.op_type, "not in the ONNX-TensorRT parser's operators for 10.x"))
        elif node.input and node.input[0] in types:
            taken, op = types[node.input[0]], node.op_type
            if op in FLOAT_ONLY_OPS and taken not in _ANY_FLOAT:
                found.append(Violation(node.name, op, f"takes {_type_name(taken)}: TensorRT runs it on floats only"))
            elif op in BOOL_ONLY_OPS and taken != TensorProto.BOOL:
                found.append(Violation(node.name, op, f"takes {_type_name(taken)}: TensorRT runs it on bools only"))

    edges = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    producer = producers(graph)
    for name in edges:
        kind = types.get(name)
        if kind in _UNSUPPORTED:
            found.append(Violation(name, "input", f"is {_UNSUPPORTED[kind]}: TensorRT has no {_UNSUPPORTED[kind]}"))

    for node in graph.node:
        for out in node.output:
            kind = types.get(out)
            if not out:
                continue
            if kind is None:
                found.append(Violation(node.name, node.op_type, f"the type of '{out}' cannot be inferred"))
            elif kind in _UNSUPPORTED:
                found.append(_makes_unsupported(node, out, kind))
            elif kind == TensorProto.UINT8:
                source = types.get(node.input[0]) if node.input else None
                if node.op_type != "Cast" or source not in _FLOATS:
                    found.append(
                        Violation(
                            node.name,
                            node.op_type,
                            f"makes uint8 tensor '{out}': TensorRT makes uint8 only by a Cast from float32/float16",
                        )
                    )
        for name in node.input:
            if types.get(name) != TensorProto.UINT8:
                continue
            reads_data = node.op_type != "Shape"
            if reads_data and cast_to(node) not in _FLOATS:
                where = "a graph input" if name in edges else f"made by '{producer[name].name}'"
                found.append(
                    Violation(
                        node.name,
                        node.op_type,
                        f"reads uint8 tensor '{name}' ({where}): "
                        "TensorRT takes uint8 only into a Cast to float32/float16",
                    )
                )
    found += _unsupported_in_bodies(graph, types)
    for value in graph.output:
        if types.get(value.name) == TensorProto.UINT8 and value.name in edges:
            found.append(Violation(value.name, "output", "a uint8 output must be made by a Cast from float32/float16"))
    return found


def _unsupported_in_bodies(graph: onnx.GraphProto, types: dict[str, int]) -> list[Violation]:
    """Inside If/Loop/Scan bodies: the tensors of a type TensorRT lacks (a branch's float64 constant)."""
    return [
        _makes_unsupported(node, out, types[out])
        for body in list(bodies(graph))[1:]
        for node in body.node
        for out in node.output
        if types.get(out) in _UNSUPPORTED
    ]


def _makes_unsupported(node: onnx.NodeProto, out: str, kind: int) -> Violation:
    name = _UNSUPPORTED[kind]
    return Violation(node.name, node.op_type, f"makes {name} tensor '{out}': TensorRT has no {name}")


def enforce(path: Path, name: str | None = None) -> None:
    """Raise ``BuildError`` naming every node of the graph at ``path`` that TensorRT would refuse, as the file
    is (the TensorRT variant, which ``tensorrt.build_plan`` parses as it is)."""
    violations = check(onnx.load(str(path), load_external_data=False))
    if violations:
        listed = "\n  ".join(str(v) for v in violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        what = name or Path(path).name
        raise BuildError(f"{what} breaks TensorRT's rules (no TensorRT builder would accept it):\n  {listed}{more}")
