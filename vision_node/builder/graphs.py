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

from ..capabilities.segmentation import ADE20K_PALETTE
from ..contract import ShapeBounds
from ..sizing import Sizing
from . import argmax, ops, pil_resize, precision
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
        pil_resize.filter_name(processor.resample)
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
        self.filter = pil_resize.filter_name(processor.resample)
        self.rescale, self.mean, self.std = _normalisation(processor)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = pil_resize.resize_like_pil(frames, self.size(frames), self.filter)
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
    from transformers.models.depth_anything.modeling_depth_anything import (
        DepthAnythingDepthEstimationHead,
    )
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

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
    embeddings = model.get_submodule("backbone.embeddings")
    if type(embeddings) is Dinov2Embeddings:
        embeddings.__class__ = GatheredPositionEmbeddings
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
    value: torch.Tensor  # a buffer

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
