"""The resolution a graph runs its model at, for a given frame: fixed, or picked as the processor picks it.

Depth Anything's processor (DPT's ``get_resize_output_image_size``) keeps the frame's aspect
ratio: it scales by whichever of the two factors is nearer 1 and rounds each side to a multiple
of 14, so a 1080×1920 frame runs at 518×924 and a 360×640 one at 294×518. A graph built
"keep-aspect" does the same inside the graph; a "fixed" graph always runs at one size (a
constant cost per frame, what the peers do).

A keep-aspect graph may carry a **patch budget** (``max_patches``, in cells of ``multiple`` ×
``multiple``: Depth Anything's 14-pixel patches). Below it the graph follows the processor exactly;
a frame for which the processor would pick more cells (a 518×3840 frame would run at 518×3836,
10,000 patches) runs instead at the largest size of the frame's aspect ratio within the budget:
``n``, the largest integer with n² · short ≤ budget · long, along the frame's long side and
⌊n · short / long⌋ (at least 1) along its short side, each times ``multiple``. Integer arithmetic
only, the same in the graph (``vision_node.builder.model_size``).

Torch-free: the node uses this to report the size a frame ran at; the build uses it to check
the graph's own integer arithmetic against the processor's float arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

KEEP_ASPECT, FIXED = "keep-aspect", "fixed"


@dataclass(frozen=True)
class Sizing:
    """How the model resolution follows from the frame: ``size`` itself, or as the processor picks it."""

    height: int
    width: int
    keep_aspect_ratio: bool = False
    multiple: int = 1  # each side rounded to a multiple of this (the processor's ``ensure_multiple_of``)
    max_patches: int = 0  # keep-aspect only: the patch budget (cells of multiple x multiple); 0: none

    @property
    def mode(self) -> str:
        return KEEP_ASPECT if self.keep_aspect_ratio else FIXED

    @property
    def size(self) -> tuple[int, int]:
        """The nominal (height, width): the processor's ``size``, or the fixed resolution."""
        return self.height, self.width

    @property
    def budgeted(self) -> bool:
        return self.keep_aspect_ratio and self.max_patches > 0

    def model_sizes(self, heights, widths) -> tuple[np.ndarray, np.ndarray]:
        """The model sizes for arrays of frame sizes: the processor's, within the patch budget if there is one."""
        new_h, new_w = self.processor_sizes(heights, widths)
        if not self.budgeted:
            return new_h, new_w
        over = self.over_budget(new_h, new_w)
        budget_h, budget_w = self.budget_sizes(heights, widths)
        return np.where(over, budget_h, new_h), np.where(over, budget_w, new_w)

    def over_budget(self, model_h, model_w) -> np.ndarray:
        """Whether a model size (as the processor picks it) has more cells than the budget allows."""
        m = self.multiple
        return self.budgeted & ((np.asarray(model_h) // m) * (np.asarray(model_w) // m) > self.max_patches)

    def budget_sizes(self, heights, widths) -> tuple[np.ndarray, np.ndarray]:
        """The largest size of each frame's aspect ratio within the budget (module docstring), in int64."""
        heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
        long, short, budget = np.maximum(heights, widths), np.minimum(heights, widths), self.max_patches
        n = np.floor(np.sqrt(budget * long / short)).astype(np.int64)  # exact after one step either way
        n = n + ((n + 1) ** 2 * short <= budget * long) - (n**2 * short > budget * long)
        k = np.maximum(n * short // long, 1)
        wide = widths >= heights
        return np.where(wide, k, n) * self.multiple, np.where(wide, n, k) * self.multiple

    def budget_applies(self, height: int, width: int) -> bool:
        """Whether the budget, not the processor, sets the model size for one frame."""
        return bool(self.over_budget(*self.processor_sizes(height, width)))

    def budget_examples(self, max_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Frames up to ``max_hw`` that the budget applies to, landscape and portrait (for the build's checks)."""
        if not self.budgeted:
            return []
        wide, tall = (min(max_hw[0], self.height), max_hw[1]), (max_hw[0], min(max_hw[1], self.width))
        return [hw for hw in (wide, tall) if self.budget_applies(*hw)]

    def processor_sizes(self, heights, widths) -> tuple[np.ndarray, np.ndarray]:
        """The processor's arithmetic, float64 op for op, over arrays of frame sizes."""
        heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
        scale_h, scale_w = self.height / heights, self.width / widths
        if self.keep_aspect_ratio:  # "scale as little as possible"
            fit_width = np.abs(1 - scale_w) < np.abs(1 - scale_h)
            scale_h = scale_w = np.where(fit_width, scale_w, scale_h)
        # constrain_to_multiple_of: Python's round() is round-half-even, as np.round is. A side can
        # round to 0 for a very elongated frame; the build refuses bounds that allow one.
        new_h = np.round(scale_h * heights / self.multiple) * self.multiple
        new_w = np.round(scale_w * widths / self.multiple) * self.multiple
        return new_h.astype(np.int64), new_w.astype(np.int64)

    @lru_cache(maxsize=4096)  # noqa: B019 (a frozen dataclass: the cache holds nothing that changes)
    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the model runs at for one ``height``×``width`` frame."""
        h, w = self.model_sizes(height, width)
        return int(h), int(w)

    def as_dict(self) -> dict:
        budget = {"max_patches": self.max_patches} if self.budgeted else {}
        return {"mode": self.mode, "size": [self.height, self.width], "multiple": self.multiple, **budget}

    @classmethod
    def from_dict(cls, data: dict) -> Sizing:
        height, width = data["size"]
        keep = data["mode"] == KEEP_ASPECT
        return cls(int(height), int(width), keep, int(data.get("multiple", 1)), int(data.get("max_patches", 0)))

    @classmethod
    def fixed(cls, height: int, width: int) -> Sizing:
        return cls(int(height), int(width))

    @classmethod
    def of_processor(cls, processor) -> Sizing:
        """What a transformers image processor does with a frame: its size, aspect rule and multiple."""
        return cls(
            int(processor.size["height"]),
            int(processor.size["width"]),
            bool(getattr(processor, "keep_aspect_ratio", False)),
            int(getattr(processor, "ensure_multiple_of", 1) or 1),
        )

    def describe(self) -> str:
        if not self.keep_aspect_ratio:
            return f"fixed {self.height}x{self.width}"
        rule = f"keeps the frame's aspect ratio (nearest {self.height}x{self.width}, multiples of {self.multiple}"
        if self.budgeted:
            m = self.multiple
            rule += f"; at most {self.max_patches} patches of {m}x{m}, above which the frame's aspect ratio is kept"
        return rule + ")"
