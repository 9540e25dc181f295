"""Build one capability: load weights, export its graph(s), verify against transformers, describe it.

The CLI (``cli.py``) parses options into a ``BuildPlan``; this module follows the capability's recipe
(``recipes``) and returns its manifest entry. Per graph and precision it writes the exported graph, its
TensorRT variant (``tensorrt_onnx``) and for fp32 ONNX Runtime's optimised copy (``ort_optimised``), and
verifies each against the same transformers reference. A graph that fails verification is deleted with
everything made from it, never shipped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import manifest, samples
from ..contract import FRAME_PARAMETERS
from ..sizing import Sizing
from . import export, memory, ort_optimised, precision, tensorrt_onnx, trt_rules, verify, weights
from .errors import BuildError
from .recipes import Recipe, recipe_for
from .specs import DEFAULT_MODELS, FRAME_INPUT, OUTPUTS, ModelSpec, ShapeBounds, spec_for

log = logging.getLogger("build")


@dataclass
class BuildPlan:
    out: Path
    weights: str = "hub"  # "hub" | "demo"; a local path in ``local`` overrides it per role
    specs: dict[str, ModelSpec] = field(default_factory=dict)  # role -> spec (role: capability or "detector")
    local: dict[str, str] = field(default_factory=dict)  # role -> directory
    # capability -> fixed (h, w) model resolutions, one graph each; none: the processor's own sizing
    resolutions: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    bounds: ShapeBounds = field(default_factory=ShapeBounds)
    max_persons: int = 8
    class_chunk: int = 8
    seed: int = 0
    verify_sizes: tuple[tuple[int, int], ...] = samples.VERIFY_SIZES
    fp16: bool = True  # also an fp16 graph per resolution, for strongly typed TensorRT builds
    # keep-aspect graphs: at most this many times the patches of the processor's square (0: no budget)
    patch_budget: float = 2.0
    measure_memory: bool = True  # the ONNX Runtime proxy of each graph's memory (memory.py), a few seconds each


PROGRESS_EVERY_S = 10.0


@contextmanager
def step(what: str):
    """Log a step's start, a line every 10 s while it runs, and its duration: a long build is never silent."""
    log.info("%s ...", what)
    start = time.perf_counter()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            log.info("%s: still running (%.0f s)", what, time.perf_counter() - start)

    ticker = threading.Thread(target=tick, name="build-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def _load(plan: BuildPlan, role: str) -> weights.LoadedModel:
    spec = plan.specs.get(role) or spec_for(DEFAULT_MODELS[role])
    source = "local" if role in plan.local else plan.weights
    where = plan.local.get(role, spec.hf_id)
    with step(
        f"{role}: loading {spec.name} ({source} weights from {where})"
        if source != "demo"
        else f"{role}: building {spec.name} with seeded random weights (DEMO, not a real model)"
    ):
        if source == "local":
            return weights.load_local(spec, plan.local[role])
        if source == "demo":
            return weights.load_demo(spec, plan.seed)
        return weights.load_hub(spec)


def load_models(capability: str, plan: BuildPlan) -> dict[str, weights.LoadedModel]:
    """Every model a capability's graph is made of, by role."""
    return {role: _load(plan, role) for role in recipe_for(capability).roles}


def _model_entry(role: str, loaded: weights.LoadedModel) -> manifest.ModelRecord:
    spec = loaded.spec
    return manifest.ModelRecord(
        role=role,
        name=spec.name,
        hf_id=spec.hf_id,
        revision=loaded.revision,
        licence=spec.licence,
        weights=loaded.source,
        path=loaded.path,
        note=spec.note,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
    )


class Memo:
    """transformers' outputs already computed for one graph's verification, keyed by what they were computed from
    (the frames, and for pose's keypoints the boxes): the fp16 graph and every runtime's copy of a graph are
    compared with the very same reference, computed once."""

    def __init__(self):
        self._found: dict[tuple, Any] = {}

    def __call__(self, key: tuple, compute: Callable[[], Any]) -> Any:
        digest = tuple(_digest(part) for part in key)
        if digest not in self._found:
            self._found[digest] = compute()
        return self._found[digest]


def _digest(part) -> Any:
    if isinstance(part, np.ndarray):
        return (part.dtype.str, part.shape, hashlib.sha256(np.ascontiguousarray(part).tobytes()).hexdigest())
    return part


def reference_outputs(
    capability: str, loaded, frames: np.ndarray, sizing: Sizing, got: dict, memo: Memo | None = None
) -> dict[str, np.ndarray]:
    """What transformers makes of ``frames`` (``got``: the graph's outputs; pose keypoints use its boxes)."""
    return recipe_for(capability).reference(loaded, frames, sizing, got, memo or Memo())


def verify_graph(
    recipe: Recipe,
    path: Path,
    sizing: Sizing,
    loaded,
    plan: BuildPlan,
    tolerances=None,
    name: str | None = None,
    memo: Memo | None = None,
) -> list[verify.Check]:
    """Run the graph at ``path`` in ONNX Runtime on the verification frames and compare with transformers."""
    import onnxruntime as ort  # heavy; only needed once a graph exists

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = OUTPUTS[recipe.capability]
    parameters = [i.name for i in session.get_inputs() if i.name != FRAME_INPUT]
    memo = memo or Memo()

    def run(frames: np.ndarray, **given) -> dict[str, np.ndarray]:
        feeds = {n: np.full(len(frames), FRAME_PARAMETERS[n], np.float32) for n in parameters}
        return dict(zip(names, session.run(list(names), {FRAME_INPUT: frames, **feeds, **given})))

    checks = []
    for i, (batch, (h, w)) in enumerate(_batches(sizing, plan)):
        frames = samples.frames(h, w, batch, seed=plan.seed + i)
        got = run(frames)
        want = recipe.reference(loaded, frames, sizing, got, memo)
        label, graph = f"{batch}x{h}x{w}", name or path.name
        checks += verify.compare(recipe.capability, label, got, want, tolerances, graph=graph)
        if recipe.more_checks and (i == 0 or batch > 1):  # the first size and the batch: each costs two more runs
            checks += recipe.more_checks(run, frames, got, loaded, label, tolerances, graph, memo)
    return checks


def _batches(sizing: Sizing, plan: BuildPlan) -> list[tuple[int, tuple[int, int]]]:
    """(batch, frame size) of every verification batch: each size, a batch of two, the patch budget at work."""
    batches = [(1, hw) for hw in plan.verify_sizes] + [(min(2, plan.bounds.max_batch), plan.verify_sizes[0])]
    return batches + [(1, hw) for hw in sizing.budget_examples(plan.bounds.max_hw)]


class Exported(NamedTuple):
    """One graph at one precision rung, verified with what is made from it."""

    onnx: manifest.OnnxRecord | None  # None: the graph missed a tolerance and nothing was kept
    optimised: manifest.OptimisedCopy | None  # ONNX Runtime's copy (the fp32 graph's only)
    checks: list[verify.Check]


def export_verified(
    recipe: Recipe, stem: str, rung: str, sizing: Sizing, make, loaded, plan: BuildPlan, memo: Memo | None = None
) -> Exported:
    """Export one graph at one precision rung, write its TensorRT variant (and for fp32 ONNX Runtime's optimised
    copy), check TensorRT's rules on the variant as it is written, and verify all of them against transformers.

    The exported graph missing a tolerance gives ``onnx=None`` (the fp16 ladder then tries its next rung); a
    variant or copy that misses where the graph passes fails the build (``VerificationError`` naming the file):
    a rewrite changed the results. Every file is written under a ``.partial`` name and takes its own only once
    all of them are verified: an interrupted or failed build never leaves a graph that looks shippable.
    """
    graph = plan.out / f"{stem}.onnx"
    variant = tensorrt_onnx.name_for(graph)
    copy = ort_optimised.name_for(graph) if rung == "fp32" else None
    files = [graph, variant, *([copy] if copy else [])]
    partial = {file: file.with_name(file.name + ".partial") for file in files}
    tolerances = verify.TOLERANCES if rung == "fp32" else verify.FP16_TOLERANCES
    memo = memo or Memo()
    try:
        with step(f"{recipe.capability}: exporting {graph.name} ({precision.DESCRIPTIONS[rung]})"):
            export.export(make(rung), OUTPUTS[recipe.capability], partial[graph], example_hw=plan.bounds.opt_hw)
        with step(f"{recipe.capability}: writing {variant.name}, the graph as TensorRT is given it"):
            tensorrt_onnx.write(partial[graph], partial[variant], recipe.tensorrt_passes)
        trt_rules.enforce(partial[variant], name=variant.name)
        if copy is not None:
            with step(f"{recipe.capability}: writing {copy.name} as ONNX Runtime optimises {graph.name}"):
                ort_optimised.write(partial[graph], partial[copy], recipe.onnxruntime_passes)
        batches = len(_batches(sizing, plan))
        with step(f"{recipe.capability}: verifying {graph.name} against transformers on {batches} batches"):
            checks = verify_graph(recipe, partial[graph], sizing, loaded, plan, tolerances, graph.name, memo)
        log.info("%s verification (%s):\n%s", graph.name, rung, verify.table(checks))
        if not all(c.ok for c in checks):
            return Exported(None, None, checks)
        derived = []
        for file, what in ((variant, "its TensorRT variant"), (copy, "ONNX Runtime's optimised copy")):
            if file is None:
                continue
            with step(f"{recipe.capability}: verifying {file.name} ({what}) against the same reference"):
                found = verify_graph(recipe, partial[file], sizing, loaded, plan, tolerances, file.name, memo)
            log.info("%s verification (%s):\n%s", file.name, rung, verify.table(found))
            derived += found
        failed = [c for c in derived if not c.ok]
        if failed:
            names = ", ".join(sorted({c.graph for c in failed}))
            raise verify.VerificationError(
                failed,
                f"{names} disagrees with transformers where {graph.name} agrees (a rewrite changed its "
                "results; nothing of this graph is kept)",
            )
        for file in files:
            partial[file].replace(file)
    finally:
        for file in files:
            partial[file].unlink(missing_ok=True)
    record = manifest.OnnxRecord.of(
        graph, precision=rung, float_weights=export.float_weights(graph), tensorrt_onnx=manifest.FileRecord.of(variant)
    )
    return Exported(record, ort_optimised.record(copy) if copy else None, checks + derived)


def _fp16_graph(recipe: Recipe, stem: str, sizing: Sizing, make, loaded, plan: BuildPlan, memo: Memo):
    """The first fp16 rung whose graph passes verification, or (None, why)."""
    misses = []
    for rung in precision.FP16_RUNGS:
        exported = export_verified(recipe, f"{stem}.fp16", rung, sizing, make, loaded, plan, memo)
        if exported.onnx is not None:
            return exported.onnx, exported.checks
        failed = [f"{c.frames} {c.metric} {c.value:.4g} (limit {c.limit:g})" for c in exported.checks if not c.ok]
        misses.append(f"{rung}: " + "; ".join(failed[:3]))
        log.warning("%s: the %s graph missed verification; trying the next rung", stem, rung)
    log.warning("%s: no fp16 graph passed verification; TensorRT engines will be built from the fp32 graph", stem)
    return None, misses


def _export_all(recipe: Recipe, plan: BuildPlan, loaded) -> tuple[list[manifest.GraphRecord], list[verify.Check]]:
    """Every graph of the recipe's capability, each fp32 then its fp16 rung; raises when one misses verification."""
    graphs, all_checks = [], []
    for stem, sizing, make in recipe.graphs(plan, loaded):
        memo = Memo()  # one reference per graph, whatever the precision or the runtime's copy
        fp32 = export_verified(recipe, stem, "fp32", sizing, make, loaded, plan, memo)
        all_checks += fp32.checks
        if fp32.onnx is None or fp32.optimised is None:
            continue  # refuse to ship a graph that disagrees with the reference; judged below
        path = plan.out / fp32.onnx.path
        inputs, outputs = export.io_signature(path)
        graph = manifest.GraphRecord(
            **vars(fp32.onnx), sizing=sizing, inputs=inputs, outputs=outputs, onnxruntime=fp32.optimised
        )
        if plan.measure_memory:
            with step(f"{recipe.capability}: measuring {graph.path}'s memory at the costliest admitted frames"):
                frames = memory.costliest_frames(sizing, plan.bounds)
                graph.memory.onnxruntime_cpu = memory.measure_proxy(path, outputs, plan.bounds, frames)
        if plan.fp16:
            fp16, fp16_checks = _fp16_graph(recipe, stem, sizing, make, loaded, plan, memo)
            if fp16 is not None:
                graph.fp16 = fp16
                all_checks += fp16_checks
            else:
                graph.fp16_missed = fp16_checks
        graphs.append(graph)
    verify.judge(all_checks)
    return graphs, all_checks


VERIFIED_ON = (
    "onnxruntime CPUExecutionProvider: the fp32 graph, its TensorRT variant and ONNX Runtime's optimised copy with "
    "the fp32 tolerances; the fp16 graph and its TensorRT variant with the fp16 tolerances"
)


def build_capability(capability: str, plan: BuildPlan) -> manifest.CapabilityEntry:
    """Export and verify every graph of ``capability`` (fp32, then its fp16 rung); return its manifest entry."""
    recipe = recipe_for(capability)
    loaded = load_models(capability, plan)
    try:
        graphs, all_checks = _export_all(recipe, plan, loaded)
    except BuildError as err:  # name the models, so that an operator knows which directory to fix
        sources = ", ".join(f"{role}={m.path or m.spec.name} ({m.source})" for role, m in loaded.items())
        raise BuildError(f"{err} [models: {sources}]") from err
    return manifest.CapabilityEntry(
        capability=capability,
        graphs=graphs,
        models=[_model_entry(role, loaded[role]) for role in recipe.roles],
        demo=any(m.source == "demo" for m in loaded.values()),
        opset=export.OPSET,
        bounds=plan.bounds,
        options=recipe.options(plan, loaded),
        verification=manifest.Verification(
            reference="transformers (model + PIL image processor + post-processing)",
            backend=VERIFIED_ON,
            tolerances={"fp32": recipe.tolerances, "fp16": recipe.fp16_tolerances},
            checks=[c.as_dict() for c in all_checks],
        ),
    )


def build(capabilities: list[str], plan: BuildPlan) -> tuple[dict[str, manifest.CapabilityEntry], dict[str, str]]:
    """Build every capability; one that fails does not stop the others.

    Returns (manifest entries of those built, {capability: why it failed} for the others).
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    entries, failures = {}, {}
    for capability in capabilities:
        try:
            entries[capability] = build_capability(capability, plan)
        except BuildError as err:
            log.error("%s: %s", capability, err)
            failures[capability] = str(err)
        except Exception as err:  # an unexpected failure in one model must not cost the others
            log.exception("%s: unexpected failure", capability)
            failures[capability] = f"{type(err).__name__}: {err}"
    return entries, failures
