"""The transformers reference for each graph: model + image processor + post-processing.

Same weights, same frames, the library's own code path; the graphs are judged against these.
Each takes the graph's ``Sizing``: for a graph that sizes as the processor does (the default),
the processor runs with its own settings, exactly as ``pipeline("depth-estimation")`` does; for
a fixed-resolution graph it is asked for that resolution; for a frame over a keep-aspect graph's
patch budget, for the size the budget picks.
"""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import numpy as np
import torch

from ..sizing import Sizing


class PersonBoxes(TypedDict):
    """One frame's person detections, best first (``person_boxes``)."""

    boxes: np.ndarray  # [P, 4] x0, y0, x1, y1 in the frame's pixels
    scores: np.ndarray  # [P]
    tied_queries: bool  # RT-DETR picked its queries among exactly tied scores (tied_query_selection)


def _size(sizing: Sizing) -> dict:
    return {"height": sizing.height, "width": sizing.width}


@torch.no_grad()
def depth(model, processor, frames: np.ndarray, sizing: Sizing) -> dict[str, np.ndarray]:
    fixed = {"size": _size(sizing), "keep_aspect_ratio": False, "ensure_multiple_of": sizing.multiple}
    kwargs = {} if dataclasses.replace(sizing, max_patches=0) == Sizing.of_processor(processor) else fixed
    height, width = frames.shape[1:3]
    if sizing.budget_applies(height, width):  # the processor itself, run at the size the patch budget picks
        budget_h, budget_w = sizing.model_size(height, width)
        kwargs = {**fixed, "size": {"height": budget_h, "width": budget_w}}
    inputs = processor(images=list(frames), return_tensors="pt", **kwargs)
    out = model(**inputs)
    sizes = [frame.shape[:2] for frame in frames]
    maps = np.stack(
        [r["predicted_depth"].numpy() for r in processor.post_process_depth_estimation(out, target_sizes=sizes)]
    )
    flat = maps.reshape(len(maps), -1)
    return {"depth": maps, "depth_min": flat.min(1), "depth_max": flat.max(1)}


@torch.no_grad()
def segmentation(model, processor, frames: np.ndarray, sizing: Sizing) -> dict[str, np.ndarray]:
    inputs = processor(images=list(frames), size=_size(sizing), return_tensors="pt")
    out = model(**inputs)
    sizes = [frame.shape[:2] for frame in frames]
    maps = processor.post_process_semantic_segmentation(out, target_sizes=sizes)
    return {"classes": np.stack([m.numpy().astype(np.uint8) for m in maps])}


@torch.no_grad()
def person_boxes(detector, processor, frames: np.ndarray, max_persons: int, sizing: Sizing) -> list[PersonBoxes]:
    """Person detections per frame, best first, through post_process_object_detection.

    transformers keeps the top ``num_queries`` over all classes, then one would filter persons;
    the graph ranks persons among themselves. Handing the post-processing only the person
    column gives the graph's ranking through the library's own code; the two differ only for a
    person ranked below hundreds of other detections, far under any usable threshold.
    """
    person = int(detector.config.label2id.get("person", 0))
    inputs = processor(images=list(frames), size=_size(sizing), return_tensors="pt")
    out = detector(pixel_values=inputs["pixel_values"])
    out.logits = out.logits[:, :, person : person + 1]
    enc = out.enc_outputs_class
    sizes = [frame.shape[:2] for frame in frames]
    results = processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)
    return [
        {
            "boxes": r["boxes"][:max_persons].numpy(),
            "scores": r["scores"][:max_persons].numpy(),
            "tied_queries": tied_query_selection(enc, detector.config.num_queries),
        }
        for r, enc in zip(results, enc)
    ]


def tied_query_selection(encoder_class_logits: torch.Tensor, num_queries: int) -> bool:
    """True when RT-DETR's encoder picks its queries among exactly tied scores.

    Then any backend may pick another query set, and since the decoder's queries attend to each
    other, every output changes: detections are not comparable. Random weights do this (whole
    feature levels come out constant); trained weights do not.
    """
    best = encoder_class_logits.max(dim=-1).values
    top = best.topk(min(num_queries + 1, best.numel())).values
    return bool(torch.unique(top).numel() < top.numel())


@torch.no_grad()
def keypoints(pose_model, processor, frames: np.ndarray, boxes_xyxy: np.ndarray) -> dict[str, np.ndarray]:
    """VitPose keypoints for the given xyxy boxes (``[N, K, 4]``), via the processor's own path."""
    coco = boxes_xyxy.astype(np.float32).copy()
    coco[..., 2:] -= coco[..., :2]  # xyxy -> COCO (x, y, w, h), as the ViTPose docs do
    inputs = processor(images=list(frames), boxes=[list(b) for b in coco], return_tensors="pt")
    out = pose_model(**inputs)
    results = processor.post_process_pose_estimation(out, boxes=[list(b) for b in coco])
    points = np.stack([np.stack([p["keypoints"].numpy() for p in image]) for image in results])
    scores = np.stack([np.stack([p["scores"].numpy() for p in image]) for image in results])
    return {"keypoints": points, "keypoint_scores": scores}
