"""Maps out: PNG (``media.png``, ISA-L) and JPEG (libjpeg-turbo)."""

from __future__ import annotations

import numpy as np
import simplejpeg

from . import png as png_file


def png(array: np.ndarray, level: int, palette: bytes | None = None) -> bytes:
    """A PNG of a map: uint8 [H, W] grey (indexed with ``palette``), uint16 [H, W], or uint8 [H, W, 3] RGB."""
    return png_file.encode(array, level, palette)


def jpeg(array: np.ndarray, quality: int) -> bytes:
    """A baseline JPEG of a uint8 map: [H, W] as one grey component, [H, W, 3] as RGB (chroma 4:2:0)."""
    if array.ndim == 2:
        return simplejpeg.encode_jpeg(array[..., None], quality, colorspace="GRAY", colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(array), quality, colorspace="RGB", colorsubsampling="420")
