"""TensorRT engines from the verified ONNX graphs, kept only when they agree with ONNX Runtime.

For each graph: parse, one optimisation profile from the shape bounds, fp16 (TensorRT 10's
builder flag; TensorRT 11 builds what the graph's types say, fp32 here, and says so), a
persisted timing cache, a workspace limit, progress through ``IProgressMonitor``. Then the
accuracy gate runs the engine and ONNX Runtime (fp32) on the sample frames; on a miss the
engine is rebuilt with more layers pinned to fp32 (normalisation and softmax first, then the
pre- and post-processing), and refused when even that misses. Needs the ``trt`` extra and a GPU.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .. import manifest
from ..contract import ShapeBounds
from ..runtime import engine_cache
from ..runtime.cuda import SharedScratch, gpu_identity, load_pycuda
from ..runtime.onnxruntime import OnnxRuntimeBackend
from ..runtime.tensorrt import TensorRTBackend, load_tensorrt
from . import verify
from .errors import BuildError

log = logging.getLogger("build")

# Escalation when the accuracy gate fails: which layers to pin to fp32.
FP32_LEVELS = ("none", "norms", "norms+prepost")
# Layers of the neural networks (the rest is our pre- and post-processing), by ONNX scope.
_MODEL_SCOPES = ("/model/", "/detector/", "/pose_model/")
_NORM_TYPES = {"NORMALIZATION", "SOFTMAX", "REDUCE"}  # LayerNorm, softmax, and the mean/var of unfused norms


def fp32_layers(layers: list[tuple[str, str]], level: str) -> list[str]:
    """Names of the layers to keep in fp32 at ``level``; ``layers`` are (name, TensorRT layer type name)."""
    if level not in FP32_LEVELS:
        raise ValueError(f"unknown fp32 level {level!r}")
    chosen = []
    for name, kind in layers:
        in_model = name.startswith(_MODEL_SCOPES)
        if level != "none" and kind in _NORM_TYPES:
            chosen.append(name)
        elif level == "norms+prepost" and not in_model:
            chosen.append(name)
    return chosen


def _monitor(trt):
    """An IProgressMonitor that logs each build phase once, with its duration."""

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            log.info("tensorrt: %s%s (%d steps)", f"{parent_phase} / " if parent_phase else "", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            took = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
            if took > 1:
                log.info("tensorrt: %s done in %.1f s", phase_name, took)

    return Progress()


def build_plan(trt, onnx_path: Path, plan_path: Path, shapes: dict, options: dict, timing_cache: Path) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10 and 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path.name}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_gib"] * (1 << 30)))
    if options["precision"] == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        floats = (trt.float32, trt.float16)
        # Only layers that compute in floating point can be pinned (not shape, index or uint8 layers).
        candidates = [
            network.get_layer(i)
            for i in range(network.num_layers)
            if all(network.get_layer(i).get_output(j).dtype in floats for j in range(network.get_layer(i).num_outputs))
        ]
        pinned = set(fp32_layers([(layer.name, layer.type.name) for layer in candidates], options["fp32_level"]))
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            for layer in candidates:
                if layer.name in pinned:
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
            log.info("tensorrt: %s: %d layers pinned to fp32 (%s)", onnx_path.name, len(pinned), options["fp32_level"])
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _monitor(trt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above)")
    plan_path.write_bytes(memoryview(plan))
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))


def gate(capability: str, plan: Path, onnx_path: Path, outputs, bounds: ShapeBounds, trt, cuda, cuda_context):
    """The engine against ONNX Runtime fp32 on the sample frames: every check, fp16 tolerances."""
    scratch = SharedScratch(cuda, cuda_context)
    with (
        TensorRTBackend(plan, bounds, scratch, trt, cuda) as engine,
        OnnxRuntimeBackend(onnx_path, outputs, bounds, device="cpu") as reference,
    ):
        checks = verify.agreement(capability, engine, reference, bounds, verify.FP16_TOLERANCES)
    scratch.free()
    return checks


def build_engines(directory: Path, capabilities: list[str], *, workspace_gib: float = 4.0, max_batch: int = 1) -> dict:
    """Build (or reuse) an engine for every graph of ``capabilities`` in ``directory``; return the manifest entries."""
    trt = load_tensorrt()
    cuda, cuda_context = load_pycuda()
    cuda_context.push()
    try:
        gpu = gpu_identity(cuda)
        precision = "fp16" if hasattr(trt.BuilderFlag, "FP16") else "fp32"
        if precision == "fp32":
            log.warning(
                "TensorRT %s builds strongly typed networks only: these fp32 graphs give fp32 engines", trt.__version__
            )
        base = {"precision": precision, "workspace_gib": workspace_gib, "max_batch": max_batch}
        data = manifest.load(directory)
        entries = {}
        for capability in capabilities:
            entry = data["capabilities"][capability]
            bounds = ShapeBounds.from_dict(entry["bounds"])
            for graph in entry["graphs"]:
                here = _engine_for(directory, capability, graph, bounds, gpu, trt, cuda, cuda_context, base)
                # Engines of other GPUs or TensorRT versions (a shared cache volume) stay listed.
                others = [
                    e for e in graph.get("tensorrt", []) if (e["gpu"], e["tensorrt"]) != (gpu["name"], trt.__version__)
                ]
                graph["tensorrt"] = here + others
            entries[capability] = entry
        return entries
    finally:
        cuda.Context.pop()


def _engine_for(directory, capability, graph, bounds, gpu, trt, cuda, cuda_context, base) -> list[dict]:
    onnx_path = directory / graph["path"]
    stem = Path(graph["path"]).stem
    shapes = engine_cache.profile_shapes(bounds, base["max_batch"])
    for level in FP32_LEVELS if base["precision"] == "fp16" else ("none",):
        options = {**base, "fp32_level": level, "profile": {k: [list(s) for s in v] for k, v in shapes.items()}}
        facts = engine_cache.wanted(graph["sha256"], gpu, trt.__version__, options)
        plan = engine_cache.engine_path(directory, stem, facts)
        found = _read_sidecar(plan)
        decision, why = engine_cache.decide(found, facts)
        log.info("tensorrt: %s: %s (%s)", plan.name, decision, why)
        if decision == "build":
            started = time.perf_counter()
            build_plan(
                trt, onnx_path, plan, shapes, options, directory / f"timing-{facts['gpu']}.cache".replace(" ", "-")
            )
            log.info("tensorrt: built %s in %.0f s", plan.name, time.perf_counter() - started)
        checks = gate(capability, plan, onnx_path, graph["outputs"], bounds, trt, cuda, cuda_context)
        log.info("tensorrt: %s against onnxruntime fp32:\n%s", plan.name, verify.table(checks))
        if all(c.ok for c in checks):
            record = {**facts, "plan": plan.name, "sha256": manifest.sha256(plan), "bytes": plan.stat().st_size,
                      "gate": [c.as_dict() for c in checks]}  # fmt: skip
            _write_sidecar(plan, facts)
            return [record]
        plan.unlink(missing_ok=True)
        log.warning("tensorrt: %s missed the accuracy gate at fp32 level %r", plan.name, level)
    raise BuildError(
        f"{graph['path']}: no TensorRT engine agreed with ONNX Runtime, even with {FP32_LEVELS[-1]} in fp32"
    )


def _read_sidecar(plan: Path) -> dict | None:
    path = engine_cache.sidecar(plan)
    if not (plan.exists() and path.exists()):
        return None
    return json.loads(path.read_text())


def _write_sidecar(plan: Path, facts: dict) -> None:
    engine_cache.sidecar(plan).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
