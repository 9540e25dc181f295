"""FAULT INJECTION: the real node process, whose backends fail on command.

``python -m tests.faulty_node CONTROL_FILE`` runs ``vision_node.cli.serve`` as ``python -m vision_node serve``
does (settings from ``VISION_NODE_*``), with each real ONNX Runtime backend wrapped in
``FaultInjectingBackend``. Before each frame the wrapper reads CONTROL_FILE, if it exists:

- ``oom``: raise ONNX Runtime's own ``RuntimeException`` with the text of its BFC arena's
  out-of-memory failure (once: the file is removed);
- ``illegal-address``: raise it with the text of a CUDA illegal memory access (sticky, like
  CUDA's own: every frame after fails the same way);
- ``error``: raise it with an ordinary node failure text (once);
- ``hang``: block forever (a hung kernel);
- ``slow S``: take S seconds more per frame (a slower device), while the file says so.

A GPU cannot fail on demand here; the texts are the runtimes' (see ``vision_node/runtime/faults.py``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from tests.nodes import WrappedBackend
from vision_node.cli import serve
from vision_node.config import Config
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend

OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Status Message: bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool) "
    "Failed to allocate memory for requested buffer of size 268435456"
)
ILLEGAL_ADDRESS = (
    "[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered ; GPU=0 ; "
    "expr=cudaStreamSynchronize(stream)"
)
ERROR = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Add node."


class FaultInjectingBackend(WrappedBackend):
    def __init__(self, inner: OnnxRuntimeBackend, control: Path):
        super().__init__(inner)
        self.control = control
        self.broken = False

    def infer(self, inputs, stop=None, owned=()):
        fault = self.control.read_text().strip() if self.control.exists() else ""
        if fault in ("oom", "error"):
            self.control.unlink()
            raise RuntimeException(OOM if fault == "oom" else ERROR)
        if fault == "illegal-address" or self.broken:
            self.broken = True
            raise RuntimeException(ILLEGAL_ADDRESS)
        if fault == "hang":
            threading.Event().wait()
        if fault.startswith("slow "):
            time.sleep(float(fault.split()[1]))
        return self.inner.infer(inputs, stop, owned)


def main() -> int:
    control = Path(sys.argv[1])

    def open_backend(served):
        return lambda graph: FaultInjectingBackend(
            OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds), control
        )

    return serve(Config.load(os.environ), open_backend)


if __name__ == "__main__":
    sys.exit(main())
