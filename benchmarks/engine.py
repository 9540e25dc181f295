"""In-process latency of each graph on a backend, beside what a user would run instead.

The baseline is the same architecture through transformers in PyTorch eager (image processor +
model + post-processing, as ``node.builder.reference`` runs it), on the same frames, in the same
run. Its weights are the architecture's seeded demo weights: latency depends on shapes, not values.
"""

from __future__ import annotations

import time

import numpy as np

from node import samples
from node.contract import FRAME_INPUT
from node.engines import load
from node.runtime.flavours import flavour
from node.runtime.onnxruntime import OnnxRuntimeBackend
from node.runtime.tensorrt import TensorRTBackend, gpu_runtime

from .demo_models import demo_model
from .machine import rss_bytes
from .stats import measure, summarise


def graph_rows(
    engines, capability: str, sizes, batches, progress, backends=("onnxruntime",), frames_for=samples.frames,
    **measuring,
) -> list[dict]:
    """Each graph on each backend; TensorRT rows add the GPU stage split (copy in, compute, copy out)."""
    served = load(engines, (capability,))[capability]
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


def _partial(row: dict) -> str:
    """One measured row as soon as it exists: a long run shows its results as it goes."""
    stable = {"yes": "stable", "no": "not stable: the budget ran out"}.get(row["stable"], row["stable"])
    return f"  p50 {row['p50 ms']:.2f} ms, p99 {row['p99 ms']:.2f} ms over {row['n']} runs ({stable})"


def _open(backend_name: str, graph, bounds, batch: int):
    if backend_name == "onnxruntime":
        return OnnxRuntimeBackend(graph.path, graph.outputs, bounds, max_batch=batch)
    return TensorRTBackend.for_graph(graph, bounds, gpu_runtime(flavour(backend_name), graph.path.parent))


def _baseline(served, models, frames, sizing):
    """One call of the transformers path on ``frames``: image processor + model + post-processing."""
    from node.builder import reference  # noqa: PLC0415

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
    import torch  # noqa: PLC0415

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
    served = load(engines, (capability,))[capability]
    models = {m["role"]: demo_model(m["name"]) for m in served.models}
    rows = []
    for h, w in sizes:
        graph = served.graph_for(h, w)
        for batch in batches:
            frames = frames_for(h, w, batch)
            progress(f"{capability} {batch}x{h}x{w}: {graph.path.name} on onnxruntime and transformers, in turn")
            with _open("onnxruntime", graph, served.bounds, batch) as backend:
                calls = {"graph": lambda b=backend, f=frames: b.infer({FRAME_INPUT: f}),
                         "baseline": _baseline(served, models, frames, graph.sizing)}  # fmt: skip
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
