"""One recipe per capability: how its graphs are made, what they are compared with, and how each runtime's
copy is rewritten. ``pipeline`` follows a recipe; it has no branch on a capability's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnx
from torch import nn

from ..sizing import Sizing
from . import reference, verify
from .graphs import DepthGraph, SegmentationGraph
from .passes import selects
from .pose_graph import PoseGraph
from .specs import CAPABILITIES, roles_for
from .weights import LoadedModel

Loaded = Mapping[str, LoadedModel]  # role -> model
Pass = Callable[[onnx.ModelProto], Any]  # rewrites a graph in place


class GraphPlan(NamedTuple):
    """One graph a capability ships: its file stem, its sizing, and ``make(rung)``, the graph at a precision rung."""

    stem: str
    sizing: Sizing
    make: Callable[[str], nn.Module]


@dataclass(frozen=True)
class Recipe:
    capability: str
    roles: tuple[str, ...]  # the models its graph is made of (the role keys of ``Loaded``)
    # (plan, loaded, sizing) -> the graph maker for that sizing: make(rung) is the graph at that precision rung
    make: Callable[[Any, Loaded, Sizing], Callable[[str], nn.Module]]
    # The sizing's source: the processor of this role (its resolution, and for depth its keep-aspect rule).
    sized_by: str
    # What transformers makes of the frames: (loaded, frames, sizing, the graph's outputs, memo) -> arrays
    reference: Callable[..., dict[str, np.ndarray]]
    # Rewrites of the exported graph for each runtime's copy, in order (``passes``): TensorRT's variant
    # (``*.trt.onnx``), ONNX Runtime's optimised copy (``*.ort.onnx``, before ONNX Runtime's own).
    tensorrt_passes: tuple[Pass, ...]
    onnxruntime_passes: tuple[Pass, ...] = ()
    stem_suffix: Callable[[Any], str] = lambda plan: ""
    options: Callable[[Any, Loaded], dict[str, Any]] = lambda plan, loaded: {}
    # More checks on a verified batch: (run, frames, got, loaded, label, tolerances, graph name) -> checks
    more_checks: Callable[..., list[verify.Check]] | None = None

    @property
    def tolerances(self) -> dict[str, float]:
        return verify.TOLERANCES[self.capability]

    @property
    def fp16_tolerances(self) -> dict[str, float]:
        return verify.FP16_TOLERANCES[self.capability]

    def graphs(self, plan, loaded: Loaded) -> Iterator[GraphPlan]:
        """Each graph this capability ships: one per fixed resolution asked for, else the processor's sizing."""
        for sizing in _sizings(self.capability, plan, loaded[self.sized_by].processor):
            stem = f"{_stem(self.capability, sizing)}{self.stem_suffix(plan)}"
            yield GraphPlan(stem, sizing, self.make(plan, loaded, sizing))


def _sizings(capability: str, plan, processor) -> list[Sizing]:
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


# ------------------------------------------------------------------------------------------------- depth


def _depth_graph(plan, loaded: Loaded, sizing: Sizing) -> Callable[[str], nn.Module]:
    main = loaded["depth"]
    return lambda rung: DepthGraph(main.model, main.processor, sizing, plan.bounds, rung=rung)


def _depth_reference(loaded: Loaded, frames, sizing: Sizing, got, memo) -> dict[str, np.ndarray]:
    main = loaded["depth"]
    return memo(("depth", frames), lambda: reference.depth(main.model, main.processor, frames, sizing))


# ------------------------------------------------------------------------------------------ segmentation


def _segmentation_graph(plan, loaded: Loaded, sizing: Sizing) -> Callable[[str], nn.Module]:
    main = loaded["segmentation"]
    return lambda rung: SegmentationGraph(main.model, main.processor, sizing, plan.bounds, plan.class_chunk, rung=rung)


def _segmentation_reference(loaded: Loaded, frames, sizing: Sizing, got, memo) -> dict[str, np.ndarray]:
    main = loaded["segmentation"]
    return memo(("segmentation", frames), lambda: reference.segmentation(main.model, main.processor, frames, sizing))


def _segmentation_options(plan, loaded: Loaded) -> dict[str, Any]:
    config = loaded["segmentation"].model.config
    return {"class_chunk": plan.class_chunk, "num_classes": config.num_labels, "labels": config.id2label}


# ------------------------------------------------------------------------------------------------- pose


def _pose_graph(plan, loaded: Loaded, sizing: Sizing) -> Callable[[str], nn.Module]:
    det, pose = loaded["detector"], loaded["pose"]
    return lambda rung: PoseGraph(
        det.model, det.processor, pose.model, pose.processor, plan.max_persons, sizing, plan.bounds, rung=rung
    )


def _keypoints(loaded: Loaded, frames, boxes, memo) -> dict[str, np.ndarray]:
    pose = loaded["pose"]
    return memo(("keypoints", frames, boxes), lambda: reference.keypoints(pose.model, pose.processor, frames, boxes))


def _pose_reference(loaded: Loaded, frames, sizing: Sizing, got, memo) -> dict[str, np.ndarray]:
    det = loaded["detector"]
    slots = len(got["boxes"][0])
    persons = memo(
        ("persons", frames, np.array(slots)),
        lambda: reference.person_boxes(det.model, det.processor, frames, slots, sizing),
    )
    want = {
        "boxes": np.stack([p["boxes"] for p in persons]),
        "box_scores": np.stack([p["scores"] for p in persons]),
        "tied_queries": np.array([p["tied_queries"] for p in persons]),
    }
    # Keypoints are judged on the graph's own boxes, as the issue asks ("for the same boxes").
    want.update(_keypoints(loaded, frames, got["boxes"], memo))
    return want


def _served_persons_checks(run, frames, got, loaded: Loaded, label: str, tolerances, graph: str, memo):
    """At a threshold that serves half the slots, and at one that serves none: the keypoint model ran
    on the first k slots (k: the most any frame keeps) as transformers does for those boxes alone,
    and every slot after them is zero."""
    box_scores = got["box_scores"]
    half = np.sort(box_scores, axis=1)[:, ::-1][:, (box_scores.shape[1] - 1) // 2]
    checks = []
    for threshold, what in ((half, "half"), (np.full(len(frames), 2.0, np.float32), "none")):
        served_run = run(frames, person_threshold=threshold.astype(np.float32))
        k = int((served_run["box_scores"] >= threshold[:, None]).sum(axis=1).max())
        served = {key: served_run[key][:, :k] for key in ("keypoints", "keypoint_scores")}
        if k:
            want = _keypoints(loaded, frames, served_run["boxes"][:, :k], memo)
            checks += verify.compare("pose", f"{label} {what} ({k} served)", served, want, tolerances, graph=graph)
        stray = sum(int(np.count_nonzero(served_run[key][:, k:])) for key in ("keypoints", "keypoint_scores"))
        checks.append(
            verify.Check(
                "pose",
                f"{label} {what} ({k} served)",
                "unserved_slot_values",
                stray,
                0,
                "keypoint values in slots past the served ones",
                graph=graph,
            )
        )
    return checks


# ------------------------------------------------------------------------------------------------ recipes

RECIPES: dict[str, Recipe] = {
    recipe.capability: recipe
    for recipe in (
        Recipe(
            capability="depth",
            roles=roles_for("depth"),
            make=_depth_graph,
            sized_by="depth",
            reference=_depth_reference,
            # the resize's pass order as a select; the frame cast first
            tensorrt_passes=(selects.shape_decided_ifs_as_selects, selects.cast_frames_first),
        ),
        Recipe(
            capability="segmentation",
            roles=roles_for("segmentation"),
            make=_segmentation_graph,
            sized_by="segmentation",
            reference=_segmentation_reference,
            options=_segmentation_options,
            # every If stays: the resize's pass order and the argmax fallback's blocks (TensorRT for RTX builds them)
            tensorrt_passes=(selects.cast_frames_first_in_branches,),
        ),
        Recipe(
            capability="pose",
            roles=roles_for("pose"),
            make=_pose_graph,
            sized_by="detector",  # the detector's input resolution names the graph
            reference=_pose_reference,
            stem_suffix=lambda plan: f"-{plan.max_persons}p",
            options=lambda plan, loaded: {"max_persons": plan.max_persons},
            more_checks=_served_persons_checks,
            # the gate as a select until a card runs it (builder/README.md); the resize's pass order stays an If
            tensorrt_passes=(selects.gate_as_select, selects.cast_frames_first_in_branches),
        ),
    )
}
assert tuple(RECIPES) == CAPABILITIES, "a recipe per capability, in the contract's order"


def recipe_for(capability: str) -> Recipe:
    return RECIPES[capability]
