"""Pose: COCO-17 keypoints of each detected person, as JSON (COCO-17 and OpenPose-18) or a skeleton PNG.

The skeleton follows the ControlNet OpenPose annotator: 18 keypoints (COCO-17 plus the neck
between the shoulders), its 17 limbs drawn 4 px wide in its colours at 60 %, then each
keypoint as a 4 px disc in full colour, on black, at the frame's size.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from .base import Encoded, Rendered, choice, number, parse_options

OUTPUTS = ("json", "skeleton")

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip
OPENPOSE18 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye",
    "right_ear", "left_ear",
)  # fmt: skip
_NECK = len(COCO17)  # index of the neck once appended after the 17 COCO keypoints
_OPENPOSE_FROM_COCO = np.array([COCO17.index(n) if n != "neck" else _NECK for n in OPENPOSE18])

# OpenPose limbs as (keypoint, keypoint) in OPENPOSE18 order, and the 18 OpenPose colours.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
STICK_WIDTH = 4


def openpose18(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 [P,17,2] and [P,17] -> OpenPose-18 order, the neck at the shoulders' midpoint (min of their scores)."""
    neck = keypoints[:, 5:7].mean(axis=1, keepdims=True)
    neck_score = scores[:, 5:7].min(axis=1, keepdims=True)
    return (
        np.concatenate([keypoints, neck], axis=1)[:, _OPENPOSE_FROM_COCO],
        np.concatenate([scores, neck_score], axis=1)[:, _OPENPOSE_FROM_COCO],
    )


class Pose:
    name = "pose"
    outputs = OUTPUTS
    stream_outputs = ("skeleton",)  # image-shaped: what a video stream can carry
    parsers = {
        "output": choice(*OUTPUTS),
        "person_threshold": number(0.0, 1.0),
        "keypoint_threshold": number(0.0, 1.0),
    }
    defaults = {"output": "json", "person_threshold": 0.5, "keypoint_threshold": 0.3}

    def __init__(self, options: dict):
        self.max_persons = options.get("max_persons")

    def parse_options(self, given: dict[str, str]) -> dict:
        return parse_options(given, self.parsers, self.defaults)

    def render(self, outputs: dict[str, np.ndarray], options: dict, frame_hw: tuple[int, int]) -> Rendered:
        keep = np.flatnonzero(outputs["box_scores"][0] >= options["person_threshold"])
        people = {name: outputs[name][0][keep] for name in ("boxes", "box_scores", "keypoints", "keypoint_scores")}
        people["frame_hw"] = frame_hw
        return Rendered(people, {"persons": int(keep.size)})

    def encode(self, rendered: Rendered, options: dict, png_level: int) -> Encoded:
        if options["output"] == "skeleton":
            return Encoded(self._skeleton(rendered.payload, options, png_level), "image/png", {})
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

    @staticmethod
    def _skeleton(people: dict, options: dict, png_level: int) -> bytes:
        out = io.BytesIO()
        draw_skeleton(people, options).save(out, format="PNG", compress_level=png_level)
        return out.getvalue()

    def image(self, rendered: Rendered, options: dict) -> np.ndarray:
        """The skeleton as an RGB array, for streams (pytrickle)."""
        if options["output"] != "skeleton":
            raise InputError("a stream carries images: pose needs output=skeleton")
        return np.array(draw_skeleton(rendered.payload, options))  # owned and writable: torch wraps it


def draw_skeleton(people: dict, options: dict) -> Image.Image:
    """OpenPose-style skeletons of ``people`` on black at the frame's size."""
    height, width = people["frame_hw"]
    xy, score = openpose18(people["keypoints"], people["keypoint_scores"])
    visible = score >= options["keypoint_threshold"]
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    for (a, b), colour in zip(LIMBS, COLOURS):
        dim = tuple(int(c * 0.6) for c in colour)
        for p in np.flatnonzero(visible[:, a] & visible[:, b]):
            draw.polygon(_limb(xy[p, a], xy[p, b]), fill=dim)
    r = STICK_WIDTH
    for j, colour in enumerate(COLOURS):
        for x, y in xy[visible[:, j], j]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return canvas


def _limb(p: np.ndarray, q: np.ndarray, steps: int = 36) -> list[tuple[float, float]]:
    """An ellipse from p to q, STICK_WIDTH wide each side: the annotator's limb shape."""
    centre = (p + q) / 2
    dx, dy = q - p
    half_length, angle = math.hypot(dx, dy) / 2, math.atan2(dy, dx)
    t = np.linspace(0, 2 * math.pi, steps, endpoint=False)
    ex, ey = half_length * np.cos(t), STICK_WIDTH * np.sin(t)
    cos, sin = math.cos(angle), math.sin(angle)
    return list(zip(centre[0] + ex * cos - ey * sin, centre[1] + ex * sin + ey * cos))
