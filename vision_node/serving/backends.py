"""Which backend runs a capability's graphs, chosen once for the node: ONNX Runtime, or TensorRT (or TensorRT
for RTX) on one GPU whose runtime, shared activation scratch and JPEG decoder every engine shares."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..config import Config
from ..runtime.base import Backend
from ..runtime.flavours import flavour
from ..runtime.gpu_decode import GpuJpegDecoder
from ..runtime.onnxruntime import OnnxRuntimeBackend
from ..runtime.tensorrt import GpuRuntime, TensorRTBackend, gpu_runtime
from .engines import Graph, ServedCapability

# ``opener(served)`` is what a capability's session opens its graphs with.
Opener = Callable[[ServedCapability], Callable[[Graph], Backend]]


class Backends:
    """The node's backend factory and the GPU state its TensorRT engines share."""

    def __init__(self, config: Config, gpu: GpuRuntime | None = None):
        self.config = config
        self._gpu = gpu  # TensorRT: module, pycuda, GPU, shared scratch; from preflight, else made on first use
        self._lock = threading.Lock()
        self._decoder: GpuJpegDecoder | None = None  # --gpu-decode

    def opener(self, served: ServedCapability) -> Callable[[Graph], Backend]:
        return self._onnxruntime(served) if self.config.backend == "onnxruntime" else self._tensorrt(served)

    def _onnxruntime(self, served: ServedCapability) -> Callable[[Graph], Backend]:
        def open_graph(graph: Graph) -> Backend:
            return OnnxRuntimeBackend(
                graph.onnxruntime_file,
                graph.outputs,
                served.bounds,
                max_batch=self.config.max_batch,
                device=self.config.device,
                threads=self.config.threads,
                spin=self.config.onnxruntime_spin,
                keep_arena_pixels=self.config.keep_arena_pixels,
            )

        return open_graph

    def _tensorrt(self, served: ServedCapability) -> Callable[[Graph], Backend]:
        def open_graph(graph: Graph) -> Backend:
            backend = TensorRTBackend.for_graph(graph, served.bounds, self._gpu_runtime())
            backend.gpu_decoder = self._gpu_jpeg_decoder() if self.config.gpu_decode else None
            return backend

        return open_graph

    def _gpu_jpeg_decoder(self) -> GpuJpegDecoder:
        """One nvImageCodec decoder for every engine (``--gpu-decode``), opened on first use."""
        with self._lock:
            if self._decoder is None:
                self._decoder = GpuJpegDecoder().__enter__()
            return self._decoder

    def _gpu_runtime(self) -> GpuRuntime:
        with self._lock:
            if self._gpu is None:
                self._gpu = gpu_runtime(flavour(self.config.backend), self.config.engines)
            return self._gpu

    def gpu_facts(self) -> dict:
        """The GPU a TensorRT backend runs on (name, MiB), for the live runners; empty with ONNX Runtime."""
        if self._gpu is None:
            return {}
        return {"name": self._gpu.gpu["name"], "vram_mb": self._gpu.gpu["memory_bytes"] >> 20}

    @property
    def shared_scratch_bytes(self) -> int:
        """TensorRT's one activation buffer for all engines (0 with ONNX Runtime, which keeps its own)."""
        return self._gpu.scratch.size if self._gpu else 0

    def close(self) -> None:
        """After every session has closed its backends."""
        if self._decoder is not None:
            self._decoder.__exit__(None, None, None)
        if self._gpu:
            self._gpu.scratch.free()
