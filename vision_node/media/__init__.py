"""What crosses the wire: the request's Content-Type, frames in, maps out, a combination's multipart answer."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..contract import ShapeBounds
from . import frames, maps, png
from .content_type import IMAGE_FORMATS


def warm_up() -> None:
    """Encode and decode one small JPEG and PNG, so the first request does not pay for loading the codecs."""
    frame = np.zeros((64, 64, 3), np.uint8)
    for media_type, fmt in IMAGE_FORMATS.items():
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format=fmt)
        frames.decode(out.getvalue(), media_type, None, None, ShapeBounds(min_hw=(1, 1)))
    maps.png(frame[..., 0], 1, png.GREY_PALETTE)
    maps.jpeg(frame, 90)
