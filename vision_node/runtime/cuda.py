"""CUDA memory for the TensorRT backend, in one place: checked calls, buffer pairs, the shared scratch.

pycuda is imported lazily (the ``trt`` extra); tests pass a fake module named as such.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager

import numpy as np

from ..errors import EngineError, StartupError


def load_pycuda():
    """(pycuda.driver, GPU 0's primary context), or a StartupError that says what to install."""
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise StartupError(
            f"the TensorRT backend needs pycuda ({err}): pip install -e '.[trt]' on a machine with an NVIDIA GPU"
        ) from None
    cuda.init()
    return cuda, cuda.Device(0).retain_primary_context()


def gpu_identity(cuda) -> dict:
    """GPU 0's name, compute capability and memory: what an engine is keyed by."""
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {"name": device.name(), "compute_capability": f"{major}.{minor}", "memory_bytes": device.total_memory()}


def gpu_tag(name: str, compute_capability: str) -> str:
    """The GPU in a file name: ``NVIDIA-H100-80GB-HBM3.sm90`` (engines and caches belong to one GPU model)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".sm" + compute_capability.replace(".", "")


def checked(what: str, call, *args, returns: bool = False):
    """Run one CUDA or TensorRT call and name it in the error when it raises or returns False
    (``execute_async_v3``, ``set_input_shape``), or None where a result is due (``returns=True``:
    ``deserialize_cuda_engine``, ``create_execution_context``)."""
    try:
        result = call(*args)
    except Exception as err:  # pycuda raises cuda.Error subclasses, TensorRT RuntimeError/TypeError
        raise EngineError(f"{what} failed: {err}") from err
    if result is False or (returns and result is None):
        raise EngineError(f"{what} returned {result!r}")
    return result


class BufferPair:
    """A pinned host buffer and a device buffer of the same size, allocated once."""

    def __init__(self, cuda, nbytes: int, dtype):
        self.dtype = np.dtype(dtype)
        self.nbytes = nbytes
        self.host = checked(
            "pagelocked_empty", cuda.pagelocked_empty, nbytes // self.dtype.itemsize, self.dtype, returns=True
        )
        self.device = checked("mem_alloc", cuda.mem_alloc, nbytes, returns=True)

    def host_view(self, shape) -> np.ndarray:
        count = int(np.prod(shape))
        return self.host[:count].reshape(shape)

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
            self.device = None


class SharedScratch:
    """One activation buffer for every engine of the node, and the stream they all run on.

    Engines run one at a time under ``lock``, so they can share one scratch buffer (TensorRT's
    user-managed context memory) sized to the largest engine's need instead of the sum. It grows
    (under the lock, while nothing runs) the first time a bigger engine runs; every context
    rebinds on its next run.
    """

    def __init__(self, cuda, cuda_context=None):
        self.cuda = cuda
        self.cuda_context = cuda_context  # made current on whichever thread runs an engine
        self.size = 0
        self.allocation = None
        self.lock = threading.Lock()
        with self.current():
            self.stream = checked("Stream", cuda.Stream, returns=True)
        # id(context) -> (context, the allocation it is bound to). The context itself is kept so that its
        # id cannot be reused by a new context while the entry exists: a new context that inherited an
        # old entry would run without scratch memory. ``release`` drops the entry when a backend closes.
        self._bound: dict[int, tuple[object, object]] = {}

    @contextmanager
    def current(self):
        """The node's CUDA context, current on this thread for the block (pycuda contexts are per thread)."""
        if self.cuda_context is None:
            yield
            return
        self.cuda_context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def bind(self, context, nbytes: int) -> None:
        """Make ``context`` use the scratch, growing it to ``nbytes`` first. Call with ``lock`` held."""
        if self.allocation is None or nbytes > self.size:
            size = max(self.size, int(nbytes), 1)
            grown = checked("mem_alloc", self.cuda.mem_alloc, size, returns=True)  # may fail (OOM): nothing changes
            if self.allocation is not None:
                self.allocation.free()
            self.allocation, self.size, self._bound = grown, size, {}
        bound = self._bound.get(id(context))
        if bound is None or bound[0] is not context or bound[1] is not self.allocation:
            if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
                checked("set_device_memory", context.set_device_memory, int(self.allocation), self.size)
            else:
                context.device_memory = int(self.allocation)
            self._bound[id(context)] = (context, self.allocation)

    @property
    def bound_contexts(self) -> int:
        """How many execution contexts are bound to the scratch now."""
        return len(self._bound)

    def release(self, context) -> None:
        """Forget ``context`` (its backend is closing): nothing of it stays referenced here."""
        with self.lock:
            entry = self._bound.get(id(context))
            if entry is not None and entry[0] is context:
                del self._bound[id(context)]

    def free(self) -> None:
        if self.allocation is not None:
            self.allocation.free()
            self.allocation = None
            self._bound = {}
