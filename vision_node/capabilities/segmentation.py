"""Segmentation: ADE20K class ids as an ADE20K-palette PNG (ControlNet seg), a class-id PNG, or raw bytes."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..media import maps
from .base import Encoded, Parser, Picture, Rendered, choice, parse_options, raw_output

OUTPUTS = ("palette", "classes", "raw")

# The 150-class ADE20K palette (mmsegmentation's ADE20KDataset.PALETTE), which the ControlNet
# seg annotator (UperNet on ADE20K) drew with. Class i gets colour i.
ADE20K_PALETTE = (
    (120, 120, 120),
    (180, 120, 120),
    (6, 230, 230),
    (80, 50, 50),
    (4, 200, 3),
    (120, 120, 80),
    (140, 140, 140),
    (204, 5, 255),
    (230, 230, 230),
    (4, 250, 7),
    (224, 5, 255),
    (235, 255, 7),
    (150, 5, 61),
    (120, 120, 70),
    (8, 255, 51),
    (255, 6, 82),
    (143, 255, 140),
    (204, 255, 4),
    (255, 51, 7),
    (204, 70, 3),
    (0, 102, 200),
    (61, 230, 250),
    (255, 6, 51),
    (11, 102, 255),
    (255, 7, 71),
    (255, 9, 224),
    (9, 7, 230),
    (220, 220, 220),
    (255, 9, 92),
    (112, 9, 255),
    (8, 255, 214),
    (7, 255, 224),
    (255, 184, 6),
    (10, 255, 71),
    (255, 41, 10),
    (7, 255, 255),
    (224, 255, 8),
    (102, 8, 255),
    (255, 61, 6),
    (255, 194, 7),
    (255, 122, 8),
    (0, 255, 20),
    (255, 8, 41),
    (255, 5, 153),
    (6, 51, 255),
    (235, 12, 255),
    (160, 150, 20),
    (0, 163, 255),
    (140, 140, 140),
    (250, 10, 15),
    (20, 255, 0),
    (31, 255, 0),
    (255, 31, 0),
    (255, 224, 0),
    (153, 255, 0),
    (0, 0, 255),
    (255, 71, 0),
    (0, 235, 255),
    (0, 173, 255),
    (31, 0, 255),
    (11, 200, 200),
    (255, 82, 0),
    (0, 255, 245),
    (0, 61, 255),
    (0, 255, 112),
    (0, 255, 133),
    (255, 0, 0),
    (255, 163, 0),
    (255, 102, 0),
    (194, 255, 0),
    (0, 143, 255),
    (51, 255, 0),
    (0, 82, 255),
    (0, 255, 41),
    (0, 255, 173),
    (10, 0, 255),
    (173, 255, 0),
    (0, 255, 153),
    (255, 92, 0),
    (255, 0, 255),
    (255, 0, 245),
    (255, 0, 102),
    (255, 173, 0),
    (255, 0, 20),
    (255, 184, 184),
    (0, 31, 255),
    (0, 255, 61),
    (0, 71, 255),
    (255, 0, 204),
    (0, 255, 194),
    (0, 255, 82),
    (0, 10, 255),
    (0, 112, 255),
    (51, 0, 255),
    (0, 194, 255),
    (0, 122, 255),
    (0, 255, 163),
    (255, 153, 0),
    (0, 255, 10),
    (255, 112, 0),
    (143, 255, 0),
    (82, 0, 255),
    (163, 255, 0),
    (255, 235, 0),
    (8, 184, 170),
    (133, 0, 255),
    (0, 255, 92),
    (184, 0, 255),
    (255, 0, 31),
    (0, 184, 255),
    (0, 214, 255),
    (255, 0, 112),
    (92, 255, 0),
    (0, 224, 255),
    (112, 224, 255),
    (70, 184, 160),
    (163, 0, 255),
    (153, 0, 255),
    (71, 255, 0),
    (255, 0, 163),
    (255, 204, 0),
    (255, 0, 143),
    (0, 255, 235),
    (133, 255, 0),
    (255, 0, 235),
    (245, 0, 255),
    (255, 0, 122),
    (255, 245, 0),
    (10, 190, 212),
    (214, 255, 0),
    (0, 204, 255),
    (20, 0, 255),
    (255, 255, 0),
    (0, 153, 255),
    (0, 41, 255),
    (0, 255, 204),
    (41, 0, 255),
    (41, 255, 0),
    (173, 0, 255),
    (0, 245, 255),
    (71, 0, 255),
    (122, 0, 255),
    (0, 255, 184),
    (0, 92, 255),
    (184, 255, 0),
    (0, 133, 255),
    (255, 214, 0),
    (25, 194, 194),
    (102, 255, 0),
    (92, 0, 255),
)
# Ids past the palette (none for ADE20K models) draw black.
_PALETTE = np.zeros((256, 3), np.uint8)
_PALETTE[: len(ADE20K_PALETTE)] = ADE20K_PALETTE
_PALETTE_BYTES = _PALETTE.tobytes()


class Segmentation:
    name: ClassVar[str] = "segmentation"
    outputs: ClassVar[tuple[str, ...]] = OUTPUTS
    media_types: ClassVar[dict[str, str]] = {
        "palette": "image/png",
        "classes": "image/png",
        "raw": "application/octet-stream",
    }
    stream_outputs: ClassVar[tuple[str, ...]] = ("palette", "classes")  # image-shaped: what a video stream can carry
    parsers: ClassVar[dict[str, Parser]] = {"output": choice(*OUTPUTS)}
    defaults: ClassVar[dict[str, Any]] = {"output": "palette"}
    frame_parameters: ClassVar[tuple[str, ...]] = ()  # the graph takes the frames only
    warm_up_parameters: ClassVar[dict[str, float]] = {}

    def __init__(self, options: dict):
        """``options``: the manifest's for this capability; segmentation reads none."""

    def parse_options(self, given: dict[str, str]) -> dict:
        return parse_options(given, self.parsers, self.defaults)

    def render(self, outputs: dict[str, np.ndarray], options: dict, frame_hw: tuple[int, int]) -> Rendered:
        return Rendered(outputs["classes"][0])  # the request's own array (keeps)

    def picture(self, rendered: Rendered, options: dict) -> Picture:
        """The map as video: ADE20K colours (``palette``), or class ids as grey levels (``classes``)."""
        if options["output"] == "palette":
            return Picture(rendered.payload, "pal8", _PALETTE)
        return Picture(rendered.payload, "gray8")

    def encode(self, rendered: Rendered, options: dict, png_level: int) -> Encoded:
        if options["output"] == "raw":
            return raw_output(rendered.payload)
        palette = _PALETTE_BYTES if options["output"] == "palette" else None
        return Encoded(maps.png(rendered.payload, png_level, palette=palette), "image/png", {})
