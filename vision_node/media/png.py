"""PNG files of the node's maps at memory speed: every row "Up"-filtered, one IDAT deflated by ISA-L.

Pillow's encoder (zlib, a filter chosen per row) took 25-62 ms on a 720p 8-bit map here and 77-86 ms
for the 3-channel depth map; the same map "Up"-filtered and deflated by ISA-L at level 1 takes 1-2 ms
and comes out smaller (``python -m benchmarks frame-cost``, encoder table). No maintained Python
library writes PNG around ISA-L or libdeflate, and the container is five chunks, so it is written here.

``level`` keeps zlib's scale: 0 stores (no compression), 1 is ISA-L level 1 (the default: the fastest
measured, and smaller than zlib 1), 2-9 are zlib's own levels, slower and smaller.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, RGB, INDEXED = 0, 2, 3  # PNG colour types
_UP = 2  # filter type: each byte minus the byte above it (the first row's "above" is zeros)

GREY_PALETTE = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()  # index i -> (i, i, i)


def encode(array: np.ndarray, level: int = 1, palette: bytes | None = None) -> bytes:
    """A PNG of ``array``: uint8 [H, W] (grey, or indexed with ``palette``: 3 bytes per entry, at most
    256 entries), uint16 [H, W] (16-bit grey) or uint8 [H, W, 3] (RGB)."""
    colour, bit_depth, rows = _layout(array, palette)
    height, width = array.shape[:2]
    filtered = up_filtered(rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    parts = [SIGNATURE, *_chunk(b"IHDR", header)]
    if palette is not None:
        parts += _chunk(b"PLTE", palette)
    parts += [*_chunk(b"IDAT", _deflate(filtered, level)), *_chunk(b"IEND", b"")]
    return b"".join(parts)  # the one copy of the compressed data


def up_filtered(rows: np.ndarray) -> np.ndarray:
    """PNG's scanlines of ``rows`` ([H, bytes per row] uint8), each with the "Up" filter byte in front."""
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256, as the filter wants
    return filtered


def _layout(array: np.ndarray, palette: bytes | None) -> tuple[int, int, np.ndarray]:
    """(colour type, bit depth, the image's bytes as [H, bytes per row])."""
    if array.ndim == 2 and array.dtype == np.uint8:
        if palette is not None and not (len(palette) % 3 == 0 and 3 <= len(palette) <= 768):
            raise ValueError(f"a PNG palette has 1-256 RGB entries, got {len(palette)} bytes")
        colour = INDEXED if palette is not None else GREY
        return colour, 8, np.ascontiguousarray(array)
    if palette is not None:
        raise ValueError("a palette needs a uint8 [H, W] map of indices")
    if array.ndim == 2 and array.dtype == np.uint16:
        big_endian = np.ascontiguousarray(array, dtype=">u2")  # PNG stores 16-bit samples big-endian
        return GREY, 16, big_endian.view(np.uint8).reshape(array.shape[0], -1)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return RGB, 8, np.ascontiguousarray(array).reshape(array.shape[0], -1)
    raise ValueError(f"no PNG layout for a {array.dtype} array of shape {array.shape}")


def _deflate(data: np.ndarray, level: int) -> bytes:
    if level == 1:
        return isal_zlib.compress(data, 1)
    # .data: the array's memory as a memoryview (numpy's stubs make ndarray itself a Buffer only from Python 3.12)
    return zlib.compress(data.data, level)


def _chunk(kind: bytes, data: bytes) -> tuple[bytes, ...]:
    """A chunk as its parts: length, type, data, CRC of type and data."""
    crc = isal_zlib.crc32(data, isal_zlib.crc32(kind))
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)
