"""What every capability shares: request options as data, and the rendered result.

A capability turns the graph's outputs into what a client asked for, in two steps: ``render`` (makes
the result from the outputs, which the request owns: the backend wrote them into arrays of its own, so
rendering runs after the worker has moved on to the next frame, on the thread that encodes) and
``encode`` (PNG, JPEG, raw bytes or JSON).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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


class Capability(Protocol):
    """What every capability class (``Depth``, ``Segmentation``, ``Pose``) provides, and all the node uses of one.

    The class attributes describe it (the node reads them from the class and from its instances alike);
    an instance, made with the manifest's options for the capability, renders, encodes and pictures.
    """

    name: ClassVar[str]  # the route's name: /infer/{name}
    outputs: ClassVar[tuple[str, ...]]  # what ``output=`` takes
    stream_outputs: ClassVar[tuple[str, ...]]  # the image-shaped outputs a video stream can carry
    media_types: ClassVar[dict[str, str]]  # each output's Content-Type
    parsers: ClassVar[dict[str, Parser]]  # every request option it takes
    defaults: ClassVar[dict[str, Any]]  # every option's value when the request leaves it out
    # Request options handed to the graph per frame, float32 [N] each (pose: person_threshold); () for none.
    frame_parameters: ClassVar[tuple[str, ...]]
    # Those parameters' values for the warm-up frame ({} for none: the graph's defaults).
    warm_up_parameters: ClassVar[dict[str, float]]

    def __init__(self, options: dict[str, Any]) -> None: ...

    def parse_options(self, given: dict[str, str]) -> dict[str, Any]:
        """The request's options, parsed and completed with the defaults; InputError (400) for a bad one."""
        ...

    def render(self, outputs: dict[str, np.ndarray], options: dict[str, Any], frame_hw: tuple[int, int]) -> Rendered:
        """One frame's result (any thread): ``outputs`` are the request's own arrays, batch of one."""
        ...

    def encode(self, rendered: Rendered, options: dict[str, Any], png_level: int) -> Encoded:
        """The response body (any thread): PNG, JPEG, raw bytes or JSON."""
        ...

    def picture(self, rendered: Rendered, options: dict[str, Any]) -> Picture:
        """The result as a live stream's video frame (a stream output only)."""
        ...


@dataclass(frozen=True, eq=False)
class Parser:
    """One request option: ``parser(name, value)`` is its value, or an InputError (400) that says why not;
    ``schema`` is the option as OpenAPI describes it (vision_node/http/openapi.py)."""

    parse: Callable[[str, str], Any]
    schema: dict[str, Any]

    def __call__(self, name: str, value: str) -> Any:
        return self.parse(name, value)


def choice(*allowed: str, kind: Callable[[str], Any] = str) -> Parser:
    def parse(name: str, value: str) -> Any:
        if value not in allowed:
            raise InputError(f"option {name}={value!r}: expected one of {', '.join(allowed)}")
        return kind(value)

    return Parser(parse, {"type": "integer" if kind is int else "string", "enum": [kind(a) for a in allowed]})


def number(lo: float, hi: float, kind: type[float] | type[int] = float) -> Parser:
    def parse(name: str, value: str) -> float:
        try:
            x = kind(value)
        except ValueError:
            raise InputError(f"option {name}={value!r}: not a {kind.__name__}") from None
        if not (math.isfinite(x) and lo <= x <= hi):
            raise InputError(f"option {name}={value!r}: expected {lo:g}..{hi:g}")
        return x

    return Parser(parse, {"type": "integer" if kind is int else "number", "minimum": lo, "maximum": hi})


def _value_range(name: str, value: str) -> tuple[float, float]:
    """``lo,hi``: two finite numbers, lo < hi."""
    try:
        lo, hi = (float(part) for part in value.split(","))
    except ValueError:
        raise InputError(f"option {name}={value!r}: expected two numbers 'lo,hi'") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"option {name}={value!r}: expected finite lo < hi")
    return lo, hi


value_range = Parser(
    _value_range, {"type": "string", "description": "two finite numbers lo,hi with lo < hi", "example": "0,10"}
)


jpeg_quality = number(1, 100, kind=int)
jpeg_quality.schema["description"] = "JPEG quality for output=jpeg (default 90)"


def parse_options(
    given: dict[str, str],
    parsers: Mapping[str, Parser],
    defaults: Mapping[str, Any],
    only_for: dict[str, str] | None = None,
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
    return Encoded(array.data.cast("B"), "application/octet-stream", meta)  # .data: memoryview(array)


@functools.cache
def _dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # numpy builds it in Python on every call
