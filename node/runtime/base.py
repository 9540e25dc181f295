"""The backend contract every runtime implements.

``__init__`` stores configuration; ``__enter__`` loads the graph and allocates every buffer for
the largest shape the bounds allow; ``infer`` runs one batch; ``__exit__`` frees, and freeing
twice is safe. Outputs returned by ``infer`` are views into the backend's own buffers, valid
until the next ``infer`` call: callers copy what they keep. One thread calls ``infer`` at a time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str  # "onnxruntime", "tensorrt"
    device: str  # what actually runs it, e.g. "CPUExecutionProvider"

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc) -> None: ...

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory(self) -> dict[str, int]:
        """Bytes this backend holds, by kind (e.g. ``{"host_buffers": ...}``)."""
        ...
