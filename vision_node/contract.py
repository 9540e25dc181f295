"""The graph contract shared by the build step and the node: names, outputs and shape bounds.

Torch-free on purpose: the server imports this, never ``vision_node.builder``.
"""

from __future__ import annotations

from dataclasses import dataclass

CAPABILITIES = ("depth", "segmentation", "pose")

# The graphs' inputs and outputs, per capability: names the server and TensorRT bind by.
FRAME_INPUT = "frames"  # uint8 [N, H, W, 3]
# Per-frame parameters a graph may take beside its frames (float32 [N], one value per frame), each
# with the value a caller that passes none gets. Pose's person_threshold decides which person slots
# the keypoint model runs on; 0 runs it on every slot, as the graph did before it had the input.
FRAME_PARAMETERS = {"person_threshold": 0.0}
OUTPUTS = {
    "depth": ("depth", "depth_min", "depth_max"),  # float32 [N,H,W], [N], [N]
    "segmentation": ("classes",),  # uint8 [N,H,W]
    "pose": ("boxes", "box_scores", "keypoints", "keypoint_scores"),  # [N,K,4] [N,K] [N,K,17,2] [N,K,17]
}


# ``/infer/depth+pose``: several capabilities of one frame in one request.
COMBINE = "+"


def names_capabilities(name: str) -> bool:
    """Whether ``name`` is one capability or a combination of distinct ones (``depth+pose``)."""
    parts = name.split(COMBINE)
    return len(set(parts)) == len(parts) and all(p in CAPABILITIES for p in parts)


@dataclass(frozen=True)
class ShapeBounds:
    """Frame sizes and batch sizes every graph (and TensorRT profile) accepts.

    The default largest frame is 1080p: on a GPU every engine's activation memory is sized for the
    largest frame its profile admits, and 4K costs several times as much for every capability (the
    manifest's ``memory``; docs/building.md, "Frame bounds and memory"). ``--max-size 2160x3840`` admits 4K.
    """

    min_hw: tuple[int, int] = (64, 64)
    max_hw: tuple[int, int] = (1080, 1920)
    opt_hw: tuple[int, int] = (512, 512)
    max_batch: int = 4

    @classmethod
    def from_dict(cls, data: dict) -> ShapeBounds:
        """From the manifest's ``bounds`` (lists in JSON)."""
        return cls(
            min_hw=tuple(data["min_hw"]),
            max_hw=tuple(data["max_hw"]),
            opt_hw=tuple(data["opt_hw"]),
            max_batch=int(data["max_batch"]),
        )

    def check(self, height: int, width: int, batch: int = 1) -> None:
        """Raise ``ValueError`` naming the bound that a frame shape breaks."""
        (min_h, min_w), (max_h, max_w) = self.min_hw, self.max_hw
        if not (min_h <= height <= max_h and min_w <= width <= max_w):
            raise ValueError(
                f"frame {height}x{width} (HxW) is outside the graph's bounds {min_h}..{max_h} x {min_w}..{max_w}"
            )
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} is outside 1..{self.max_batch}")


def common_bounds(bounds: list[ShapeBounds]) -> ShapeBounds:
    """The frames every one of ``bounds`` accepts (a combination's graphs may have been built apart)."""
    first = bounds[0]
    if all(b == first for b in bounds):
        return first
    return ShapeBounds(
        min_hw=(max(b.min_hw[0] for b in bounds), max(b.min_hw[1] for b in bounds)),
        max_hw=(min(b.max_hw[0] for b in bounds), min(b.max_hw[1] for b in bounds)),
        opt_hw=first.opt_hw,
        max_batch=min(b.max_batch for b in bounds),
    )
