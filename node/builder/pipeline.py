"""Build one capability: load weights, export its graph(s), verify against transformers, describe it.

The CLI (``build_engines.py``) parses options into a ``BuildPlan``; this module does the work
and returns the manifest entry. A graph that fails verification is deleted, never shipped.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import samples
from ..manifest import sha256
from . import export, reference, verify, weights
from .errors import BuildError
from .graphs import DepthGraph, PoseGraph, SegmentationGraph, processor_resolution
from .specs import DEFAULT_MODELS, FRAME_INPUT, OUTPUTS, ModelSpec, ShapeBounds, roles_for, spec_for

log = logging.getLogger("build")


@dataclass
class BuildPlan:
    out: Path
    weights: str = "hub"  # "hub" | "demo"; a local path in ``local`` overrides it per role
    specs: dict[str, ModelSpec] = field(default_factory=dict)  # role -> spec (role: capability or "detector")
    local: dict[str, str] = field(default_factory=dict)  # role -> directory
    resolutions: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # capability -> [(h, w)]
    bounds: ShapeBounds = field(default_factory=ShapeBounds)
    max_persons: int = 8
    class_chunk: int = 8
    seed: int = 0
    verify_sizes: tuple[tuple[int, int], ...] = samples.VERIFY_SIZES


@contextmanager
def step(what: str):
    """Log a step's start and its duration, so long builds are never silent."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
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


def _model_entry(role: str, loaded: weights.LoadedModel) -> dict:
    spec = loaded.spec
    return {
        "role": role,
        "name": spec.name,
        "hf_id": spec.hf_id,
        "revision": loaded.revision,
        "licence": spec.licence,
        "weights": loaded.source,
        "path": loaded.path,
        "note": spec.note,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }


def _graphs(capability: str, plan: BuildPlan, loaded: dict[str, weights.LoadedModel]):
    """(file stem, resolution, torch graph) for each graph this capability ships."""
    if capability == "pose":
        det, pose = loaded["detector"], loaded["pose"]
        for res in plan.resolutions.get("pose") or [processor_resolution(det.processor)]:
            yield (
                f"pose-{res[0]}x{res[1]}-{plan.max_persons}p",
                res,
                PoseGraph(det.model, det.processor, pose.model, pose.processor, plan.max_persons, res),
            )
        return
    main = loaded[capability]
    for res in plan.resolutions.get(capability) or [processor_resolution(main.processor)]:
        if capability == "depth":
            graph = DepthGraph(main.model, main.processor, res)
        else:
            graph = SegmentationGraph(main.model, main.processor, res, plan.class_chunk)
        yield f"{capability}-{res[0]}x{res[1]}", res, graph


def reference_outputs(capability: str, loaded, frames: np.ndarray, resolution, got: dict) -> dict[str, np.ndarray]:
    """What transformers makes of ``frames`` (``got``: the graph's outputs; pose keypoints use its boxes)."""
    if capability == "depth":
        return reference.depth(loaded["depth"].model, loaded["depth"].processor, frames, resolution)
    if capability == "segmentation":
        return reference.segmentation(
            loaded["segmentation"].model, loaded["segmentation"].processor, frames, resolution
        )
    det, pose = loaded["detector"], loaded["pose"]
    persons = reference.person_boxes(det.model, det.processor, frames, len(got["boxes"][0]), resolution)
    want = {
        "boxes": np.stack([p["boxes"] for p in persons]),
        "box_scores": np.stack([p["scores"] for p in persons]),
        "tied_queries": np.array([p["tied_queries"] for p in persons]),
    }
    # Keypoints are judged on the graph's own boxes, as the issue asks ("for the same boxes").
    want.update(reference.keypoints(pose.model, pose.processor, frames, got["boxes"]))
    return want


def verify_graph(capability: str, path: Path, resolution, loaded, plan: BuildPlan) -> list[verify.Check]:
    """Run the exported graph in ONNX Runtime on sample frames and compare with transformers."""
    import onnxruntime as ort  # noqa: PLC0415 (heavy; only needed once a graph exists)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = OUTPUTS[capability]
    batches = [(1, hw) for hw in plan.verify_sizes] + [(min(2, plan.bounds.max_batch), plan.verify_sizes[0])]
    checks = []
    for i, (batch, (h, w)) in enumerate(batches):
        frames = samples.frames(h, w, batch, seed=plan.seed + i)
        got = dict(zip(names, session.run(list(names), {FRAME_INPUT: frames})))
        checks += verify.compare(
            capability, f"{batch}x{h}x{w}", got, reference_outputs(capability, loaded, frames, resolution, got)
        )
    return checks


def build_capability(capability: str, plan: BuildPlan) -> dict:
    """Export and verify every graph of ``capability``; return its manifest entry."""
    roles = roles_for(capability)
    loaded = load_models(capability, plan)
    graphs, all_checks = [], []
    for stem, resolution, graph in _graphs(capability, plan, loaded):
        path = plan.out / f"{stem}.onnx"
        with step(f"{capability}: exporting {path.name}"):
            export.export(graph, OUTPUTS[capability], path, example_hw=plan.bounds.opt_hw)
        with step(f"{capability}: verifying {path.name} against transformers on {len(plan.verify_sizes) + 1} batches"):
            checks = verify_graph(capability, path, resolution, loaded, plan)
        log.info("%s verification:\n%s", path.name, verify.table(checks))
        all_checks += checks
        if not all(c.ok for c in checks):
            path.unlink(missing_ok=True)  # refuse to ship a graph that disagrees with the reference
            continue
        graphs.append(
            {
                "path": path.name,
                "sha256": sha256(path),
                "bytes": path.stat().st_size,
                "resolution": list(resolution),
                **export.io_signature(path),
            }
        )
    verify.judge(all_checks)
    options = {"max_persons": plan.max_persons} if capability == "pose" else {}
    if capability == "segmentation":
        options = {
            "class_chunk": plan.class_chunk,
            "num_classes": loaded["segmentation"].model.config.num_labels,
            "labels": loaded["segmentation"].model.config.id2label,
        }
    return {
        "capability": capability,
        "graphs": graphs,
        "models": [_model_entry(role, loaded[role]) for role in roles],
        "demo": any(m.source == "demo" for m in loaded.values()),
        "opset": export.OPSET,
        "bounds": asdict(plan.bounds),
        "options": options,
        "verification": {
            "reference": "transformers (model + PIL image processor + post-processing)",
            "backend": "onnxruntime CPUExecutionProvider fp32",
            "checks": [c.as_dict() for c in all_checks],
        },
    }


def build(capabilities: list[str], plan: BuildPlan) -> dict[str, dict]:
    """Build every capability; raise ``BuildError`` naming all failures after trying them all."""
    plan.out.mkdir(parents=True, exist_ok=True)
    entries, failures = {}, []
    for capability in capabilities:
        try:
            entries[capability] = build_capability(capability, plan)
        except BuildError as err:
            log.error("%s: %s", capability, err)
            failures.append(f"{capability}: {err}")
    if failures:
        raise BuildError("\n".join(failures))
    return entries
