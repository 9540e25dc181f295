"""TensorRT engines from the verified ONNX graphs: one strongly typed build path for TensorRT 10, 11 and for RTX.

The engine's precision is the graph's (``precision``): every network is strongly typed, and no
builder flag or per-layer setting changes a type. For each graph: parse (a refusal names the node),
one optimisation profile spanning the frame bounds, a workspace limit, progress through
``IProgressMonitor``, and either a timing cache (TensorRT) or compute-capability targets (TensorRT
for RTX, which compiles ahead of time on any machine).

Which graph: the fp16 one where the export made it (the network body in fp16), else the fp32 one, each
read from its TensorRT variant on disk (``*.trt.onnx``, ``tensorrt_onnx``: verified at build time and
hashed in the manifest), which TensorRT's parser takes as it is. On a GPU with TensorRT the accuracy
gate runs each engine against ONNX Runtime (fp32) on the sample frames; an fp16 engine that misses
gives way to the fp32 graph, the ladder's last rung, and a graph with no agreeing engine is refused.
TensorRT for RTX engines are specialised on the RTX card at their first run, so their gate is the
self-test there. ``compile_check`` compiles every graph's TensorRT variants, keeps nothing, and is
what CI runs with TensorRT for RTX on a CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .. import manifest
from ..contract import FRAME_INPUT, FRAME_PARAMETERS, ShapeBounds
from ..runtime.cuda import SharedScratch, gpu_identity, gpu_tag, load_pycuda
from ..runtime.flavours import TENSORRT, TENSORRT_RTX, Flavour
from ..runtime.onnxruntime import OnnxRuntimeBackend
from ..runtime.tensorrt import TensorRTBackend, load_tensorrt
from . import engine_files, tensorrt_onnx, trt_memory, verify
from .errors import BuildError

log = logging.getLogger("build")

PRECISIONS = ("auto", "fp16", "fp32")  # auto: the fp16 graph, and on a gate miss the fp32 one


def _monitor(trt):
    """An IProgressMonitor that logs each build phase once, with its duration."""

    # The class of the module given (tensorrt or tensorrt_rtx, imported at run time): a base class mypy cannot see.
    monitor: Any = trt.IProgressMonitor

    class Progress(monitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:  # the top-level phases; nested ones are logged only when they take long
                log.info("tensorrt: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            took = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
            if took > 1:
                log.info("tensorrt: %s done in %.1f s", phase_name, took)

    return Progress()


def parser_errors(parser) -> str:
    """The parser's refusals, each naming the node and its operator (the text's first line says why)."""
    refusals = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        # The description's lines, less the repeated node name and any CUDA complaint of a GPU-less builder.
        said = [line for line in str(error.desc()).splitlines() if line.strip() and "cudaError" not in line]
        reason = "; ".join(line for line in said if not line.startswith("Invalid Node")) or "; ".join(said)
        refusals.append(f"node '{error.node_name()}' ({error.node_operator()}): {error.code().name}: {reason}".rstrip())
    return "\n  ".join(refusals)


def build_plan(
    trt, flavour: Flavour, onnx_path: Path, shapes: dict, options: dict, timing_cache: Path | None = None
) -> tuple[bytes, dict[str, int]]:
    """Compile one ONNX graph into a serialized engine (strongly typed); raise BuildError naming what failed.

    Returns the plan and the device memory the builder says it needs at the profile's largest shapes
    (``trt_memory``: activation scratch, weights; empty where the builder did not say).
    """
    logger = trt_memory.recording_logger(trt)
    logger.figures.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # the file as it is: the TensorRT variant (tensorrt_onnx)
        raise BuildError(f"{onnx_path.name}: {flavour.module}'s ONNX parser refused it:\n  {parser_errors(parser)}")
    config = builder.create_builder_config()
    if options.get("workspace_gib"):  # unset: TensorRT's default, the GPU's memory
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_gib"] * (1 << 30)))
    try:
        flavour.set_targets(trt, config, tuple(options.get("targets", ())))
    except ValueError as err:
        raise BuildError(str(err)) from None
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in {**shapes, **_parameter_shapes(network, shapes)}.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _monitor(trt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx_path.name}: {flavour.module} could not build an engine (see its log above)")
    if timing_cache is not None:
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(plan)), dict(logger.figures)


def _parameter_shapes(network, shapes: dict) -> dict:
    """The graph's per-frame parameters ([N] each) follow the frames' batch range in the profile."""
    low, opt, high = (shape[:1] for shape in shapes[FRAME_INPUT])
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    return {name: (low, opt, high) for name in names if name in FRAME_PARAMETERS}


def candidates(directory: Path, graph: manifest.GraphRecord, precision: str) -> list[tuple[str, Path, str]]:
    """(rung, file to build from, its SHA-256), in order: the fp16 graph first unless fp32 is asked for."""
    fp32 = (graph.precision, directory / graph.tensorrt_onnx.path, graph.tensorrt_onnx.sha256)
    if precision == "fp32":
        return [fp32]
    if graph.fp16 is None:
        if precision == "fp16":
            raise BuildError(f"{graph.path}: no fp16 graph was exported beside it (built with --no-fp16?)")
        log.warning("%s: no fp16 graph beside it: the engine will be fp32", graph.path)
        return [fp32]
    source = graph.fp16.tensorrt_onnx
    first = (graph.fp16.precision, directory / source.path, source.sha256)
    return [first] if precision == "fp16" else [first, fp32]


def _graphs(directory: Path, capabilities: list[str]):
    """(capability, its manifest entry, graph record) for every graph listed for ``capabilities``."""
    data = manifest.read(directory, only=capabilities)
    for capability in capabilities:
        entry = data.capabilities[capability]
        for graph in entry.graphs:
            yield capability, entry, graph


def compile_check(
    directory: Path,
    capabilities: list[str],
    flavour: Flavour = TENSORRT_RTX,
    max_batch: int = 1,
    workspace_gib: float | None = None,
) -> list[dict]:
    """Compile every graph (fp32 and fp16) of ``capabilities`` and keep nothing; one row per graph.

    Raises BuildError naming every graph that did not parse or build, after trying them all.
    """
    trt = load_tensorrt(flavour)
    rows, failures = [], []
    for capability, entry, graph in _graphs(directory, capabilities):
        shapes = engine_files.profile_shapes(entry.bounds, max_batch)
        for file in graph.onnx_files:
            rung, path = file.precision, directory / file.tensorrt_onnx.path
            started = time.perf_counter()
            try:
                plan, memory = build_plan(trt, flavour, path, shapes, {"workspace_gib": workspace_gib})
            except BuildError as err:
                failures.append(str(err))
                log.error("%s", err)
                continue
            took = time.perf_counter() - started
            rows.append(
                {
                    "capability": capability,
                    "graph": path.name,
                    "precision": rung,
                    "seconds": took,
                    "bytes": len(plan),
                    "memory": memory,
                }
            )
            log.info("%s: %s compiled it in %.1f s (%.1f MB)", path.name, flavour.module, took, len(plan) / 1e6)
    if failures:
        raise BuildError("\n".join(failures))
    return rows


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


def build_engines(
    directory: Path,
    capabilities: list[str],
    *,
    flavour: Flavour = TENSORRT,
    workspace_gib: float | None = None,
    max_batch: int = 1,
    precision: str = "auto",
    targets: tuple[str, ...] = (),
) -> dict:
    """Build (or reuse) an engine for every graph of ``capabilities`` in ``directory``; return the manifest entries.

    TensorRT: for this GPU, gated. TensorRT for RTX: ahead of time for ``targets`` (its default set when
    empty), no GPU needed, gated by the self-test on the RTX card.
    """
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    trt = load_tensorrt(flavour)
    base = {"workspace_gib": workspace_gib, "max_batch": max_batch}
    builder: _Builder
    if flavour.builds_without_gpu:
        builder = _RtxBuilder(trt, directory, {**base, "targets": list(targets)}, precision)
        return _build_all(directory, capabilities, builder, trt.__version__)
    cuda, cuda_context = load_pycuda()
    cuda_context.push()
    try:
        gpu = gpu_identity(cuda)
        builder = _GatedBuilder(trt, directory, base, precision, gpu, cuda, cuda_context)
        return _build_all(directory, capabilities, builder, trt.__version__)
    finally:
        cuda.Context.pop()


def _build_all(directory: Path, capabilities: list[str], builder, version: str) -> dict[str, manifest.CapabilityEntry]:
    entries, failures = {}, []
    for capability, entry, graph in _graphs(directory, capabilities):
        try:
            here = builder.engine_for(capability, graph, entry.bounds)
        except BuildError as err:
            log.error("%s", err)
            failures.append(str(err))
            continue
        # Engines of other GPUs, runtimes or versions (a shared cache volume) stay listed.
        others = [e for e in graph.tensorrt if not builder.same_slot(e, version)]
        graph.tensorrt = [here, *others]
        entries[capability] = entry
    if failures:
        raise BuildError("\n".join(failures))
    return entries


class _Builder:
    """Reuse an engine whose sidecar matches, else build it; shared by both flavours."""

    flavour: Flavour

    def __init__(self, trt, directory: Path, base: dict, precision: str, gpu: dict | None = None):
        self.trt, self.directory, self.base, self.precision, self.gpu = trt, directory, base, precision, gpu

    def same_slot(self, engine: manifest.EngineRecord, version: str) -> bool:
        """Whether ``engine`` is the one this builder (re)places: same runtime, version and machine or targets."""
        if engine.runtime != self.flavour.backend or engine.tensorrt != version:
            return False
        if self.flavour is TENSORRT_RTX:
            return engine.targets == self.base["targets"]
        assert self.gpu is not None  # TensorRT builds on (and for) this GPU
        return engine.gpu == self.gpu["name"]

    def _engine(
        self, rung: str, onnx_path: Path, onnx_sha: str, bounds: ShapeBounds
    ) -> tuple[manifest.EngineFacts, Path, dict]:
        """(facts, plan path, what the build said: seconds and device memory), building only when no match."""
        shapes = engine_files.profile_shapes(bounds, self.base["max_batch"])
        options = {**self.base, "precision": rung, "profile": {k: [list(s) for s in v] for k, v in shapes.items()}}
        facts = engine_files.wanted(onnx_sha, self.flavour, self.trt.__version__, options, self.gpu)
        plan = engine_files.engine_path(self.directory, _stem(onnx_path), facts)
        found = engine_files.read_sidecar(plan)
        decision, why = engine_files.decide(found, facts)
        log.info("%s: %s: %s (%s)", self.flavour.backend, plan.name, decision, why)
        built = {"build_seconds": found.build_seconds, "device_memory": found.device_memory} if found else {}
        if decision == "build":
            started = time.perf_counter()
            data, memory = build_plan(self.trt, self.flavour, onnx_path, shapes, options, self.timing_cache)
            plan.write_bytes(data)
            built = {"build_seconds": round(time.perf_counter() - started, 1), "device_memory": memory}
            size = plan.stat().st_size / 1e6
            log.info("%s: built %s in %.0f s (%.1f MB)", self.flavour.backend, plan.name, built["build_seconds"], size)
        return facts, plan, built

    @property
    def timing_cache(self) -> Path | None:
        if not self.flavour.timing_cache:
            return None
        assert self.gpu is not None  # TensorRT, which keeps a timing cache, builds on this GPU
        return self.directory / f"timing-{gpu_tag(self.gpu['name'], self.gpu['compute_capability'])}.cache"

    def _record(self, facts: manifest.EngineFacts, plan: Path, built: dict, gate_checks) -> manifest.EngineRecord:
        record = manifest.EngineRecord(
            **vars(facts),
            plan=plan.name,
            sha256=manifest.sha256(plan),
            bytes=plan.stat().st_size,
            **built,
            gate=gate_checks,
        )
        engine_files.write_sidecar(plan, record)
        return record


class _RtxBuilder(_Builder):
    """TensorRT for RTX: ahead of time, no GPU, the first candidate graph (fp16 unless fp32 is asked for)."""

    flavour = TENSORRT_RTX

    def engine_for(self, capability: str, graph: manifest.GraphRecord, bounds: ShapeBounds) -> manifest.EngineRecord:
        rung, onnx_path, onnx_sha = candidates(self.directory, graph, self.precision)[0]
        facts, plan, built = self._engine(rung, onnx_path, onnx_sha, bounds)
        return self._record(facts, plan, built, None)  # gate: the self-test on the RTX card


class _GatedBuilder(_Builder):
    """TensorRT on this GPU: each candidate is built and gated; the first that agrees is kept."""

    flavour = TENSORRT

    def __init__(self, trt, directory, base, precision, gpu, cuda, cuda_context):
        super().__init__(trt, directory, base, precision, gpu)
        self.cuda, self.cuda_context = cuda, cuda_context

    def engine_for(self, capability: str, graph: manifest.GraphRecord, bounds: ShapeBounds) -> manifest.EngineRecord:
        reference, tried = self.directory / graph.path, []
        for rung, onnx_path, onnx_sha in candidates(self.directory, graph, self.precision):
            tried.append(rung)
            facts, plan, built = self._engine(rung, onnx_path, onnx_sha, bounds)
            outputs = tuple(o.as_dict() for o in graph.outputs)
            checks = gate(capability, plan, reference, outputs, bounds, self.trt, self.cuda, self.cuda_context)
            log.info("tensorrt: %s (%s) against onnxruntime fp32:\n%s", plan.name, rung, verify.table(checks))
            if all(c.ok for c in checks):
                return self._record(facts, plan, built, [c.as_dict() for c in checks])
            plan.unlink(missing_ok=True)
            engine_files.sidecar(plan).unlink(missing_ok=True)
            log.warning("tensorrt: the %s engine of %s missed the accuracy gate", rung, graph.path)
        raise BuildError(f"{graph.path}: no TensorRT engine agreed with ONNX Runtime (tried: {', '.join(tried)})")


def _stem(onnx_path: Path) -> str:
    """The name an engine's plan starts with: its graph's (``depth-518x518-aspect.fp16``), less ``.trt.onnx``."""
    return onnx_path.name.removesuffix(tensorrt_onnx.SUFFIX).removesuffix(".onnx")
