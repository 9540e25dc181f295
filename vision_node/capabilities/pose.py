"""Pose: COCO-17 keypoints of each detected person, as JSON (COCO-17 and OpenPose-18) or a skeleton image.

The skeleton follows the ControlNet OpenPose annotator: 18 keypoints (COCO-17 plus the neck
between the shoulders), its 17 limbs drawn 4 px wide in its colours at 60 %, then each
keypoint as a 4 px disc in full colour, on black, at the frame's size. It is drawn as indices
into its 37 colours (one byte a pixel, the same picture as drawing in RGB), so the PNG
(``skeleton``) is an indexed one; ``jpeg`` is the same picture as an RGB JPEG at ``quality``.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from ..media import maps
from .base import Encoded, Parser, Picture, Rendered, choice, jpeg_quality, number, parse_options

OUTPUTS = ("json", "skeleton", "jpeg")

COCO17 = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
OPENPOSE18 = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
_NECK = len(COCO17)  # index of the neck once appended after the 17 COCO keypoints
_OPENPOSE_FROM_COCO = np.array([COCO17.index(n) if n != "neck" else _NECK for n in OPENPOSE18])

# OpenPose limbs as (keypoint, keypoint) in OPENPOSE18 order, and the 18 OpenPose colours.
LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)
COLOURS = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
STICK_WIDTH = 4
# The skeleton's palette: black, the 18 colours (keypoints), the same at 60 % (limbs).
_LIMB_INDEX = 1 + len(COLOURS)
SKELETON_PALETTE = np.array(
    [(0, 0, 0), *COLOURS, *(tuple(int(c * 0.6) for c in colour) for colour in COLOURS)], np.uint8
)
_PALETTE_BYTES = SKELETON_PALETTE.tobytes()


def openpose18(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 [P,17,2] and [P,17] -> OpenPose-18 order, the neck at the shoulders' midpoint (min of their scores)."""
    neck = keypoints[:, 5:7].mean(axis=1, keepdims=True)
    neck_score = scores[:, 5:7].min(axis=1, keepdims=True)
    return (
        np.concatenate([keypoints, neck], axis=1)[:, _OPENPOSE_FROM_COCO],
        np.concatenate([scores, neck_score], axis=1)[:, _OPENPOSE_FROM_COCO],
    )


class Pose:
    name: ClassVar[str] = "pose"
    outputs: ClassVar[tuple[str, ...]] = OUTPUTS
    media_types: ClassVar[dict[str, str]] = {"json": "application/json", "skeleton": "image/png", "jpeg": "image/jpeg"}
    stream_outputs: ClassVar[tuple[str, ...]] = ("skeleton",)  # image-shaped: what a video stream can carry
    parsers: ClassVar[dict[str, Parser]] = {
        "output": choice(*OUTPUTS),
        "person_threshold": number(0.0, 1.0),
        "keypoint_threshold": number(0.0, 1.0),
        "quality": jpeg_quality,
    }
    defaults: ClassVar[dict[str, Any]] = {
        "output": "json",
        "person_threshold": 0.5,
        "keypoint_threshold": 0.3,
        "quality": 90,
    }
    # Handed to the graph per frame: the keypoint model runs only on the persons the request keeps.
    frame_parameters: ClassVar[tuple[str, ...]] = ("person_threshold",)
    # The warm-up frame runs the detector only (nobody reaches 1.0): a start-up is not spent on 8 crops of noise.
    warm_up_parameters: ClassVar[dict[str, float]] = {"person_threshold": 1.0}

    def __init__(self, options: dict):
        """``options``: the manifest's for this capability; pose reads none (its graph knows its persons)."""

    def parse_options(self, given: dict[str, str]) -> dict:
        return parse_options(given, self.parsers, self.defaults, {"quality": "jpeg"})

    def render(self, outputs: dict[str, np.ndarray], options: dict, frame_hw: tuple[int, int]) -> Rendered:
        keep = np.flatnonzero(outputs["box_scores"][0] >= options["person_threshold"])
        people = {name: outputs[name][0][keep] for name in ("boxes", "box_scores", "keypoints", "keypoint_scores")}
        people["frame_hw"] = frame_hw
        return Rendered(people, {"persons": int(keep.size)})

    def encode(self, rendered: Rendered, options: dict, png_level: int) -> Encoded:
        if options["output"] == "skeleton":
            indices = np.asarray(skeleton(rendered.payload, options))
            return Encoded(maps.png(indices, png_level, _PALETTE_BYTES), "image/png", {})
        if options["output"] == "jpeg":
            return Encoded(maps.jpeg(skeleton_rgb(rendered.payload, options), options["quality"]), "image/jpeg", {})
        return Encoded(self._json(rendered.payload, options), "application/json", {})

    @staticmethod
    def _json(people: dict, options: dict) -> bytes:
        op_xy, op_score = openpose18(people["keypoints"], people["keypoint_scores"])
        visible = op_score >= options["keypoint_threshold"]
        # OpenPose convention: an invisible keypoint is (0, 0, 0).
        openpose = np.where(visible[..., None], np.concatenate([op_xy, op_score[..., None]], -1), 0.0)
        coco = np.concatenate([people["keypoints"], people["keypoint_scores"][..., None]], -1)
        result = {
            "canvas_height": people["frame_hw"][0],
            "canvas_width": people["frame_hw"][1],
            "people": [
                {
                    "box": np.round(box, 2).tolist(),
                    "score": round(float(score), 4),
                    "keypoints": np.round(kps, 3).tolist(),
                    "pose_keypoints_2d": np.round(op, 3).ravel().tolist(),
                }
                for box, score, kps, op in zip(people["boxes"], people["box_scores"], coco, openpose)
            ],
        }
        return json.dumps(result, separators=(",", ":")).encode()

    def picture(self, rendered: Rendered, options: dict) -> Picture:
        """The skeleton as video (``skeleton``, the stream output): its palette indices and palette."""
        return Picture(np.asarray(skeleton(rendered.payload, options)), "pal8", SKELETON_PALETTE)


def skeleton_rgb(people: dict, options: dict) -> np.ndarray:
    """The skeleton in RGB, owned and writable (torch wraps it); Pillow expands the palette 8x faster than numpy."""
    return np.array(skeleton(people, options).convert("RGB"))


def skeleton(people: dict, options: dict) -> Image.Image:
    """OpenPose-style skeletons of ``people`` on black at the frame's size: a "P" image of SKELETON_PALETTE."""
    height, width = people["frame_hw"]
    xy, score = openpose18(people["keypoints"], people["keypoint_scores"])
    visible = score >= options["keypoint_threshold"]
    canvas = Image.new("P", (width, height))
    canvas.putpalette(_PALETTE_BYTES)
    draw = ImageDraw.Draw(canvas)
    limbs = [(limb, p) for limb, (a, b) in enumerate(LIMBS) for p in np.flatnonzero(visible[:, a] & visible[:, b])]
    if limbs:  # every limb's polygon at once; drawn in the annotator's order
        which, person = np.array(limbs).T
        ends = np.array(LIMBS)[which]
        polygons = _limbs(xy[person, ends[:, 0]], xy[person, ends[:, 1]])
        for polygon, limb in zip(polygons.reshape(len(limbs), -1).tolist(), which.tolist()):
            draw.polygon(polygon, fill=_LIMB_INDEX + limb)
    r = STICK_WIDTH
    for j in range(len(COLOURS)):
        for x, y in xy[visible[:, j], j]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=1 + j)
    return canvas


def _limbs(p: np.ndarray, q: np.ndarray, steps: int = 36) -> np.ndarray:
    """Ellipses from p to q ([N, 2] each), STICK_WIDTH wide each side: the annotator's limb shape, [N, steps, 2]."""
    centre = (p + q) / 2
    d = (q - p).astype(np.float64)
    half_length, angle = np.hypot(d[:, 0], d[:, 1])[:, None] / 2, np.arctan2(d[:, 1], d[:, 0])[:, None]
    t = np.linspace(0, 2 * math.pi, steps, endpoint=False)
    ex, ey = half_length * np.cos(t), STICK_WIDTH * np.sin(t)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([centre[:, :1] + ex * cos - ey * sin, centre[:, 1:] + ex * sin + ey * cos], axis=-1)
