"""The resolution a graph runs its model at, for a given frame: fixed, or picked as the processor picks it.

Depth Anything's processor (DPT's ``get_resize_output_image_size``) keeps the frame's aspect
ratio: it scales by whichever of the two factors is nearer 1 and rounds each side to a multiple
of 14, so a 1080×1920 frame runs at 518×924 and a 360×640 one at 294×518. A graph built
"keep-aspect" does the same inside the graph; a "fixed" graph always runs at one size (a
constant cost per frame, what the peers do).

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

    @property
    def mode(self) -> str:
        return KEEP_ASPECT if self.keep_aspect_ratio else FIXED

    @property
    def size(self) -> tuple[int, int]:
        """The nominal (height, width): the processor's ``size``, or the fixed resolution."""
        return self.height, self.width

    def model_sizes(self, heights, widths) -> tuple[np.ndarray, np.ndarray]:
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
        return {"mode": self.mode, "size": [self.height, self.width], "multiple": self.multiple}

    @classmethod
    def from_dict(cls, data: dict) -> Sizing:
        height, width = data["size"]
        return cls(int(height), int(width), data["mode"] == KEEP_ASPECT, int(data.get("multiple", 1)))

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
        return f"keeps the frame's aspect ratio (nearest {self.height}x{self.width}, multiples of {self.multiple})"
