"""Build one capability: load weights, export its graph(s), verify against transformers, describe it.

The CLI (``build_engines.py``) parses options into a ``BuildPlan``; this module does the work
and returns the manifest entry. A graph that fails verification is deleted, never shipped.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .. import manifest, samples
from ..contract import FRAME_PARAMETERS
from ..sizing import Sizing
from . import export, memory, ort_optimised, precision, reference, trt_rules, verify, weights
from .errors import BuildError
from .graphs import DepthGraph, SegmentationGraph
from .pose_graph import PoseGraph
from .specs import DEFAULT_MODELS, FRAME_INPUT, OUTPUTS, ModelSpec, ShapeBounds, roles_for, spec_for

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
    return {role: _load(plan, role) for role in roles_for(capability)}


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


def _sizings(capability: str, plan: BuildPlan, processor) -> list[Sizing]:
    fixed = plan.resolutions.get(capability)
    if fixed:
        return [Sizing.fixed(*hw) for hw in fixed]
    sizing = Sizing.of_processor(processor)
    if sizing.keep_aspect_ratio and plan.patch_budget:
        square = (sizing.height // sizing.multiple) * (sizing.width // sizing.multiple)
        sizing = dataclasses.replace(sizing, max_patches=int(plan.patch_budget * square))
    return [sizing]


def _stem(capability: str, sizing: Sizing) -> str:
    suffix = "-aspect" if sizing.keep_aspect_ratio else ""
    return f"{capability}-{sizing.height}x{sizing.width}{suffix}"


def _graphs(capability: str, plan: BuildPlan, loaded: dict[str, weights.LoadedModel]):
    """(file stem, sizing, graph maker) for each graph this capability ships; the maker takes a precision rung."""
    bounds = plan.bounds
    if capability == "pose":
        det, pose = loaded["detector"], loaded["pose"]
        for sizing in _sizings("pose", plan, det.processor):
            yield (
                f"{_stem('pose', sizing)}-{plan.max_persons}p",
                sizing,
                lambda rung, sizing=sizing: PoseGraph(
                    det.model, det.processor, pose.model, pose.processor, plan.max_persons, sizing, bounds, rung=rung
                ),
            )
        return
    main = loaded[capability]
    for sizing in _sizings(capability, plan, main.processor):
        make: Callable[..., nn.Module]  # make(rung): the graph at that precision rung
        if capability == "depth":
            make = lambda rung, sizing=sizing: DepthGraph(main.model, main.processor, sizing, bounds, rung=rung)  # noqa: E731
        else:
            make = lambda rung, sizing=sizing: SegmentationGraph(  # noqa: E731
                main.model, main.processor, sizing, bounds, plan.class_chunk, rung=rung
            )
        yield _stem(capability, sizing), sizing, make


def reference_outputs(capability: str, loaded, frames: np.ndarray, sizing: Sizing, got: dict) -> dict[str, np.ndarray]:
    """What transformers makes of ``frames`` (``got``: the graph's outputs; pose keypoints use its boxes)."""
    if capability == "depth":
        return reference.depth(loaded["depth"].model, loaded["depth"].processor, frames, sizing)
    if capability == "segmentation":
        return reference.segmentation(
            loaded["segmentation"].model, loaded["segmentation"].processor, frames, sizing
        )
    det, pose = loaded["detector"], loaded["pose"]
    persons = reference.person_boxes(det.model, det.processor, frames, len(got["boxes"][0]), sizing)
    want = {
        "boxes": np.stack([p["boxes"] for p in persons]),
        "box_scores": np.stack([p["scores"] for p in persons]),
        "tied_queries": np.array([p["tied_queries"] for p in persons]),
    }
    # Keypoints are judged on the graph's own boxes, as the issue asks ("for the same boxes").
    want.update(reference.keypoints(pose.model, pose.processor, frames, got["boxes"]))
    return want


def verify_graph(
    capability: str, path: Path, sizing: Sizing, loaded, plan: BuildPlan, tolerances=None, name: str | None = None
) -> list[verify.Check]:
    """Run the exported graph in ONNX Runtime on sample frames and compare with transformers."""
    import onnxruntime as ort  # heavy; only needed once a graph exists

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = OUTPUTS[capability]
    parameters = [i.name for i in session.get_inputs() if i.name != FRAME_INPUT]

    def run(frames: np.ndarray, **given) -> dict[str, np.ndarray]:
        feeds = {n: np.full(len(frames), FRAME_PARAMETERS[n], np.float32) for n in parameters}
        return dict(zip(names, session.run(list(names), {FRAME_INPUT: frames, **feeds, **given})))

    batches = [(1, hw) for hw in plan.verify_sizes] + [(min(2, plan.bounds.max_batch), plan.verify_sizes[0])]
    batches += [(1, hw) for hw in sizing.budget_examples(plan.bounds.max_hw)]  # the patch budget at work
    checks = []
    for i, (batch, (h, w)) in enumerate(batches):
        frames = samples.frames(h, w, batch, seed=plan.seed + i)
        got = run(frames)
        want = reference_outputs(capability, loaded, frames, sizing, got)
        label, graph = f"{batch}x{h}x{w}", name or path.name
        checks += verify.compare(capability, label, got, want, tolerances, graph=graph)
        if capability == "pose" and (i == 0 or batch > 1):  # the first size and the batch: each costs two more runs
            checks += _served_persons_checks(run, frames, got["box_scores"], loaded["pose"], label, tolerances, graph)
    return checks


def _served_persons_checks(run, frames, box_scores, pose, label: str, tolerances, graph: str) -> list[verify.Check]:
    """At a threshold that serves half the slots, and at one that serves none: the keypoint model ran
    on the first k slots (k: the most any frame keeps) as transformers does for those boxes alone,
    and every slot after them is zero."""
    half = np.sort(box_scores, axis=1)[:, ::-1][:, (box_scores.shape[1] - 1) // 2]
    checks = []
    for threshold, what in ((half, "half"), (np.full(len(frames), 2.0, np.float32), "none")):
        got = run(frames, person_threshold=threshold.astype(np.float32))
        k = int((got["box_scores"] >= threshold[:, None]).sum(axis=1).max())
        served = {key: got[key][:, :k] for key in ("keypoints", "keypoint_scores")}
        if k:
            want = reference.keypoints(pose.model, pose.processor, frames, got["boxes"][:, :k])
            checks += verify.compare("pose", f"{label} {what} ({k} served)", served, want, tolerances, graph=graph)
        stray = sum(int(np.count_nonzero(got[key][:, k:])) for key in ("keypoints", "keypoint_scores"))
        checks.append(verify.Check("pose", f"{label} {what} ({k} served)", "unserved_slot_values", stray, 0,
                                   "keypoint values in slots past the served ones", graph=graph))
    return checks


def export_verified(capability: str, stem: str, rung: str, sizing: Sizing, make, loaded, plan: BuildPlan):
    """Export one graph at one precision rung, check TensorRT's rules, verify it against transformers.

    Returns (manifest entry or None when it missed a tolerance, checks). The file is written under
    a ``.partial`` name and takes its real name only once verified: an interrupted or failed build
    never leaves a graph that looks shippable.
    """
    final = plan.out / f"{stem}.onnx"
    partial = final.with_name(final.name + ".partial")
    tolerances = verify.TOLERANCES if rung == "fp32" else verify.FP16_TOLERANCES
    try:
        with step(f"{capability}: exporting {final.name} ({precision.DESCRIPTIONS[rung]})"):
            export.export(make(rung), OUTPUTS[capability], partial, example_hw=plan.bounds.opt_hw)
        trt_rules.enforce(partial, name=final.name)
        batches = len(plan.verify_sizes) + 1 + len(sizing.budget_examples(plan.bounds.max_hw))
        with step(f"{capability}: verifying {final.name} against transformers on {batches} batches"):
            checks = verify_graph(capability, partial, sizing, loaded, plan, tolerances, name=final.name)
        log.info("%s verification (%s):\n%s", final.name, rung, verify.table(checks))
        if not all(c.ok for c in checks):
            return None, checks
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return manifest.OnnxRecord.of(final, precision=rung, float_weights=export.float_weights(final)), checks


def _fp16_graph(capability: str, stem: str, sizing: Sizing, make, loaded, plan: BuildPlan):
    """The first fp16 rung whose graph passes verification, or (None, why)."""
    misses = []
    for rung in precision.FP16_RUNGS:
        entry, checks = export_verified(capability, f"{stem}.fp16", rung, sizing, make, loaded, plan)
        if entry is not None:
            return entry, checks
        failed = [f"{c.frames} {c.metric} {c.value:.4g} (limit {c.limit:g})" for c in checks if not c.ok]
        misses.append(f"{rung}: " + "; ".join(failed[:3]))
        log.warning("%s: the %s graph missed verification; trying the next rung", stem, rung)
    log.warning("%s: no fp16 graph passed verification; TensorRT engines will be built from the fp32 graph", stem)
    return None, misses


def _export_all(capability: str, plan: BuildPlan, loaded) -> tuple[list[manifest.GraphRecord], list[verify.Check]]:
    """Every graph of ``capability``, each fp32 then its fp16 rung; raises when one misses verification."""
    graphs, all_checks = [], []
    for stem, sizing, make in _graphs(capability, plan, loaded):
        onnx, checks = export_verified(capability, stem, "fp32", sizing, make, loaded, plan)
        all_checks += checks
        if onnx is None:
            continue  # refuse to ship a graph that disagrees with the reference; judged below
        path = plan.out / onnx.path
        inputs, outputs = export.io_signature(path)
        with step(f"{capability}: writing {onnx.path} as ONNX Runtime optimises it"):
            optimised = ort_optimised.write(path)
        graph = manifest.GraphRecord(**vars(onnx), sizing=sizing, inputs=inputs, outputs=outputs, onnxruntime=optimised)
        if plan.measure_memory:
            with step(f"{capability}: measuring {onnx.path}'s memory at the costliest admitted frames"):
                frames = memory.costliest_frames(sizing, plan.bounds)
                graph.memory.onnxruntime_cpu = memory.measure_proxy(path, outputs, plan.bounds, frames)
        if plan.fp16:
            fp16, fp16_checks = _fp16_graph(capability, stem, sizing, make, loaded, plan)
            if fp16 is not None:
                graph.fp16 = fp16
                all_checks += fp16_checks
            else:
                graph.fp16_missed = fp16_checks
        graphs.append(graph)
    verify.judge(all_checks)
    return graphs, all_checks


def build_capability(capability: str, plan: BuildPlan) -> manifest.CapabilityEntry:
    """Export and verify every graph of ``capability`` (fp32, then its fp16 rung); return its manifest entry."""
    roles = roles_for(capability)
    loaded = load_models(capability, plan)
    try:
        graphs, all_checks = _export_all(capability, plan, loaded)
    except BuildError as err:  # name the models, so that an operator knows which directory to fix
        sources = ", ".join(f"{role}={m.path or m.spec.name} ({m.source})" for role, m in loaded.items())
        raise BuildError(f"{err} [models: {sources}]") from err
    options: dict[str, Any] = {"max_persons": plan.max_persons} if capability == "pose" else {}
    if capability == "segmentation":
        options = {
            "class_chunk": plan.class_chunk,
            "num_classes": loaded["segmentation"].model.config.num_labels,
            "labels": loaded["segmentation"].model.config.id2label,
        }
    return manifest.CapabilityEntry(
        capability=capability,
        graphs=graphs,
        models=[_model_entry(role, loaded[role]) for role in roles],
        demo=any(m.source == "demo" for m in loaded.values()),
        opset=export.OPSET,
        bounds=plan.bounds,
        options=options,
        verification=manifest.Verification(
            reference="transformers (model + PIL image processor + post-processing)",
            backend="onnxruntime CPUExecutionProvider (fp32 graph: fp32 tolerances; fp16 graph: fp16 tolerances)",
            tolerances={"fp32": verify.TOLERANCES[capability], "fp16": verify.FP16_TOLERANCES[capability]},
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
