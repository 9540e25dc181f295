"""scikit-image's bundled photographs (the dev and bench extras; no download) as frames.

Parity compares the node with transformers on them, and the in-process engine benchmark can time
the graphs on them instead of the synthetic sample frames.
"""

from __future__ import annotations

import numpy as np

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field")


def photograph(name: str) -> np.ndarray:
    from skimage import data  # the dev extra; bundled images, no download

    photo = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return np.ascontiguousarray(photo)


def photograph_frames(names) -> tuple[list[tuple[int, int]], object]:
    """(sizes, frames_for): the photographs as the frames, a batch repeating the one of that size."""
    photos = {p.shape[:2]: p for p in map(photograph, names)}
    return list(photos), lambda h, w, batch: np.stack([photos[(h, w)]] * batch)
