"""What a backend failure means for the node: this frame only, retry later, or restart the process.

CUDA errors are sticky: after an illegal address or a failed launch every later call in the
process fails too, and only a new process (a supervisor's restart) recovers. Out-of-memory is
not: the next frame may fit. The runtimes say which by message, not by type (ONNX Runtime raises
``RuntimeException`` for both; pycuda ``LaunchError``/``MemoryError`` carry the driver's text;
our ``checked()`` wraps them and keeps the cause), so the whole exception chain is read.
A run stopped on purpose (``RunStopped``: its requests had all passed their deadline) is no fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .base import RunStopped

STOPPED = "stopped"  # stopped on purpose: every request it served had given up; not a failure
FRAME = "frame"  # this request failed; the backend is fine (500)
TRANSIENT = "transient"  # out of memory or a busy device: this request fails, retryable (503)
FATAL = "fatal"  # the device or its context is broken: not ready, exit so the supervisor restarts us

# The CUDA driver's and runtime's own texts (cuGetErrorString / cudaGetErrorString) and the
# CUDA_ERROR_* / cudaError* names, which ONNX Runtime, pycuda and TensorRT quote.
_FATAL = re.compile(
    r"illegal memory access|illegal address|illegal instruction|misaligned address|unspecified launch failure"
    r"|launch timed out|device-side assert|hardware stack error|uncorrectable ECC|ECC error"
    r"|context is destroyed|invalid device context|fallen off the bus|GPU is lost|device has been lost"
    r"|CUDA_ERROR_(?:ILLEGAL_ADDRESS|ILLEGAL_INSTRUCTION|MISALIGNED_ADDRESS|LAUNCH_FAILED|LAUNCH_TIMEOUT|ASSERT"
    r"|HARDWARE_STACK_ERROR|ECC_UNCORRECTABLE|CONTEXT_IS_DESTROYED|INVALID_CONTEXT)"
    r"|cudaError(?:IllegalAddress|IllegalInstruction|MisalignedAddress|LaunchFailure|LaunchTimeout|Assert"
    r"|HardwareStackError|ECCUncorrectable|DevicesUnavailable)",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"out of memory|failed to allocate|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation"
    r"|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions behind it (its cause, else its context), each once."""
    seen = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def classify(err: BaseException) -> str:
    """``STOPPED``, ``FATAL``, ``TRANSIENT`` or ``FRAME`` for an exception raised by a backend's ``infer``."""
    chain = list(_chain(err))
    if any(isinstance(e, RunStopped) for e in chain):
        return STOPPED
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    if _FATAL.search(text):
        return FATAL
    if any(isinstance(e, MemoryError) for e in chain) or _TRANSIENT.search(text):
        return TRANSIENT
    return FRAME
