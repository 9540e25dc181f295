"""A stream's parameters: the capability's options, named as over HTTP, plus the video's own.

They arrive as JSON (``params`` of ``/stream/start``, the body of ``/stream/params``, a message on the
control channel): values may be strings, numbers, booleans or, for ``range``, a pair. Each update is
merged into what the stream was given before and parsed whole again, so a stream's options are always
a valid set; a refused update changes nothing.

- ``output``: one of the capability's image outputs (depth ``controlnet``, segmentation ``palette`` or
  ``classes``, pose ``skeleton``); the first by default;
- the capability's other options (``smooth``, ``range``, ``keypoint_threshold``, ...);
- ``width`` and ``height`` (together, even, within the graph's bounds): each frame is scaled to cover
  that size and cropped at its centre, as Livepeer's decoders do; without them the map has the input's
  size (scaled down, or up, to fit the bounds if it is outside them);
- ``max_framerate`` (1-60, default 24 as in Livepeer's decoders): frames closer than that by pts are
  skipped before they are decoded into RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..capabilities.base import Capability
from ..contract import ShapeBounds
from ..errors import InputError

VIDEO_KEYS = ("width", "height", "max_framerate")
DEFAULT_MAX_FRAMERATE = 24.0


@dataclass(frozen=True)
class StreamOptions:
    given: dict[str, str] = field(default_factory=dict)  # what the client set, merged over updates
    options: dict[str, Any] = field(default_factory=dict)  # the capability's parsed options
    size: tuple[int, int] | None = None  # (height, width) asked for, or None: the input's
    max_framerate: float = DEFAULT_MAX_FRAMERATE

    def public(self) -> dict:
        """What status events and /stream/status show."""
        return {**self.given, "max_framerate": self.max_framerate}


def parse(
    capability: Capability, bounds: ShapeBounds, params: Any, before: StreamOptions | None = None
) -> StreamOptions:
    """``params`` (a JSON object or null) merged over ``before``; InputError naming what is wrong."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InputError(f"params must be a JSON object, got {type(params).__name__}")
    given = dict(before.given) if before else {}
    for key, value in params.items():
        if value is None:
            given.pop(key, None)  # null: back to the default
        else:
            given[key] = _text(key, value)
    video = {key: given[key] for key in VIDEO_KEYS if key in given}
    options = capability.parse_options(
        {"output": capability.stream_outputs[0], **{k: v for k, v in given.items() if k not in VIDEO_KEYS}}
    )
    if options["output"] not in capability.stream_outputs:
        raise InputError(
            f"output={options['output']}: a stream carries video, so {capability.name} takes output "
            f"{' or '.join(capability.stream_outputs)}"
        )
    return StreamOptions(given, options, _size(video, bounds), _framerate(video))


def _text(key: str, value: Any) -> str:
    """A JSON value as the option's text, as it would come over HTTP."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and key == "range":
        return ",".join(str(v) for v in value)
    raise InputError(f"param {key}: expected a string or a number, got {type(value).__name__}")


def _size(video: dict[str, str], bounds: ShapeBounds) -> tuple[int, int] | None:
    if "width" not in video and "height" not in video:
        return None
    if "width" not in video or "height" not in video:
        raise InputError("params width and height come together (or neither: the input's size)")
    try:
        width, height = int(video["width"]), int(video["height"])
    except ValueError:
        raise InputError(f"params width={video['width']!r} height={video['height']!r}: not integers") from None
    if width % 2 or height % 2:
        raise InputError(f"params width={width} height={height}: H.264 in 4:2:0 needs even sizes")
    try:
        bounds.check(height, width)
    except ValueError as err:
        raise InputError(f"params width={width} height={height}: {err}") from None
    return height, width


def _framerate(video: dict[str, str]) -> float:
    if "max_framerate" not in video:
        return DEFAULT_MAX_FRAMERATE
    try:
        rate = float(video["max_framerate"])
    except ValueError:
        rate = math.nan
    if not 1 <= rate <= 60:
        raise InputError(f"param max_framerate={video['max_framerate']!r}: expected 1..60 frames a second")
    return rate


def fit(height: int, width: int, bounds: ShapeBounds) -> tuple[int, int] | None:
    """The size a ``height``×``width`` input is served at: as it is if the bounds take it, else scaled (keeping its
    aspect) to fit them; even, for 4:2:0 video. None when no such size exists (an aspect the bounds cannot take)."""
    (min_h, min_w), (max_h, max_w) = bounds.min_hw, bounds.max_hw
    scale = 1.0
    if height > max_h or width > max_w:
        scale = min(max_h / height, max_w / width)
    elif height < min_h or width < min_w:
        scale = max(min_h / height, min_w / width)
    h, w = _even(height * scale, min_h, max_h), _even(width * scale, min_w, max_w)
    if not (min_h <= h <= max_h and min_w <= w <= max_w):
        return None
    return h, w


def _even(x: float, lo: int, hi: int) -> int:
    """The even integer nearest ``x`` that stays within lo..hi where one does."""
    n = 2 * round(x / 2)
    if n > hi:
        n -= 2
    if n < lo:
        n += 2
    return n
