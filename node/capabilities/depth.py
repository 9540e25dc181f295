"""Depth: relative depth (near = large), as a ControlNet map, a 16-bit PNG or the raw floats.

Normalisation maps a range to black..white, near = bright, as controlnet_aux does. Which range:

- by default the frame's own min..max (what the peers do; a still scene pulses as its extremes move);
- ``range=lo,hi``: that fixed range;
- ``range=lo,hi`` with ``smooth=s``: ``s * range + (1 - s) * the frame's range``, an exponential
  moving average whose state travels with the requests: X-Metadata's ``depth_range`` is the range
  used, and a client that sends it back as the next frame's ``range`` gets smoothed maps. The node
  keeps nothing between requests, so a retry, or another node, answers the same request alike.
"""

from __future__ import annotations

import numpy as np

from .. import codecs
from ..errors import InputError
from .base import Encoded, Rendered, choice, number, parse_options, raw_output, value_range

OUTPUTS = ("controlnet", "png16", "raw")


def range_to_use(given, smooth: float | None, frame_range: list[float]) -> tuple[float, float]:
    """The normalisation range: the frame's, a fixed one, or the given one moved towards the frame's."""
    if given is None:
        return frame_range[0], frame_range[1]
    if smooth is None:
        return given[0], given[1]
    return tuple(smooth * g + (1.0 - smooth) * f for g, f in zip(given, frame_range))


class Depth:
    name = "depth"
    outputs = OUTPUTS
    stream_outputs = ("controlnet",)  # image-shaped: what a video stream can carry
    parsers = {
        "output": choice(*OUTPUTS),
        "channels": choice("1", "3", kind=int),
        "range": value_range,
        "smooth": number(0.0, 0.99),
    }
    defaults = {"output": "controlnet", "channels": 3, "range": None, "smooth": None}

    def __init__(self, options: dict):
        self._scratch = np.empty(0, np.float32)  # reused by the worker thread for normalisation

    def parse_options(self, given: dict[str, str]) -> dict:
        return parse_options(given, self.parsers, self.defaults)

    def render(self, outputs: dict[str, np.ndarray], options: dict, frame_hw: tuple[int, int]) -> Rendered:
        depth = outputs["depth"][0]
        frame_range = [float(outputs["depth_min"][0]), float(outputs["depth_max"][0])]
        lo, hi = range_to_use(options["range"], options["smooth"], frame_range)
        meta = {"depth_range": [lo, hi], "frame_depth_range": frame_range}
        if options["output"] == "raw":
            return Rendered(depth.copy(), meta)
        levels = 255 if options["output"] == "controlnet" else 65535
        return Rendered(self._normalise(depth, lo, hi, levels), meta)

    def _normalise(self, depth: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
        """(depth - lo) / (hi - lo) * levels, clipped and rounded, in place in a reused buffer."""
        if self._scratch.size < depth.size:
            self._scratch = np.empty(depth.size, np.float32)
        t = self._scratch[: depth.size].reshape(depth.shape)
        np.subtract(depth, np.float32(lo), out=t)
        np.multiply(t, np.float32(levels / (hi - lo) if hi > lo else 0.0), out=t)
        np.clip(t, 0, levels, out=t)
        np.add(t, np.float32(0.5), out=t)
        return t.astype(np.uint8 if levels == 255 else np.uint16)

    def image(self, rendered: Rendered, options: dict) -> np.ndarray:
        """The 8-bit map as an image array (1 or 3 channels), for streams (pytrickle)."""
        if options["output"] != "controlnet":
            raise InputError("a stream carries 8-bit images: depth needs output=controlnet")
        grey = rendered.payload[..., None]
        return np.repeat(grey, 3, axis=2) if options["channels"] == 3 else grey

    def encode(self, rendered: Rendered, options: dict, png_level: int) -> Encoded:
        if options["output"] == "raw":
            return raw_output(rendered.payload)
        channels = options["channels"] if options["output"] == "controlnet" else 1
        return Encoded(codecs.png(rendered.payload, png_level, channels=channels), "image/png", {})
