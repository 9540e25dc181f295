"""Depth: relative depth (near = large), as a ControlNet map, a 16-bit PNG, a JPEG, or uncompressed.

Outputs (ms and bytes of each at 720p and 1080p: ``python -m benchmarks frame-cost``):

- ``controlnet`` (default): the 8-bit map as a PNG. ``channels=3`` writes it indexed with a grey
  palette, so Pillow's ``convert("RGB")``, OpenCV, diffusers' ``load_image``, ComfyUI and browsers all
  load the 3-channel RGB map ControlNet expects, at the cost of one byte per pixel; ``channels=1`` a
  plain grey PNG;
- ``png16``: the map at 16 bits (grey PNG);
- ``jpeg``: the 8-bit map as a grey JPEG at ``quality`` (default 90), for maps that travel a WAN;
- ``raw8``: the 8-bit map uncompressed (H*W bytes), for a consumer on the same host or LAN;
- ``raw``: the float32 depth itself.

Normalisation maps a range to black..white, near = bright, as controlnet_aux does. Which range:

- by default the frame's own min..max (what the peers do; a still scene pulses as its extremes move);
- ``range=lo,hi``: that fixed range;
- ``range=lo,hi`` with ``smooth=s``: ``s * range + (1 - s) * the frame's range``, an exponential
  moving average whose state travels with the requests: X-Metadata's ``depth_range`` is the range
  used, and a client that sends it back as the next frame's ``range`` gets smoothed maps. The node
  keeps nothing between requests, so a retry, or another node, answers the same request alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..media import maps
from ..media.png import GREY_PALETTE
from .base import (
    Encoded,
    Parser,
    Picture,
    Rendered,
    choice,
    jpeg_quality,
    number,
    parse_options,
    raw_output,
    value_range,
)

OUTPUTS = ("controlnet", "png16", "jpeg", "raw8", "raw")
_LEVELS = {"png16": 65535, "controlnet": 255, "jpeg": 255, "raw8": 255}
_CHUNK_FLOATS = 1 << 16  # normalise this many at a time: the float scratch stays in L2 (0.5 vs 0.9 ms at 720p)


def range_to_use(given, smooth: float | None, frame_range: list[float]) -> tuple[float, float]:
    """The normalisation range: the frame's, a fixed one, or the given one moved towards the frame's."""
    if given is None:
        return frame_range[0], frame_range[1]
    if smooth is None:
        return given[0], given[1]
    return tuple(smooth * g + (1.0 - smooth) * f for g, f in zip(given, frame_range))


class Depth:
    name: ClassVar[str] = "depth"
    outputs: ClassVar[tuple[str, ...]] = OUTPUTS
    media_types: ClassVar[dict[str, str]] = {
        "controlnet": "image/png",
        "png16": "image/png",
        "jpeg": "image/jpeg",
        "raw8": "application/octet-stream",
        "raw": "application/octet-stream",
    }
    stream_outputs: ClassVar[tuple[str, ...]] = ("controlnet",)  # image-shaped: what a video stream can carry
    parsers: ClassVar[dict[str, Parser]] = {
        "output": choice(*OUTPUTS),
        "channels": choice("1", "3", kind=int),
        "range": value_range,
        "smooth": number(0.0, 0.99),
        "quality": jpeg_quality,
    }
    defaults: ClassVar[dict[str, Any]] = {
        "output": "controlnet",
        "channels": 3,
        "range": None,
        "smooth": None,
        "quality": 90,
    }
    frame_parameters: ClassVar[tuple[str, ...]] = ()  # the graph takes the frames only
    warm_up_parameters: ClassVar[dict[str, float]] = {}

    def __init__(self, options: dict):
        """No state: render runs on any thread, on arrays the request owns."""

    def parse_options(self, given: dict[str, str]) -> dict:
        return parse_options(given, self.parsers, self.defaults, {"quality": "jpeg", "channels": "controlnet"})

    def render(self, outputs: dict[str, np.ndarray], options: dict, frame_hw: tuple[int, int]) -> Rendered:
        depth = outputs["depth"][0]
        frame_range = [float(outputs["depth_min"][0]), float(outputs["depth_max"][0])]
        lo, hi = range_to_use(options["range"], options["smooth"], frame_range)
        meta = {"depth_range": [lo, hi], "frame_depth_range": frame_range}
        if options["output"] == "raw":
            return Rendered(depth, meta)  # the request's own array
        return Rendered(self._normalise(depth, lo, hi, _LEVELS[options["output"]]), meta)

    @staticmethod
    def _normalise(depth: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
        """(depth - lo) / (hi - lo) * levels, clipped and rounded, a few rows at a time in place (the request owns
        ``depth``, and nothing reads it after), so each chunk stays in L2 through the five steps."""
        out = np.empty(depth.shape, np.uint8 if levels == 255 else np.uint16)
        scale = np.float32(levels / (hi - lo) if hi > lo else 0.0)
        rows = max(1, _CHUNK_FLOATS // depth.shape[1])
        for top in range(0, depth.shape[0], rows):
            t = depth[top : top + rows]
            np.subtract(t, np.float32(lo), out=t)
            np.multiply(t, scale, out=t)
            np.clip(t, 0, levels, out=t)
            np.add(t, np.float32(0.5), out=t)
            np.copyto(out[top : top + rows], t, casting="unsafe")  # truncates: with the + 0.5, rounds
        return out

    def picture(self, rendered: Rendered, options: dict) -> Picture:
        """The 8-bit map as grey video (``controlnet``, the stream output): a grey frame is a grey RGB map."""
        return Picture(rendered.payload, "gray8")

    def encode(self, rendered: Rendered, options: dict, png_level: int) -> Encoded:
        output = options["output"]
        if output in ("raw", "raw8"):
            return raw_output(rendered.payload)
        if output == "jpeg":
            return Encoded(maps.jpeg(rendered.payload, options["quality"]), "image/jpeg", {})
        palette = GREY_PALETTE if output == "controlnet" and options["channels"] == 3 else None
        return Encoded(maps.png(rendered.payload, png_level, palette), "image/png", {})
