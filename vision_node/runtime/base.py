"""The backend contract every runtime implements.

``__init__`` stores configuration; ``__enter__`` loads the graph and allocates every buffer for
the largest shape the bounds allow; ``infer`` runs one batch; ``__exit__`` frees, and freeing
twice is safe. Outputs returned by ``infer`` are views into the backend's own buffers, valid
until the next ``infer`` call, except those named in ``owned``: those are new arrays the caller
keeps (a caller that would copy an output anyway asks for it so, and the backend writes it there
when it can). One thread calls ``infer`` at a time.

``inputs`` holds the frames and may hold the graph's per-frame parameters (``FRAME_PARAMETERS``,
float32 [N]); a parameter left out takes its default for every frame.

``infer`` may be given a ``StopToken``: another thread can then ask that one call to give up,
and a backend that can stop raises ``RunStopped`` instead of finishing the frame.

``infer_jpeg`` is the GPU-JPEG input (``--gpu-decode``): a backend with a ``gpu_decoder`` decodes a
JPEG's bytes on the GPU straight into its input buffer. A backend without one (``gpu_decoder`` None)
is never handed JPEG bytes; its ``infer_jpeg`` returns None, the answer that sends a frame to the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Protocol

import numpy as np

from ..contract import FRAME_INPUT, FRAME_PARAMETERS, ShapeBounds
from ..errors import StartupError
from .gpu_decode import GpuJpegDecoder


class Backend(Protocol):
    """What the node reads of a backend (read-only here: each backend sets its own)."""

    @property
    def name(self) -> str:
        """The runtime: ``onnxruntime``, ``tensorrt``, ``tensorrt-rtx`` (the ``--backend`` values)."""
        ...

    @property
    def device(self) -> str:
        """What actually runs it, e.g. ``CPUExecutionProvider``, ``cuda``; ``closed`` outside ``with``."""
        ...

    @property
    def precision(self) -> str | None:
        """The graph's precision as the manifest lists it (``fp32``, ``fp16``, ...); None where unknown."""
        ...

    @property
    def max_batch(self) -> int:
        """The most frames one ``infer`` takes (a TensorRT engine's profile, ONNX Runtime's buffers)."""
        ...

    @property
    def gpu_decoder(self) -> GpuJpegDecoder | None:
        """``--gpu-decode``: the decoder ``infer_jpeg`` is handed; None where JPEG frames are decoded on the CPU."""
        ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(
        self, inputs: dict[str, np.ndarray], stop: StopToken | None = None, owned: Collection[str] = ()
    ) -> dict[str, np.ndarray]: ...

    def infer_jpeg(
        self,
        data: bytes,
        height: int,
        width: int,
        decoder: GpuJpegDecoder,
        inputs: dict[str, np.ndarray] | None = None,
        owned: Collection[str] = (),
    ) -> dict[str, np.ndarray] | None:
        """One JPEG frame (its header checked) decoded by ``decoder`` into the input, then run; None when it
        could not be decoded so: the caller decodes it on the CPU and calls ``infer``."""
        ...

    def memory(self) -> dict[str, int]:
        """Bytes this backend holds, by kind (e.g. ``{"host_buffers": ...}``)."""
        ...


class RunStopped(Exception):
    """``infer`` gave up because its ``StopToken`` asked it to: nobody wanted the frame, the backend is fine."""


class StopToken:
    """Asks one ``infer`` call to stop early; ``stop()`` may come from any thread, before or during the call.

    The backend says how to stop its run with ``on_stop`` (called at once when the stop came first).
    A token serves one call: stopping it late, after the call returned, reaches nothing else.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.stopped = False

    def stop(self) -> None:
        with self._lock:
            self.stopped, hooks, self._hooks = True, self._hooks, []
        for hook in hooks:
            hook()

    def on_stop(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if not self.stopped:
                self._hooks.append(hook)
                return
        hook()


def check_frames(frames: np.ndarray, bounds: ShapeBounds, max_batch: int) -> None:
    """Refuse what no backend may be handed: not uint8 [N, H, W, 3], outside the bounds, over the batch."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"{FRAME_INPUT} must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    bounds.check(h, w)
    if n > max_batch:
        raise ValueError(f"batch {n} is above this backend's {max_batch}")


def parameter_names(path, names) -> tuple[str, ...]:
    """The graph's inputs beside the frames; one the node does not know stops start-up, naming the file."""
    unknown = [n for n in names if n != FRAME_INPUT and n not in FRAME_PARAMETERS]
    if unknown:
        raise StartupError(f"{path}: inputs {unknown} are not frames nor a parameter this node knows; rebuild it")
    return tuple(n for n in names if n != FRAME_INPUT)


def frame_parameters(inputs: dict[str, np.ndarray], names: tuple[str, ...], n: int) -> dict[str, np.ndarray]:
    """Each named parameter as float32 [n]: the given values, or the default for every frame."""
    values = {}
    for name in names:
        given = inputs.get(name)
        value = np.full(n, FRAME_PARAMETERS[name], np.float32) if given is None else np.asarray(given, np.float32)
        if value.shape != (n,):
            raise ValueError(f"{name} must be float32 [{n}] (one value per frame), got shape {value.shape}")
        values[name] = np.ascontiguousarray(value)
    return values
