"""Deterministic sample frames for verification and warm-up: no downloads, no bundled files.

Smooth gradients with hard-edged shapes and a little noise: resampling sees both flat areas
and sharp edges, which is where filters and antialiasing differ.
"""

from __future__ import annotations

import numpy as np

# (height, width): 16:9 at two sizes, square, portrait, 4:3, an awkward size, a small frame, and a tall portrait
# at the default bounds' height, which every fixed-size resize (segmentation's 512, pose's 640) shrinks vertically
# first: the other branch of the resize's If on TensorRT, so the build and a card's gate and selftest run both.
# Depth's model resolution follows each one's aspect ratio, as the processor's does.
VERIFY_SIZES = ((360, 640), (720, 1280), (512, 512), (640, 480), (480, 640), (289, 403), (96, 128), (1080, 608))


def frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 23.0)], -1) * 200
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.05, 0.3) * min(height, width)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        else:
            mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < 0.6 * r)
        img[mask] = colour
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def frames(height: int, width: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.stack([frame(height, width, seed + i) for i in range(batch)])
