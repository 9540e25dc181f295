"""In-process latency of each graph on a backend, beside what a user would run instead.

The baseline is the same architecture through transformers in PyTorch eager (image processor +
model + post-processing, as ``vision_node.builder.reference`` runs it), on the same frames, in the same
run. Its weights are the architecture's seeded demo weights: latency depends on shapes, not values.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np

from vision_node import samples
from vision_node.contract import FRAME_INPUT
from vision_node.errors import StartupError
from vision_node.runtime.flavours import FLAVOURS, flavour
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.runtime.tensorrt import TensorRTBackend, gpu_runtime, load_tensorrt
from vision_node.serving.engines import load

from . import photographs, report
from .demo_models import demo_model
from .machine import rss_bytes
from .stats import measure, summarise


def graph_rows(
    engines,
    capability: str,
    sizes,
    batches,
    progress,
    backends=("onnxruntime",),
    frames_for=samples.frames,
    **measuring,
) -> list[dict]:
    """Each graph on each backend; TensorRT rows add the GPU stage split (copy in, compute, copy out)."""
    served = load(engines, (capability,), onnxruntime="onnxruntime" in backends)[capability]
    rows = []
    for backend_name in backends:
        for h, w in sizes:
            graph = served.graph_for(h, w)
            for batch in batches:
                frames = frames_for(h, w, batch)
                with _open(backend_name, graph, served.bounds, batch) as backend:
                    progress(f"{capability} {batch}x{h}x{w}: {graph.path.name} on {backend.name} ({backend.device})")
                    stages = []

                    def run(f=frames, b=backend, kept=stages):
                        b.infer({FRAME_INPUT: f})
                        if getattr(b, "stages_ms", None):
                            kept.append(dict(b.stages_ms))

                    timed, stable = measure(run, **measuring)
                    row = _row(capability, f"{backend.name} ({backend.device})", batch, h, w, timed, stable)
                    for stage in ("copy_in", "compute", "copy_out"):
                        if stages:
                            row[f"{stage} p50 ms"] = float(np.median([s[stage] for s in stages]))
                    rows.append({**row, "graph": graph.path.name, "resolution": graph.model_size(h, w)})
                    progress(_partial(row))
    return rows


def rotated_rows(engines, capability: str, sizes, progress, frames_for, warmup: int, iterations: int) -> list[dict]:
    """One ONNX Runtime backend per graph, every size in turn within each iteration: a noisy machine's
    drift hits all sizes alike, so their ratios can be read (segmentation at 1080p against 512²)."""
    served = load(engines, (capability,), onnxruntime=True)[capability]
    frames = {hw: frames_for(*hw, 1) for hw in sizes}
    backends, timed = {}, {hw: [] for hw in sizes}
    with ExitStack() as stack:
        for hw in sizes:
            graph = served.graph_for(*hw)
            if graph.path not in backends:
                backends[graph.path] = stack.enter_context(_open("onnxruntime", graph, served.bounds, 1))
        names = {path: f"{b.name} ({b.device})" for path, b in backends.items()}
        progress(f"{capability}: {', '.join(f'{h}x{w}' for h, w in sizes)} in turn, {iterations} rounds")
        for round_ in range(warmup + iterations):
            for hw in sizes:
                backend = backends[served.graph_for(*hw).path]
                start = time.perf_counter()
                backend.infer({FRAME_INPUT: frames[hw]})
                if round_ >= warmup:
                    timed[hw].append(time.perf_counter() - start)
    rows, first = [], summarise(timed[sizes[0]])["p50"]
    for (h, w), seconds in timed.items():
        row = _row(capability, names[served.graph_for(h, w).path], 1, h, w, seconds, None)
        rows.append({**row, f"p50 / {sizes[0][0]}x{sizes[0][1]} p50": row["p50 ms"] / first})
        progress(_partial(row))
    return rows


def _partial(row: dict) -> str:
    """One measured row as soon as it exists: a long run shows its results as it goes."""
    stable = {"yes": "stable", "no": "not stable: the budget ran out"}.get(row["stable"], row["stable"])
    return f"  p50 {row['p50 ms']:.2f} ms, p99 {row['p99 ms']:.2f} ms over {row['n']} runs ({stable})"


def _open(backend_name: str, graph, bounds, batch: int):
    if backend_name == "onnxruntime":
        return OnnxRuntimeBackend(graph.onnxruntime_file, graph.outputs, bounds, max_batch=batch)  # what the node loads
    return TensorRTBackend.for_graph(graph, bounds, gpu_runtime(flavour(backend_name), graph.path.parent))


def _baseline(served, models, frames, sizing):
    """One call of the transformers path on ``frames``: image processor + model + post-processing."""
    from vision_node.builder import reference

    capability, max_persons = served.name, served.options.get("max_persons", 8)

    def run():
        if capability == "pose":
            det, pose = models["detector"], models["pose"]
            people = reference.person_boxes(det.model, det.processor, frames, max_persons, sizing)
            boxes = [p["boxes"] for p in people]
            reference.keypoints(pose.model, pose.processor, frames, _stack(boxes, max_persons))
        else:
            fn = reference.depth if capability == "depth" else reference.segmentation
            fn(models[capability].model, models[capability].processor, frames, sizing)

    return run


def _baseline_name() -> str:
    import torch

    return f"transformers eager (torch {torch.__version__}, CPU)"


def baseline_rows(
    engines, capability: str, sizes, batches, progress, frames_for=samples.frames, **measuring
) -> list[dict]:
    """transformers in PyTorch eager on the same frames; needs the export extra (torch, transformers)."""
    served = load(engines, (capability,))[capability]
    models = {m["role"]: demo_model(m["name"]) for m in served.models}
    rows = []
    for h, w in sizes:
        sizing = served.graph_for(h, w).sizing
        for batch in batches:
            frames = frames_for(h, w, batch)
            progress(f"{capability} {batch}x{h}x{w}: {_baseline_name()}")
            timed, stable = measure(_baseline(served, models, frames, sizing), **measuring)
            rows.append(_row(capability, _baseline_name(), batch, h, w, timed, stable))
            progress(_partial(rows[-1]))
    return rows


def interleaved_rows(
    engines, capability: str, sizes, batches, progress, frames_for=samples.frames, *, warmup: int, iterations: int
) -> list[dict]:
    """The ONNX Runtime graph and transformers eager called in turn on the same frames: the machine's
    drift over a run hits both alike. Pairs of rows (graph, baseline) per size and batch."""
    served = load(engines, (capability,), onnxruntime=True)[capability]
    models = {m["role"]: demo_model(m["name"]) for m in served.models}
    rows = []
    for h, w in sizes:
        graph = served.graph_for(h, w)
        for batch in batches:
            frames = frames_for(h, w, batch)
            progress(f"{capability} {batch}x{h}x{w}: {graph.path.name} on onnxruntime and transformers, in turn")
            with _open("onnxruntime", graph, served.bounds, batch) as backend:
                calls = {
                    "graph": lambda b=backend, f=frames: b.infer({FRAME_INPUT: f}),
                    "baseline": _baseline(served, models, frames, graph.sizing),
                }
                timed = {name: [] for name in calls}
                for i in range(warmup + iterations):
                    for name, call in calls.items():
                        started = time.perf_counter()
                        call()
                        if i >= warmup:
                            timed[name].append(time.perf_counter() - started)
                ours = _row(capability, f"onnxruntime ({backend.device})", batch, h, w, timed["graph"], None)
            rows.append({**ours, "graph": graph.path.name, "resolution": graph.model_size(h, w)})
            rows.append(_row(capability, _baseline_name(), batch, h, w, timed["baseline"], None))
            progress(_partial(rows[-2]) + " | baseline" + _partial(rows[-1]))
    return rows


def _stack(boxes, k):
    padded = [np.concatenate([b, np.tile([[0, 0, 1, 1]], (k - len(b), 1))]) if len(b) < k else b[:k] for b in boxes]
    return np.stack(padded).astype(np.float32)


def _row(capability, backend, batch, h, w, timed, stable) -> dict:
    s = summarise(timed)
    return {
        "capability": capability,
        "backend": backend,
        "frames": f"{batch}x{h}x{w}",
        "p50 ms": s["p50"],
        "p90 ms": s["p90"],
        "p95 ms": s["p95"],
        "p99 ms": s["p99"],
        "max ms": s["max"],
        "frames/s": batch * 1000 / s["mean"],
        "process RSS MiB": rss_bytes() / 2**20,
        "n": s["n"],
        "stable": {True: "yes", False: "no", None: "fixed count"}[stable],
    }


# ---------------------------------------------------------------- the command: python -m benchmarks engine

COLUMNS = [
    "capability",
    "backend",
    "frames",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "frames/s",
    "baseline / graph p50",
    "process RSS MiB",
    "n",
    "stable",
]


def run(args) -> int:
    if args.interleaved and (args.iterations is None or not args.baseline):
        raise SystemExit("--interleaved needs --iterations N and the baseline (it pairs the two, call by call)")
    if args.rotate_sizes and (args.iterations is None or args.baseline or args.interleaved):
        raise SystemExit("--rotate-sizes needs --iterations N and --no-baseline (it times the graph alone)")
    backends = _loadable(args.backends)
    sizes, frames_for = args.sizes, samples.frames
    if args.photographs:
        sizes, frames_for = photographs.photograph_frames(args.photographs)
    rows = []
    for capability in args.capabilities:
        if args.rotate_sizes:  # every size in turn, round by round
            rows += rotated_rows(
                args.engines, capability, sizes, report.progress, frames_for, args.warmup, args.iterations
            )
        elif args.interleaved:  # ONNX Runtime and transformers in turn, call by call
            rows += _interleaved(args, capability, sizes, frames_for)
        else:
            rows += graph_rows(
                args.engines, capability, sizes, args.batches, report.progress, backends, frames_for, **_measuring(args)
            )
            if args.baseline:
                rows += _beside_baseline(rows, _baseline_or_none(args, capability, sizes, frames_for))
    _write(args, rows)
    return 0


def _measuring(args) -> dict:
    return {"warmup": args.warmup, "iterations": args.iterations, "max_seconds": args.max_seconds}


def _loadable(backends) -> list[str]:
    """The backends asked for, less the TensorRT flavours this machine cannot load (each said so)."""
    kept = list(backends)
    for name in [b for b in kept if b in FLAVOURS]:
        try:
            load_tensorrt(FLAVOURS[name])
        except StartupError as err:
            report.progress(f"{name} rows skipped: {err}")
            kept.remove(name)
    return kept


def _interleaved(args, capability: str, sizes, frames_for) -> list[dict]:
    pairs = interleaved_rows(
        args.engines,
        capability,
        sizes,
        args.batches,
        report.progress,
        frames_for,
        warmup=args.warmup,
        iterations=args.iterations,
    )
    for ours, theirs in zip(pairs[::2], pairs[1::2]):
        ours["baseline / graph p50"] = theirs["p50 ms"] / ours["p50 ms"]
    return pairs


def _baseline_or_none(args, capability: str, sizes, frames_for) -> list[dict]:
    try:
        return baseline_rows(
            args.engines, capability, sizes, args.batches, report.progress, frames_for, **_measuring(args)
        )
    except ImportError as err:
        report.progress(f"baseline skipped: {err} (install the export extra: torch, transformers)")
        return []


def _beside_baseline(rows: list[dict], base: list[dict]) -> list[dict]:
    """Each graph row gets the baseline's p50 over its own; returns the baseline rows."""
    for row in rows:
        twin = next((b for b in base if b["capability"] == row["capability"] and b["frames"] == row["frames"]), None)
        if twin and "graph" in row:
            row["baseline / graph p50"] = twin["p50 ms"] / row["p50 ms"]
    return base


def _write(args, rows: list[dict]) -> None:
    columns = list(COLUMNS) + sorted({c for row in rows for c in row if c.startswith("p50 / ")})
    if any("compute p50 ms" in row for row in rows):
        columns[8:8] = ["copy_in p50 ms", "compute p50 ms", "copy_out p50 ms"]
    notes = [
        "graph: the exported graph (pre- and post-processing inside) through the node's backend, in this process",
        "baseline: the same architecture through transformers (image processor + model + post-processing), "
        "PyTorch eager, on the same frames, in the same run; seeded demo weights (latency depends on shapes)",
        "stable: the last 3 windows' medians within 10 % of each other (perf_analyzer's rule)"
        if args.iterations is None
        else f"fixed count: {args.iterations} iterations after {args.warmup} warm-up"
        + (" (graph and baseline called in turn, frame by frame)" if args.interleaved else "")
        + (" (every size in turn, round by round, one session per graph)" if args.rotate_sizes else ""),
        "process RSS: the benchmark process after the row (cumulative: torch loads once the baselines start)",
    ]
    report.write(
        {"provenance": report.provenance({"engines": str(args.engines)}), "rows": rows},
        "In-process latency per graph",
        [{c: row.get(c, "") for c in columns} for row in rows],
        notes,
        args.json,
        args.markdown,
    )
