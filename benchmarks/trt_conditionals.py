"""What TensorRT for RTX's builder charges for ONNX conditionals: the activation memory behind segmentation's 608 MB.

Two probes, each compiled ahead of time on this CPU (no GPU), figures from the builder's log
(``vision_node.builder.trt_memory``) at frames up to 1080x1920, batch 1:

- ``ifs``: a chain of N ``If``s on one data-dependent condition, each branch DEPTH copies of a frame-sized
  float map (Mul, then a reversing Gather). Shows how an If's output and its branch's layers are allocated.
- ``segmentation``: the real segmentation graph (SegFormer-B0, demo weights) and its parts: the pre-processing
  alone (Pillow's resize of the frame to 512x512, as TensorRT is given it), the network alone (on a 512x512 crop,
  no resize, argmax at the logits' size), both (``pre+network``), the graph with the argmax's tiers only
  (``tiers``: no fallback), and the whole graph as the build writes it.
- ``argmax``: segmentation's upsampled argmax alone (``vision_node.builder.argmax``) on 150 x 128 x 128 logits:
  as shipped (the dense fallback as one If per chunk of classes), with another chunk, with the chain merged
  into one If (what ONNX Runtime's copy gets), or without the fallback (the sparse tiers only).

    python -m benchmarks.trt_conditionals ifs 1,1 5,1 10,1 1,10
    python -m benchmarks.trt_conditionals argmax --chunks 8,16 [--merged] [--no-fallback]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_FRAME = (1080, 1920)
SHAPES = {"frames": ((1, 64, 64, 3), (1, 720, 1280, 3), (1, *MAX_FRAME, 3))}


def _constant(name: str, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype), name)


def _copies(tag: str, source: str, depth: int) -> onnx.GraphProto:
    """A branch: ``depth`` times (x * 2, then x reversed along its width by a Gather: a real copy)."""
    nodes, inits, current = [], [_constant(f"{tag}two", 2.0)], source
    for name, value in (("two_i", 2), ("zero_i", 0), ("one_i", 1)):
        inits.append(_constant(f"{tag}{name}", value, np.int64))
    for i in range(depth):
        doubled, shape, width, ramp, back, index, out = (f"{tag}{k}{i}" for k in "dswrbio")
        nodes += [
            helper.make_node("Mul", [current, f"{tag}two"], [doubled]),
            helper.make_node("Shape", [doubled], [shape]),
            helper.make_node("Gather", [shape, f"{tag}two_i"], [width]),
            helper.make_node("Range", [f"{tag}zero_i", width, f"{tag}one_i"], [ramp]),
            helper.make_node("Sub", [width, ramp], [back]),
            helper.make_node("Sub", [back, f"{tag}one_i"], [index]),
            helper.make_node("Gather", [doubled, index], [out], axis=2),
        ]
        current = out
    nodes.append(helper.make_node("Identity", [current], [f"{tag}out"]))
    outputs = [helper.make_tensor_value_info(f"{tag}out", TensorProto.FLOAT, None)]
    return helper.make_graph(nodes, tag, [], outputs, inits)


def chain_of_ifs(count: int, depth: int) -> onnx.ModelProto:
    """frames -> a frame-sized float map -> ``count`` Ifs in a row (condition: a pixel above 1000, never true
    but unknown to the builder), each taken branch ``depth`` copies, each skipped one passing the map through."""
    nodes = [
        helper.make_node("Cast", ["frames"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "channel"], ["x0"], keepdims=0),
        helper.make_node("ReduceMax", ["x0"], ["brightest"], keepdims=0),
        helper.make_node("Greater", ["brightest", "threshold"], ["condition"]),
    ]
    for k in range(count):
        skipped = helper.make_graph(
            [helper.make_node("Identity", [f"x{k}"], [f"e{k}"])],
            f"else{k}",
            [],
            [helper.make_tensor_value_info(f"e{k}", TensorProto.FLOAT, None)],
        )
        taken = _copies(f"t{k}_", f"x{k}", depth)
        nodes.append(helper.make_node("If", ["condition"], [f"x{k + 1}"], then_branch=taken, else_branch=skipped))
    nodes.append(helper.make_node("Identity", [f"x{count}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain_of_ifs",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_constant("channel", [3], np.int64), _constant("threshold", 1000.0)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def blocks_of_ifs(count: int, cells: int) -> onnx.ModelProto:
    """The shape of a fallback whose Ifs return small tensors: ``count`` Ifs on one condition, each taking a
    block of ``cells`` rows of 144 values (a cell's pixels at 1080p from 128x128 logits) out of the frame map
    and scoring 150 classes there (a broadcast Mul, a ReduceMax: the every-class work of one block of cells),
    else zeros of the same shape; then one If that, taken, concatenates the blocks into a frame-sized map.
    Compiled, never run: its blocks are taken at the largest frame's rows."""
    nodes = [
        helper.make_node("Cast", ["frames"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "channel"], ["x0"], keepdims=0),
        helper.make_node("ReduceMax", ["x0"], ["brightest"], keepdims=0),
        helper.make_node("Greater", ["brightest", "threshold"], ["condition"]),
        helper.make_node("Reshape", ["x0", "as_rows"], ["rows"]),  # [pixels / 144, 144]
    ]
    inits = [
        _constant("channel", [3], np.int64),
        _constant("threshold", 1000.0),
        _constant("as_rows", [-1, 144], np.int64),
        _constant("classes", np.linspace(0.5, 1.5, 150, dtype=np.float32).reshape(1, 150, 1)),
        _constant("block_shape", [cells, 144], np.int64),
        _constant("class_axis", [1], np.int64),
    ]
    for k in range(count):
        inits.append(_constant(f"take{k}", np.arange(k * cells, (k + 1) * cells), np.int64))
        taken = helper.make_graph(
            [
                helper.make_node("Gather", ["rows", f"take{k}"], [f"block{k}"], axis=0),  # [cells, 144]
                helper.make_node("Unsqueeze", [f"block{k}", "class_axis"], [f"wide{k}"]),  # [cells, 1, 144]
                helper.make_node("Mul", [f"wide{k}", "classes"], [f"scores{k}"]),  # [cells, 150, 144]
                helper.make_node("ReduceMax", [f"scores{k}", "class_axis"], [f"best{k}"], keepdims=0),
            ],
            f"then{k}",
            [],
            [helper.make_tensor_value_info(f"best{k}", TensorProto.FLOAT, None)],
        )
        skipped = helper.make_graph(
            [helper.make_node("ConstantOfShape", ["block_shape"], [f"zeros{k}"])],
            f"else{k}",
            [],
            [helper.make_tensor_value_info(f"zeros{k}", TensorProto.FLOAT, None)],
        )
        nodes.append(helper.make_node("If", ["condition"], [f"values{k}"], then_branch=taken, else_branch=skipped))
    assemble = helper.make_graph(
        [helper.make_node("Concat", [f"values{k}" for k in range(count)], ["assembled"], axis=0)],
        "assemble",
        [],
        [helper.make_tensor_value_info("assembled", TensorProto.FLOAT, None)],
    )
    keep = helper.make_graph(
        [helper.make_node("Identity", ["rows"], ["kept"])],
        "keep",
        [],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, None)],
    )
    nodes.append(helper.make_node("If", ["condition"], ["y"], then_branch=assemble, else_branch=keep))
    graph = helper.make_graph(
        nodes,
        "blocks_of_ifs",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def argmax_graph(path: Path, chunk: int, fallback: bool = True) -> None:
    """Segmentation's upsampled argmax alone, exported as the build exports it (frames give the output size)."""
    import torch

    from vision_node.builder import argmax
    from vision_node.builder.recipes import recipe_for

    class Argmax(torch.nn.Module):
        def forward(self, frames, logits):
            size = frames.shape[1:3]
            if fallback:
                classes = argmax.upsampled_argmax(logits, size, chunk)
            else:  # the tiers only: what the fallback adds is the difference
                classes = argmax.tiered_argmax(logits, size, chunk)[0]
            return (classes.float().to(torch.uint8),)

    example = (torch.zeros(1, 480, 640, 3, dtype=torch.uint8), torch.randn(1, 150, 128, 128))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Argmax(),
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["frames", "logits"],
            output_names=["classes"],
            dynamic_axes={"frames": {0: "batch", 1: "height", 2: "width"}, "classes": {0: "batch", 1: "h", 2: "w"}},
        )
    model = onnx.load(str(path))
    for rewrite in recipe_for("segmentation").tensorrt_passes:  # as segmentation's TensorRT variant is written
        rewrite(model)
    onnx.save(model, str(path))


def compiled(path: Path, shapes: dict) -> tuple[float, float]:
    """(activation MB, engine MB) of ``path`` as TensorRT for RTX's builder compiles it."""
    from vision_node.builder import tensorrt as build_trt
    from vision_node.runtime.flavours import TENSORRT_RTX

    trt = build_trt.load_tensorrt(TENSORRT_RTX)
    plan, figures = build_trt.build_plan(trt, TENSORRT_RTX, path, shapes, {"workspace_gib": 4})
    return figures["activation_bytes"] / 1e6, len(plan) / 1e6


def segmentation_part(path: Path, part: str, rung: str) -> None:
    """The demo build's segmentation graph (or one ``part`` of it) exported at ``rung`` and rewritten as its
    TensorRT variant is (``recipes``), saved at ``path``."""
    import torch

    from vision_node.builder import argmax, export, graphs, weights
    from vision_node.builder.recipes import recipe_for
    from vision_node.builder.specs import OUTPUTS, ShapeBounds, spec_for
    from vision_node.sizing import Sizing

    loaded = weights.load_demo(spec_for("segformer-b0-ade"))
    bounds = ShapeBounds(min_hw=(64, 64), max_hw=MAX_FRAME, opt_hw=(512, 512), max_batch=1)
    sizing = Sizing.of_processor(loaded.processor)
    graph = graphs.SegmentationGraph(loaded.model, loaded.processor, sizing, bounds, 8, rung=rung)

    class Part(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph = graph  # a submodule: its weights are the export's, not constants

        def forward(self, frames):
            if part == "pre":  # the resize and normalisation, one channel out as uint8
                return (self.graph.pre(frames)[:, 0].to(torch.uint8),)
            if part == "network":  # SegFormer on the frame's top-left 512x512, argmax at the logits' size
                pixels = frames[:, :512, :512].permute(0, 3, 1, 2).float() / 255.0
            else:  # both, then the argmax at the logits' size ("pre+network") or the tiers only ("tiers")
                pixels = self.graph.pre(frames)
            logits = self.graph.model(pixel_values=pixels).logits
            if part == "tiers":
                return (argmax.tiered_argmax(logits, frames.shape[1:3], 8)[0].float().to(torch.uint8),)
            return (logits.argmax(1).float().to(torch.uint8),)

    module = graph if part == "graph" else Part()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        export.export(module, OUTPUTS["segmentation"], path, example_hw=(512, 512))
    model = onnx.load(str(path))
    for rewrite in recipe_for("segmentation").tensorrt_passes:
        rewrite(model)
    onnx.save(model, str(path))


def activation_mb(path: Path, shapes: dict) -> float:
    return compiled(path, shapes)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trt_conditionals", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="probe", required=True)
    ifs = sub.add_parser("ifs", help="a chain of Ifs over a frame-sized map")
    ifs.add_argument("chains", nargs="+", help="COUNT,DEPTH: Ifs in the chain, copies in each branch")
    bl = sub.add_parser("blocks", help="Ifs that return small blocks, assembled by one last If")
    bl.add_argument("shapes", nargs="+", help="COUNT,CELLS: Ifs, and cells (rows of 144 values) each")
    sg = sub.add_parser("segmentation", help="the real segmentation graph (demo weights) and its parts")
    sg.add_argument("parts", nargs="+", choices=("pre", "network", "pre+network", "tiers", "graph"))
    sg.add_argument("--rung", default="fp16", choices=("fp32", "fp16"), help="the network's precision (default: fp16)")
    am = sub.add_parser("argmax", help="segmentation's upsampled argmax alone")
    am.add_argument("--chunks", default="8", help="classes per chunk in the every-class tier, comma-separated")
    am.add_argument(
        "--fallback-cells", default="256", help="cells per If of the fallback, comma-separated (shipped: 256)"
    )
    am.add_argument("--no-fallback", action="store_true", help="the sparse tiers only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        if args.probe == "ifs":
            print(f"{'Ifs':>4} {'copies':>7} {'activation MB':>14}  (frames up to {MAX_FRAME[0]}x{MAX_FRAME[1]})")
            for chain in args.chains:
                count, depth = (int(v) for v in chain.split(","))
                onnx.save(chain_of_ifs(count, depth), str(path))
                print(f"{count:>4} {depth:>7} {activation_mb(path, SHAPES):>14.1f}", flush=True)
            return 0
        if args.probe == "blocks":
            print(f"{'Ifs':>4} {'cells':>6} {'activation MB':>14} {'build s':>8}  (frames up to 1080x1920)")
            for shape in args.shapes:
                count, cells = (int(v) for v in shape.split(","))
                onnx.save(blocks_of_ifs(count, cells), str(path))
                started = time.perf_counter()
                mb = activation_mb(path, SHAPES)
                print(f"{count:>4} {cells:>6} {mb:>14.1f} {time.perf_counter() - started:>8.1f}", flush=True)
            return 0
        if args.probe == "segmentation":
            print(f"{'part':>11} {'rung':>5} {'activation MB':>14} {'engine MB':>10}  (frames up to 1080x1920)")
            for part in args.parts:
                segmentation_part(path, part, args.rung)
                mb, plan_mb = compiled(path, SHAPES)
                print(f"{part:>11} {args.rung:>5} {mb:>14.1f} {plan_mb:>10.1f}", flush=True)
            return 0
        shapes = {**SHAPES, "logits": ((1, 150, 128, 128),) * 3}
        from vision_node.builder import argmax

        head = f"{'chunk':>5} {'fallback':>14} {'activation MB':>14} {'engine MB':>10} {'build s':>8}"
        print(head + "  (argmax alone, frames up to 1080x1920)")
        for chunk in (int(c) for c in args.chunks.split(",")):
            for cells in (int(c) for c in args.fallback_cells.split(",")):
                argmax.FALLBACK_CELLS = cells
                argmax_graph(path, chunk, fallback=not args.no_fallback)
                form = "none" if args.no_fallback else f"{cells} cells/If"
                started = time.perf_counter()
                mb, plan_mb = compiled(path, shapes)
                took = time.perf_counter() - started
                print(f"{chunk:>5} {form:>14} {mb:>14.1f} {plan_mb:>10.1f} {took:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
