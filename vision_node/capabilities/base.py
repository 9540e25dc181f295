"""What every capability shares: request options as data, and the rendered result.

A capability turns the graph's outputs into what a client asked for, in two steps:
``render`` (worker thread, right after inference, makes from the backend's buffers a result
the request owns) and ``encode`` (any thread: PNG, raw bytes or JSON). An output that ``render``
would only copy, a capability names in ``keeps(options)``: the backend then writes it into an
array the request owns (``runtime.base``), and ``render`` passes that on as it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError


@dataclass
class Rendered:
    payload: Any  # a numpy map, or a JSON-able object
    meta: dict = field(default_factory=dict)  # per-frame facts for X-Metadata (e.g. the depth range used)


@dataclass(frozen=True)
class Picture:
    """A map as a video frame carries it: grey levels, palette indices or RGB (encoded by ``streams.video``)."""

    pixels: np.ndarray  # uint8 [H, W] for "gray8" and "pal8", [H, W, 3] for "rgb24"
    format: str
    palette: np.ndarray | None = None  # "pal8": uint8 [N, 3] RGB colours of indices 0..N-1


@dataclass(frozen=True)
class Encoded:
    body: bytes | memoryview  # a memoryview spares copying a raw array once more
    media_type: str
    meta: dict  # e.g. {"dtype": "float32", "shape": [h, w]} for raw outputs


# Each parser carries ``schema``: the option as OpenAPI describes it (vision_node/openapi.py).


def choice(*allowed: str, kind=str) -> Callable[[str, str], Any]:
    def parse(name: str, value: str):
        if value not in allowed:
            raise InputError(f"option {name}={value!r}: expected one of {', '.join(allowed)}")
        return kind(value)

    parse.schema = {"type": "integer" if kind is int else "string", "enum": [kind(a) for a in allowed]}
    return parse


def number(lo: float, hi: float, kind=float) -> Callable[[str, str], float]:
    def parse(name: str, value: str):
        try:
            x = kind(value)
        except ValueError:
            raise InputError(f"option {name}={value!r}: not a {kind.__name__}") from None
        if not (math.isfinite(x) and lo <= x <= hi):
            raise InputError(f"option {name}={value!r}: expected {lo:g}..{hi:g}")
        return x

    parse.schema = {"type": "integer" if kind is int else "number", "minimum": lo, "maximum": hi}
    return parse


def value_range(name: str, value: str) -> tuple[float, float]:
    """``lo,hi``: two finite numbers, lo < hi."""
    try:
        lo, hi = (float(part) for part in value.split(","))
    except ValueError:
        raise InputError(f"option {name}={value!r}: expected two numbers 'lo,hi'") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"option {name}={value!r}: expected finite lo < hi")
    return lo, hi


value_range.schema = {"type": "string", "description": "two finite numbers lo,hi with lo < hi", "example": "0,10"}


jpeg_quality = number(1, 100, kind=int)
jpeg_quality.schema["description"] = "JPEG quality for output=jpeg (default 90)"


def parse_options(
    given: dict[str, str], parsers: dict[str, Callable], defaults: dict[str, Any], only_for: dict | None = None
) -> dict[str, Any]:
    """Parse ``given`` against the capability's parsers; an unknown option is a 400 that lists the known ones,
    and so is one given with an output it does not apply to (``only_for``: option -> its output)."""
    unknown = sorted(set(given) - set(parsers))
    if unknown:
        raise InputError(f"unknown option {', '.join(unknown)}; this capability takes: {', '.join(sorted(parsers))}")
    options = {**defaults, **{name: parsers[name](name, value) for name, value in given.items()}}
    for name, output in (only_for or {}).items():
        if name in given and options["output"] != output:
            raise InputError(f"option {name} is for output={output}, not output={options['output']}")
    return options


def raw_output(array: np.ndarray) -> Encoded:
    """The array's little-endian bytes, without a copy when it is already so; X-Metadata says dtype and shape."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    meta = {"dtype": _dtype_name(array.dtype), "shape": list(array.shape)}
    return Encoded(memoryview(array).cast("B"), "application/octet-stream", meta)


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # numpy builds it in Python on every call
