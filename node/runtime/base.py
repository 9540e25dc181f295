"""The backend contract every runtime implements.

``__init__`` stores configuration; ``__enter__`` loads the graph and allocates every buffer for
the largest shape the bounds allow; ``infer`` runs one batch; ``__exit__`` frees, and freeing
twice is safe. Outputs returned by ``infer`` are views into the backend's own buffers, valid
until the next ``infer`` call: callers copy what they keep. One thread calls ``infer`` at a time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..contract import FRAME_INPUT, ShapeBounds


class Backend(Protocol):
    name: str  # "onnxruntime", "tensorrt"
    device: str  # what actually runs it, e.g. "CPUExecutionProvider"

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc) -> None: ...

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory(self) -> dict[str, int]:
        """Bytes this backend holds, by kind (e.g. ``{"host_buffers": ...}``)."""
        ...


def check_frames(frames: np.ndarray, bounds: ShapeBounds, max_batch: int) -> None:
    """Refuse what no backend may be handed: not uint8 [N, H, W, 3], outside the bounds, over the batch."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"{FRAME_INPUT} must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    bounds.check(h, w)
    if n > max_batch:
        raise ValueError(f"batch {n} is above this backend's {max_batch}")
