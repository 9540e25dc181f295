"""The model resolution for a frame, computed inside the exported graph from the frame's shape.

``vision_node.sizing`` states the processor's rule in its own float64 arithmetic (what the node reports);
this is the same rule for the graph: int64 tensor arithmetic that the ONNX exporter traces into
shape computations, so that ONNX Runtime and TensorRT size the model input per frame.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..contract import ShapeBounds
from ..sizing import Sizing
from .errors import BuildError


def _round_to_multiple(num: torch.Tensor, den, multiple: int) -> torch.Tensor:
    """``round(num / den / multiple) * multiple`` exactly, rounding halves to even (Python's round)."""
    q = den * multiple
    f = torch.div(num, q, rounding_mode="floor")
    twice_rest = 2 * (num - f * q)
    odd = (f - 2 * torch.div(f, 2, rounding_mode="floor")) == 1
    up = (twice_rest > q) | ((twice_rest == q) & odd)
    return (f + up.long()) * multiple


def _rule(s: Sizing, height: torch.Tensor, width: torch.Tensor):
    """The processor's keep-aspect rule in integers, on int64 tensors of any shape."""
    # |1 - s.width/width| < |1 - s.height/height|, multiplied out (squared: no Abs on sizes).
    fit_width = ((width - s.width) * height) ** 2 < ((height - s.height) * width) ** 2
    scale_num = torch.where(fit_width, s.width, s.height)
    scale_den = torch.where(fit_width, width, height)
    return (
        _round_to_multiple(scale_num * height, scale_den, s.multiple),
        _round_to_multiple(scale_num * width, scale_den, s.multiple),
    )


def _largest_root_bound(sizing: Sizing, bounds: ShapeBounds) -> int:
    """An upper bound on the budget rule's ``n`` over the frames ``bounds`` allows (for the bisection)."""
    longest, shortest = max(bounds.max_hw), min(bounds.min_hw)
    return math.isqrt(sizing.max_patches * longest // shortest) + 1


def _budget(s: Sizing, height, width, new_h, new_w, n_max: int):
    """``vision_node.sizing``'s patch budget on int64 tensors: ``n`` by bisection, integers only (TensorRT's rules)."""
    m = s.multiple
    over = torch.div(new_h, m, rounding_mode="floor") * torch.div(new_w, m, rounding_mode="floor") > s.max_patches
    long, short = torch.maximum(height, width), torch.minimum(height, width)
    limit = s.max_patches * long
    lo, hi = torch.ones_like(long), torch.full_like(long, n_max)  # n*n*short <= limit holds at lo, fails above hi
    for _ in range(n_max.bit_length()):
        mid = torch.div(lo + hi + 1, 2, rounding_mode="floor")
        fits = mid * mid * short <= limit
        lo, hi = torch.where(fits, mid, lo), torch.where(fits, hi, mid - 1)
    k = torch.maximum(torch.div(lo * short, long, rounding_mode="floor"), torch.ones_like(long))  # no int Clip
    wide = width >= height
    budget_h, budget_w = torch.where(wide, k, lo) * m, torch.where(wide, lo, k) * m
    return torch.where(over, budget_h, new_h), torch.where(over, budget_w, new_w)


def key_stride(bounds: ShapeBounds) -> int:
    """A frame size's correction key is ``height * key_stride + width``: one int64 per size in the bounds."""
    return bounds.max_hw[1] + 1


@functools.lru_cache(maxsize=8)  # one scan per (sizing, bounds), however many graphs and rungs use it
def _corrections(sizing: Sizing, bounds: ShapeBounds) -> tuple[list[int], list[int], list[int]]:
    """(keys, height deltas, width deltas) of the frame sizes where the integer rule and the processor differ."""
    (min_h, min_w), (max_h, max_w) = bounds.min_hw, bounds.max_hw
    heights, widths = torch.meshgrid(
        torch.arange(min_h, max_h + 1, dtype=torch.int64),
        torch.arange(min_w, max_w + 1, dtype=torch.int64),
        indexing="ij",
    )
    got_h, got_w = _rule(sizing, heights, widths)
    want_h, want_w = (torch.from_numpy(a) for a in sizing.processor_sizes(heights.numpy(), widths.numpy()))
    if int(want_h.min()) < 1 or int(want_w.min()) < 1:
        at = torch.nonzero((want_h < 1) | (want_w < 1))[0]
        raise BuildError(
            f"frame bounds {min_h}..{max_h} x {min_w}..{max_w} allow a {min_h + int(at[0])}x{min_w + int(at[1])} "
            f"frame, for which the processor's {sizing.describe()} picks a zero-pixel side: narrow "
            "--min-size/--max-size"
        )
    differ = (got_h != want_h) | (got_w != want_w)
    if int(differ.sum()) > 100_000:  # halves are rare: this many means the rule itself is wrong
        raise BuildError(f"the graph's size rule disagrees with the processor at {int(differ.sum())} frame sizes")
    keys = heights[differ] * key_stride(bounds) + widths[differ]
    return keys.tolist(), (want_h - got_h)[differ].tolist(), (want_w - got_w)[differ].tolist()


class ModelSize(nn.Module):
    """The model resolution for a frame, computed in the graph from the frame's shape (int64, exact).

    The processor's rule (``vision_node.sizing``) in integers: equal to its float64 arithmetic wherever that
    arithmetic is exact, which is everywhere except exact halves, where float64 rounding tips the
    processor's ``round`` one way or the other. Those frame sizes (a few hundred among the millions
    the bounds allow) are found at build time, by comparing with the processor's arithmetic over
    every frame size in the bounds, and carried as corrections: the graph picks exactly the
    processor's size for every frame it accepts. Then the patch budget, if the sizing has one.
    """

    # Buffers: the frame sizes the processor's float arithmetic rounds the other way, and their corrections.
    keys: torch.Tensor
    delta_h: torch.Tensor
    delta_w: torch.Tensor

    def __init__(self, sizing: Sizing, bounds: ShapeBounds):
        super().__init__()
        self.sizing = sizing
        self.key_stride = key_stride(bounds)
        keys, dh, dw = _corrections(sizing, bounds) if sizing.keep_aspect_ratio else ([], [], [])
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64))
        self.register_buffer("delta_h", torch.tensor(dh, dtype=torch.int64))
        self.register_buffer("delta_w", torch.tensor(dw, dtype=torch.int64))
        self.n_max = _largest_root_bound(sizing, bounds) if sizing.budgeted else 0

    def rule(self, height: torch.Tensor, width: torch.Tensor):
        return _rule(self.sizing, height, width)

    def forward(self, frames: torch.Tensor):
        """(height, width) for ``frames`` [N, H, W, 3]: Python ints when fixed, traced int64 scalars otherwise."""
        if not self.sizing.keep_aspect_ratio:
            return self.sizing.model_size(1, 1)  # the frame does not matter
        height, width = torch.as_tensor(frames.shape[1]), torch.as_tensor(frames.shape[2])
        new_h, new_w = self.rule(height, width)
        if self.keys.numel():
            hit = (self.keys == height * self.key_stride + width).long()
            new_h, new_w = new_h + (hit * self.delta_h).sum(), new_w + (hit * self.delta_w).sum()
        if self.sizing.budgeted:
            new_h, new_w = _budget(self.sizing, height, width, new_h, new_w, self.n_max)
        return new_h, new_w
