"""Export wrappers: the fused graphs, uint8 frames in, finished results out.

Each wrapper takes its constants from the model's own image processor, so a swapped or
fine-tuned checkpoint brings its own resolution, filter and normalisation. The reference that
each graph must reproduce is in ``reference.py``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities.pose import COCO17
from ..capabilities.segmentation import ADE20K_PALETTE
from ..contract import ShapeBounds
from ..sizing import Sizing
from . import argmax, ops, precision
from .errors import BuildError
from .model_size import ModelSize

# Processor settings the graphs do not reproduce: a model that needs one is refused at build time.
# (Label-map settings such as do_reduce_labels are accepted: transformers never applies them to images.)
_UNSUPPORTED_SETTINGS = {"do_center_crop": True, "do_pad": True, "do_resize": False}


def check_processor(processor) -> None:
    """Refuse, naming the setting, a processor whose image handling the graphs cannot reproduce."""
    name = type(processor).__name__
    for flag, refused in _UNSUPPORTED_SETTINGS.items():
        if getattr(processor, flag, None) is not None and bool(getattr(processor, flag)) == refused:
            raise BuildError(f"{name}.{flag}={refused}: not supported in-graph (preprocessor_config.json)")
    try:
        ops.pil_filter_name(processor.resample)
    except ValueError as err:
        raise BuildError(f"{name}.{err} (preprocessor_config.json)") from None


def _normalisation(processor) -> tuple[float, list[float], list[float]]:
    """(rescale, mean, std) as the processor applies them, its do_rescale/do_normalize flags included."""
    rescale = processor.rescale_factor if processor.do_rescale else 1.0
    if not processor.do_normalize:
        return rescale, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return rescale, list(processor.image_mean), list(processor.image_std)


class _Preprocess(nn.Module):
    """Resize + rescale + normalise, as the processor would, at the model resolution ``sizing`` picks."""

    def __init__(self, processor, sizing: Sizing, bounds: ShapeBounds):
        super().__init__()
        check_processor(processor)
        self.size = ModelSize(sizing, bounds)
        self.filter = ops.pil_filter_name(processor.resample)
        self.rescale, self.mean, self.std = _normalisation(processor)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = ops.resize_like_pil(frames, self.size(frames), self.filter)
        return ops.normalise(x, self.rescale, self.mean, self.std)


def depth_for_export(model: nn.Module) -> nn.Module:
    """A copy of a Depth Anything model that exports to a graph sized per frame, and runs fast in it.

    Two forwards change, same modules and weights, same arithmetic:
    - the head: transformers casts its upsampling size to ``int``, which the ONNX tracer freezes at
      the example frame's resolution (at any other resolution the map would come out wrong);
    - the DINOv2 position embeddings: their bicubic interpolation to the patch grid becomes four-tap
      gathers (``ops.resize_bicubic``); ONNX Runtime's cubic Resize spent 60 ms of a 580 ms CPU
      frame on it (400×600, profiled), the gathers of the whole graph 13 ms.
    """
    from transformers.models.depth_anything.modeling_depth_anything import (  # noqa: PLC0415
        DepthAnythingDepthEstimationHead,
    )
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings  # noqa: PLC0415

    class TracedSizeHead(DepthAnythingDepthEstimationHead):
        def forward(self, hidden_states, patch_height, patch_width):
            x = self.conv1(hidden_states[self.head_in_index])
            size = (patch_height * self.patch_size, patch_width * self.patch_size)
            x = F.interpolate(x, size, mode="bilinear", align_corners=True)
            x = self.conv3(self.activation1(self.conv2(x)))
            return (self.activation2(x) * self.max_depth).squeeze(dim=1)

    class GatheredPositionEmbeddings(Dinov2Embeddings):
        def interpolate_pos_encoding(self, embeddings, height, width):
            # Dinov2Embeddings.interpolate_pos_encoding, with the interpolation as gathers (in float32, as there).
            positions = self.position_embeddings
            side = round(self.patch_embeddings.num_patches**0.5)  # a Python int, also while tracing
            patch_h, patch_w = self.patch_embeddings.patch_size
            grid = positions[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
            grid = ops.resize_bicubic(grid, (height // patch_h, width // patch_w)).to(positions.dtype)
            return torch.cat((positions[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)

    if not isinstance(getattr(model, "head", None), DepthAnythingDepthEstimationHead):
        return model
    model = copy.deepcopy(model)
    model.head.__class__ = TracedSizeHead
    if type(model.backbone.embeddings) is Dinov2Embeddings:
        model.backbone.embeddings.__class__ = GatheredPositionEmbeddings
    return model


class DepthGraph(nn.Module):
    """Relative depth at the frame's size, plus each frame's min and max for normalising."""

    def __init__(self, model, processor, sizing: Sizing, bounds: ShapeBounds, rung: str = "fp32"):
        super().__init__()
        self.pre = _Preprocess(processor, sizing, bounds)
        self.model = precision.body(depth_for_export(model), rung)

    def forward(self, frames: torch.Tensor):
        depth = self.model(pixel_values=self.pre(frames)).predicted_depth
        # post_process_depth_estimation: torch's bicubic (A = -0.75) to the frame's size.
        depth = ops.resize_bicubic(depth[:, None], frames.shape[1:3])[:, 0]
        flat = depth.flatten(1)
        return depth, flat.min(dim=1).values, flat.max(dim=1).values


class SegmentationGraph(nn.Module):
    """uint8 class ids at the frame's size (bilinear logits upsampling, then argmax)."""

    def __init__(self, model, processor, sizing: Sizing, bounds: ShapeBounds, class_chunk: int, rung: str = "fp32"):
        super().__init__()
        if model.config.num_labels > len(ADE20K_PALETTE):
            raise BuildError(
                f"config.json: num_labels={model.config.num_labels}; the ADE20K palette the node draws with "
                f"colours {len(ADE20K_PALETTE)} classes"
            )
        self.pre = _Preprocess(processor, sizing, bounds)
        self.model = precision.body(model, rung)
        self.class_chunk = class_chunk

    def forward(self, frames: torch.Tensor):
        logits = self.model(pixel_values=self.pre(frames)).logits
        # Exact, and interpolates every class only near class boundaries (the dense fold only as a fallback).
        classes = argmax.upsampled_argmax(logits, frames.shape[1:3], self.class_chunk)
        # Through float: TensorRT converts to uint8 only from float32/float16 (ids < 256 are exact).
        return (classes.float().to(torch.uint8),)


# Modules whose output depends only on the input's size, computed in float64 by transformers
# (RT-DETR's 2-D sine position embedding). TensorRT has no float64; at a fixed model resolution
# their output is a constant, so the graph carries it as one (float32, as the module returns it).
_SIZE_ONLY_MODULES = ("RTDetrSinePositionEmbedding",)


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, *args, dtype: torch.dtype | None = None, **kwargs) -> torch.Tensor:
        return self.value if dtype is None else self.value.to(dtype)


def freeze_size_only_modules(model: nn.Module, resolution: tuple[int, int]) -> nn.Module:
    """A copy of ``model`` whose size-only modules return what they return at ``resolution``."""
    model = copy.deepcopy(model)
    targets = {name: m for name, m in model.named_modules() if type(m).__name__ in _SIZE_ONLY_MODULES}
    if not targets:
        return model
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _args, out, name=name: seen.__setitem__(name, out.detach().clone()))
        for name, m in targets.items()
    ]
    with torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, *resolution))
    for hook in hooks:
        hook.remove()
    for name, value in seen.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _Constant(value))
    return model


class PoseGraph(nn.Module):
    """Person detector + top-down ViTPose on the ``max_persons`` best person boxes.

    Outputs boxes (x0, y0, x1, y1, frame pixels) with their scores, and COCO-17 keypoints
    (x, y in frame pixels) with their scores, for every slot; clients drop slots below a
    score threshold. The frame enters once; crops are sampled from it on the device.
    """

    NORMALIZE_FACTOR = 200.0  # VitPoseImageProcessor's box scale unit
    PADDING = 1.25  # VitPoseImageProcessor's box padding
    DARK_SIGMA = 0.8  # post_dark_unbiased_data_processing's Gaussian
    DARK_KERNEL = 11  # post_process_pose_estimation's default kernel_size

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
        self.detect_pre = _Preprocess(detector_processor, detector_sizing, bounds)
        self.detector = precision.body(freeze_size_only_modules(detector, detector_sizing.size), rung)
        self.person_class = int(detector.config.label2id.get("person", 0))
        self.pose_model = precision.body(pose_model, rung)
        self.crop_h, self.crop_w = pose_processor.size["height"], pose_processor.size["width"]
        self.pose_rescale, self.pose_mean, self.pose_std = _normalisation(pose_processor)
        self.max_persons = min(max_persons, detector.config.num_queries)
        self.num_keypoints = pose_model.config.num_labels

    def person_boxes(self, frames: torch.Tensor):
        """The ``max_persons`` highest-scoring person boxes, xyxy in frame pixels."""
        out = self.detector(pixel_values=self.detect_pre(frames))
        scores = out.logits[:, :, self.person_class].sigmoid()
        scores, index = scores.topk(self.max_persons, dim=1)
        cxcywh = out.pred_boxes.gather(1, index[:, :, None].expand(-1, -1, 4))
        cx, cy, w, h = cxcywh.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        size = torch.stack([ops.dim_size(frames, 2), ops.dim_size(frames, 1)])
        return boxes * size.repeat(2), scores

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

    def forward(self, frames: torch.Tensor):
        n = frames.shape[0]
        boxes, box_scores = self.person_boxes(frames)
        centre, size = self.centre_and_size(boxes)
        crops = ops.normalise(self.crops(frames, centre, size), self.pose_rescale, self.pose_mean, self.pose_std)
        heatmaps = self.pose_model(pixel_values=crops).heatmaps
        keypoints, scores = self.keypoints(heatmaps, centre, size)
        # Python ints (not traced sizes) keep the person and keypoint dims static in the graph.
        k, j = self.max_persons, self.num_keypoints
        return boxes, box_scores, keypoints.reshape(n, k, j, 2), scores.reshape(n, k, j)
