"""The device memory an engine will need, as TensorRT's builder states it while it builds (no GPU needed).

TensorRT for RTX cannot deserialize an engine without a CUDA driver, so ``ICudaEngine``'s
``device_memory_size_v2`` is out of reach on a CPU build machine. Its builder logs the figures at
INFO level at the end of every build, for the profile's largest shapes:

    Total Activation Memory: 526811648 bytes      (the execution context's scratch)
    Total Weights Memory: 643840 bytes            (the engine's weights on the device)
    Max Scratch Memory: 526809088 bytes
    Total Device Persistent Memory: 0 bytes

``RecordingLogger`` forwards warnings and errors as TensorRT's own logger does and keeps those lines.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

# The builder's line -> the manifest's key.
FIGURES = {
    "Total Activation Memory": "activation_bytes",
    "Total Weights Memory": "weights_bytes",
    "Max Scratch Memory": "max_scratch_bytes",
    "Total Device Persistent Memory": "persistent_bytes",
}
_LINE = re.compile(r"^\s*(" + "|".join(map(re.escape, FIGURES)) + r"):\s*(\d+)\s*bytes", re.MULTILINE)


def parse(text: str) -> dict[str, int]:
    """The figures found in the builder's log ``text`` (the last of each, as a rebuild logs them again)."""
    return {FIGURES[name]: int(value) for name, value in _LINE.findall(text)}


@functools.cache
def recording_logger(trt):
    """A ``trt.ILogger`` that prints warnings and errors to stderr and keeps the builder's memory figures.

    One per TensorRT module: TensorRT keeps the first logger a live builder was given and ignores
    later ones ("The logger passed into createInferBuilder differs..."), so a second instance would
    never hear its build. Clear ``figures`` before each build.
    """

    # The class of the module given (tensorrt or tensorrt_rtx, imported at run time): a base class mypy cannot see.
    logger: Any = trt.ILogger

    class RecordingLogger(logger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.figures: dict[str, int] = {}

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[TRT] {severity.name}: {msg}", file=sys.stderr)
            elif severity == trt.ILogger.Severity.INFO:
                self.figures.update(parse(msg))

    return RecordingLogger()
