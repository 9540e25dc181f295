"""The pose graph: a person detector, then top-down ViTPose on only the persons a frame keeps.

The keypoint model's cost follows the persons served: each frame carries its ``person_threshold``
(a per-frame graph input, ``contract.FRAME_PARAMETERS``) and the keypoint model runs on the boxes
that reach it, between none and ``max_persons`` of them. Boxes come best first, so those are a
frame's first slots: the graph takes the first k of every frame (k the most any frame of the batch
keeps), a Slice whose end is a count, which TensorRT sizes for the profile's most (no NonZero, which
TensorRT for RTX lacks). With k = 0 an ONNX ``If`` skips the keypoint model altogether: it cannot run
on an empty batch (its reshapes infer a dimension, which no runtime can do from zero elements).
Every output keeps its shape: the slots after k hold zero keypoints.

The graph is exported in two parts, ``PersonBoxes`` (the head) and ``Keypoints`` (the tail), which
``gated.export`` joins into one ONNX graph with the tail inside that ``If``: torch's ONNX exporter
cannot trace a scripted ``If`` around a module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities.pose import COCO17
from ..contract import ShapeBounds
from ..sizing import Sizing
from . import ops, precision
from .errors import BuildError
from .graphs import _normalisation, _Preprocess, freeze_size_only_modules


class Keypoints(nn.Module):
    """Crops, ViTPose and the processor's keypoint decoding for ``[N, k]`` boxes, padded to ``slots``."""

    PADDING = 1.25  # VitPoseImageProcessor's box padding
    DARK_SIGMA = 0.8  # post_dark_unbiased_data_processing's Gaussian
    DARK_KERNEL = 11  # post_process_pose_estimation's default kernel_size

    def __init__(self, pose_model, pose_processor, slots: int, rung: str):
        super().__init__()
        self.pose_model = precision.body(pose_model, rung)
        self.crop_h, self.crop_w = pose_processor.size["height"], pose_processor.size["width"]
        self.pose_rescale, self.pose_mean, self.pose_std = _normalisation(pose_processor)
        self.slots = slots
        self.num_keypoints = pose_model.config.num_labels

    def forward(self, frames: torch.Tensor, boxes: torch.Tensor):
        n = frames.shape[0]
        centre, size = self.centre_and_size(boxes)
        crops = ops.normalise(self.crops(frames, centre, size), self.pose_rescale, self.pose_mean, self.pose_std)
        heatmaps = self.pose_model(pixel_values=crops).heatmaps
        keypoints, scores = self.keypoints(heatmaps, centre, size)
        # Python ints (not traced sizes) keep the slot and keypoint dims static in the graph.
        slots, j = self.slots, self.num_keypoints
        keypoints = torch.cat([keypoints.reshape(n, -1, j, 2), keypoints.new_zeros(n, slots, j, 2)], 1)[:, :slots]
        scores = torch.cat([scores.reshape(n, -1, j), scores.new_zeros(n, slots, j)], 1)[:, :slots]
        return keypoints, scores

    def centre_and_size(self, boxes: torch.Tensor):
        """box_to_center_and_scale: the box grown to the crop's aspect ratio and padded (pixels)."""
        x0, y0, x1, y1 = boxes.unbind(-1)
        box_w, box_h = x1 - x0, y1 - y0
        centre = torch.stack([x0 + 0.5 * box_w, y0 + 0.5 * box_h], dim=-1)
        aspect = self.crop_w / self.crop_h
        wide = box_w > aspect * box_h
        w, h = torch.where(wide, box_w, box_h * aspect), torch.where(wide, box_w / aspect, box_h)
        return centre, torch.stack([w, h], dim=-1) * self.PADDING

    def crops(self, frames: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Bilinear crops as scipy_warp_affine samples them (zero outside the frame), [N*K,3,h,w]."""
        n, k = centre.shape[:2]
        height, width = ops.dim_size(frames, 1), ops.dim_size(frames, 2)
        cols = torch.arange(self.crop_w, dtype=torch.float32) / (self.crop_w - 1)
        rows = torch.arange(self.crop_h, dtype=torch.float32) / (self.crop_h - 1)
        src_x = (
            cols[None, None, None, :] * size[..., 0, None, None]
            + (centre[..., 0] - 0.5 * size[..., 0])[..., None, None]
        )
        src_y = (
            rows[None, None, :, None] * size[..., 1, None, None]
            + (centre[..., 1] - 0.5 * size[..., 1])[..., None, None]
        )
        src_x, src_y = torch.broadcast_tensors(src_x, src_y)  # N,K,h,w
        inside = (src_x >= 0) & (src_x <= width - 1) & (src_y >= 0) & (src_y <= height - 1)
        grid = torch.stack([src_x / (width - 1) * 2 - 1, src_y / (height - 1) * 2 - 1], dim=-1)
        grid = grid.reshape(n, k * self.crop_h, self.crop_w, 2)
        image = frames.float().permute(0, 3, 1, 2)  # cast first: TensorRT takes uint8 only into a Cast
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled.reshape(n, 3, k, self.crop_h, self.crop_w).permute(0, 2, 1, 3, 4)
        sampled = torch.floor(sampled + 0.5) * inside[:, :, None].float()  # scipy writes uint8, rounded
        return sampled.reshape(n * k, 3, self.crop_h, self.crop_w)

    def keypoints(self, heatmaps: torch.Tensor, centre: torch.Tensor, size: torch.Tensor):
        """get_keypoint_predictions + DARK refinement + transform_preds, for [B,17,h,w] heatmaps."""
        b, j, h, w = heatmaps.shape
        score, index = heatmaps.reshape(b, j, h * w).max(dim=-1)
        px, py = (index % w).float(), torch.div(index, w, rounding_mode="floor").float()
        found = score > 0
        px, py = torch.where(found, px, -torch.ones_like(px)), torch.where(found, py, -torch.ones_like(py))

        logmap = ops.gaussian_blur(heatmaps, self.DARK_SIGMA, (self.DARK_KERNEL - 1) // 2).clamp(0.001, 50).log()
        # Index the padded maps of the whole batch as one flat array, exactly as the reference
        # does: a keypoint with no positive heatmap value sits at (-1, -1) and its neighbours
        # then come from the previous map (numpy wraps index -1 to the end of the array).
        plane = (h + 2) * (w + 2)
        logmap = F.pad(logmap, (1, 1, 1, 1), mode="replicate").reshape(-1)
        centre_index = (px + 1 + (py + 1) * (w + 2)).long() + torch.arange(b * j).reshape(b, j) * plane

        def at(dx: int, dy: int) -> torch.Tensor:
            index = centre_index + (dx + dy * (w + 2))
            return logmap[torch.where(index < 0, index + b * j * plane, index)]

        i_, ix1, ix1_, iy1, iy1_ = at(0, 0), at(1, 0), at(-1, 0), at(0, 1), at(0, -1)
        ix1y1, ix1_y1_ = at(1, 1), at(-1, -1)
        dx, dy = 0.5 * (ix1 - ix1_), 0.5 * (iy1 - iy1_)
        dxx, dyy = ix1 - 2 * i_ + ix1_, iy1 - 2 * i_ + iy1_
        dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
        eps = torch.finfo(torch.float32).eps
        a, d = dxx + eps, dyy + eps
        det = a * d - dxy * dxy
        px = px - (d * dx - dxy * dy) / det
        py = py - (-dxy * dx + a * dy) / det

        size = size.reshape(b, 1, 2)
        origin = centre.reshape(b, 1, 2) - 0.5 * size
        x = px * size[..., 0] / (w - 1.0) + origin[..., 0]
        y = py * size[..., 1] / (h - 1.0) + origin[..., 1]
        return torch.stack([x, y], dim=-1), score


class PersonBoxes(nn.Module):
    """The detector's ``slots`` best person boxes, and those a frame's threshold keeps for the keypoint model."""

    def __init__(
        self, detector, detector_processor, detector_sizing: Sizing, bounds: ShapeBounds, slots: int, rung: str
    ):
        super().__init__()
        self.detect_pre = _Preprocess(detector_processor, detector_sizing, bounds)
        self.detector = precision.body(freeze_size_only_modules(detector, detector_sizing.size), rung)
        self.person_class = int(detector.config.label2id.get("person", 0))
        self.slots = slots

    def forward(self, frames: torch.Tensor, person_threshold: torch.Tensor):
        """Boxes (xyxy, frame pixels) and scores, best first; the first k boxes, k the most any frame keeps;
        and whether k is 0."""
        out = self.detector(pixel_values=self.detect_pre(frames))
        scores = out.logits[:, :, self.person_class].sigmoid()
        scores, index = scores.topk(self.slots, dim=1)
        cxcywh = out.pred_boxes.gather(1, index[:, :, None].expand(-1, -1, 4))
        cx, cy, w, h = cxcywh.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        size = torch.stack([ops.dim_size(frames, 2), ops.dim_size(frames, 1)])
        boxes = boxes * size.repeat(2)
        k = (scores >= person_threshold[:, None]).sum(dim=1).max()
        # At least one box: where k is 0 the If skips the tail, or TensorRT runs it and discards it (gated).
        return boxes, scores, boxes[:, : torch.maximum(k, torch.ones_like(k))], k == 0


class PoseGraph(nn.Module):
    """Person detector + top-down ViTPose on the ``max_persons`` best person boxes that reach a threshold.

    Outputs boxes (x0, y0, x1, y1, frame pixels) with their scores for every slot, and COCO-17
    keypoints (x, y in frame pixels) with their scores for the slots served (zeros after them);
    the node drops slots below the request's threshold. The frame enters once; crops are sampled
    from it on the device.
    """

    PARAMETERS = ("person_threshold",)  # per-frame inputs beside the frames (contract.FRAME_PARAMETERS)
    # How gated.export joins the parts: the head's outputs that are the graph's, those the tail takes
    # beside the frames, and the one that says the tail has nothing to do.
    HEAD_OUTPUTS, TAIL_INPUTS, SKIP_TAIL = ("boxes", "box_scores"), ("served_boxes",), "none_served"

    def __init__(
        self,
        detector,
        detector_processor,
        pose_model,
        pose_processor,
        max_persons: int,
        detector_sizing: Sizing,
        bounds: ShapeBounds,
        rung: str = "fp32",
    ):
        super().__init__()
        if detector_sizing.keep_aspect_ratio:
            raise BuildError("the person detector runs at a fixed resolution (its position embedding is frozen)")
        if getattr(pose_processor, "do_affine_transform", True) is False:
            raise BuildError(
                f"{type(pose_processor).__name__}.do_affine_transform=False: not supported in-graph (the graph "
                "crops each person with the processor's affine warp) (preprocessor_config.json)"
            )
        if pose_model.config.num_labels != len(COCO17):
            raise BuildError(
                f"pose model config.json: num_labels={pose_model.config.num_labels}; the node serves COCO-17 "
                f"keypoints ({len(COCO17)})"
            )
        self.max_persons = min(max_persons, detector.config.num_queries)
        self.head = PersonBoxes(detector, detector_processor, detector_sizing, bounds, self.max_persons, rung)
        self.tail = Keypoints(pose_model, pose_processor, self.max_persons, rung)

    def forward(self, frames: torch.Tensor, person_threshold: torch.Tensor):
        """``person_threshold`` [N]: the keypoint model runs on the first k slots, k the most any frame keeps."""
        boxes, box_scores, served, none_served = self.head(frames, person_threshold)
        if bool(none_served):
            n, j = frames.shape[0], self.tail.num_keypoints
            return boxes, box_scores, torch.zeros(n, self.max_persons, j, 2), torch.zeros(n, self.max_persons, j)
        return (boxes, box_scores, *self.tail(frames, served))
