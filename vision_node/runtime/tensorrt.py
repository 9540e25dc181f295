"""TensorRT backend (TensorRT or TensorRT for RTX): one engine, buffers allocated once, a checked call sequence.

Per frame: copy into the pinned input buffer, async H2D, set the input shape (only when it
changed), ``execute_async_v3`` on the node's stream, async D2H of only the valid region of each
output, one synchronise. Device buffers are sized for the profile's largest shape and their
addresses bound once. The activation memory is the node's shared scratch (``cuda.SharedScratch``).
``tensorrt`` (or ``tensorrt_rtx``) and ``pycuda`` are imported only when this backend is used; what
differs between the two TensorRTs is in ``flavours``.

A frame cannot be stopped once it runs: ``execute_async_v3`` enqueues the whole engine on the
stream at once and TensorRT has no way to cancel enqueued work, so ``infer`` ignores its
``StopToken``. A frame past its deadline still answers 504 at the deadline, but the capability's
worker stays busy until the GPU has finished it, and the frames behind it wait for that. The
hang watch (``--hang-timeout-s``) covers a frame that never ends.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import manifest
from ..contract import FRAME_INPUT, ShapeBounds
from ..errors import StartupError
from . import engine_choice
from .base import StopToken, check_frames, frame_parameters, parameter_names
from .cuda import BufferPair, SharedScratch, checked, gpu_identity, load_pycuda
from .flavours import TENSORRT, TENSORRT_RTX, Flavour, RuntimeCache
from .gpu_decode import GpuJpegDecoder

log = logging.getLogger("vision_node")


def load_tensorrt(flavour: Flavour = TENSORRT) -> ModuleType:
    """The ``tensorrt`` (or ``tensorrt_rtx``) module, or a StartupError naming the extra to install."""
    return flavour.load()


@dataclass
class GpuRuntime:
    """What every TensorRT user of the node needs once: the module, pycuda, GPU 0, the shared scratch."""

    flavour: Flavour
    trt: ModuleType  # tensorrt or tensorrt_rtx
    cuda: ModuleType  # pycuda.driver
    gpu: dict
    scratch: SharedScratch
    runtime_cache: RuntimeCache | None = None  # TensorRT for RTX: its just-in-time kernels, kept on disk


def gpu_runtime(flavour: Flavour = TENSORRT, engines_dir: Path | None = None) -> GpuRuntime:
    """The GPU runtime on GPU 0's primary context; clear StartupErrors without the extra or a GPU."""
    trt = load_tensorrt(flavour)
    cuda, cuda_context = load_pycuda()
    cuda_context.push()
    try:
        gpu = gpu_identity(cuda)
    finally:
        cuda.Context.pop()
    cache = RuntimeCache(engines_dir, gpu, trt.__version__) if flavour is TENSORRT_RTX and engines_dir else None
    return GpuRuntime(flavour, trt, cuda, gpu, SharedScratch(cuda, cuda_context), cache)


class TensorRTBackend:
    def __init__(
        self,
        plan: Path,
        bounds: ShapeBounds,
        scratch: SharedScratch,
        trt,
        cuda,
        max_batch: int = 1,
        flavour: Flavour = TENSORRT,
        runtime_cache: RuntimeCache | None = None,
    ):
        self.plan, self.bounds, self.scratch = Path(plan), bounds, scratch
        self.trt, self.cuda = trt, cuda
        self.max_batch = max_batch
        self.flavour, self.runtime_cache = flavour, runtime_cache
        self.name = flavour.backend
        self.precision: str | None = None  # the graph's rung the engine was built from, as the manifest lists it
        self.device = "closed"
        # While open: the engine and its execution context (the TensorRT module is imported at run time: untyped).
        self.engine: Any = None
        self.context: Any = None
        self.buffers: dict[str, BufferPair] = {}
        self.outputs: list[str] = []
        self.parameters: tuple[str, ...] = ()  # the engine's per-frame inputs beside the frames
        self.shapes: dict[str, tuple[int, ...]] = {}  # output shapes for the bound input shape
        self.input_shape: tuple[int, ...] | None = None
        self.stages_ms: dict[str, float] = {}  # copy in / compute / copy out of the last frame (CUDA events)
        self.gpu_decoder: GpuJpegDecoder | None = None  # --gpu-decode: the session hands it JPEG frames (infer_jpeg)
        self._cache_saved = False

    @staticmethod
    def engine_for(graph, rt: GpuRuntime) -> tuple[dict, Path]:
        """The manifest's engine for ``graph`` on this GPU and runtime, and its plan file (not yet hashed)."""
        entry, why = engine_choice.pick(list(graph.tensorrt), graph.onnx_hashes, rt.gpu, rt.trt.__version__, rt.flavour)
        if entry is None:
            rtx = " --tensorrt-rtx" if rt.flavour is TENSORRT_RTX else ""
            raise StartupError(
                f"{graph.path}: {why}; this machine: {rt.gpu['name']} sm{rt.gpu['compute_capability']} "
                f"{rt.flavour.module} {rt.trt.__version__}. Build them: "
                f"vision-node-build --tensorrt-only{rtx} --out {graph.path.parent}"
            )
        plan = graph.path.parent / entry["plan"]
        if not plan.is_file():
            raise StartupError(f"{plan}: missing (listed in the manifest); rebuild it")
        return entry, plan

    @classmethod
    def for_graph(cls, graph, bounds: ShapeBounds, rt: GpuRuntime) -> TensorRTBackend:
        """The backend for ``graph``'s engine built for this GPU and runtime, checked against the manifest."""
        entry, plan = cls.engine_for(graph, rt)
        if manifest.sha256(plan) != entry["sha256"]:
            raise StartupError(f"{plan}: not the engine the manifest lists (SHA-256): corrupt or replaced; rebuild it")
        backend = cls(
            plan, bounds, rt.scratch, rt.trt, rt.cuda, entry["options"]["max_batch"], rt.flavour, rt.runtime_cache
        )
        backend.precision = entry["options"].get("precision", "fp32")
        return backend

    def __enter__(self) -> TensorRTBackend:
        with self.scratch.current():
            return self._open()

    def _open(self) -> TensorRTBackend:
        trt = self.trt
        runtime = checked("Runtime", trt.Runtime, trt.Logger(trt.Logger.WARNING), returns=True)
        self._runtime = runtime
        plan = self.plan.read_bytes()
        self._check_validity(runtime, plan)
        self.engine = checked(
            f"deserialize_cuda_engine({self.plan.name})", runtime.deserialize_cuda_engine, plan, returns=True
        )
        self.context = checked(
            "create_execution_context(USER_MANAGED)",
            self.flavour.execution_context,
            trt,
            self.engine,
            self.runtime_cache,
            returns=True,
        )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.parameters = parameter_names(self.plan, [n for n in names if n not in self.outputs])
        max_h, max_w = self.bounds.max_hw
        self._set_input_shapes((self.max_batch, max_h, max_w, 3))
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.buffers[name] = BufferPair(self.cuda, int(np.prod(shape)) * dtype.itemsize, dtype)
            checked(
                f"set_tensor_address({name})", self.context.set_tensor_address, name, int(self.buffers[name].device)
            )
        self.events = [checked("Event", self.cuda.Event, returns=True) for _ in range(4)]
        self.device = "cuda"
        return self

    def _check_validity(self, runtime, plan: bytes) -> None:
        """TensorRT for RTX says, from the plan's header, whether it runs on this GPU and driver, and why not."""
        if not hasattr(runtime, "get_engine_validity"):
            return
        validity, diagnostics = runtime.get_engine_validity(plan)
        if validity.name == "VALID":
            return
        known = self.trt.EngineInvalidityDiagnostics.__members__.values()
        reasons = [d.name for d in known if diagnostics & int(d.value)]
        why = ", ".join(reasons) or "no reason given"
        if validity.name == "SUBOPTIMAL":
            log.warning("%s: %s says it runs here, suboptimally (%s)", self.plan.name, self.flavour.module, why)
            return
        raise StartupError(f"{self.plan.name}: {self.flavour.module} says this engine cannot run on this GPU: {why}")

    def __exit__(self, *exc) -> None:
        self._save_runtime_cache()
        with self.scratch.current():
            for pair in self.buffers.values():
                pair.free()
        if self.context is not None:
            self.scratch.release(self.context)
        self.buffers = {}
        self.context = self.engine = None
        self.device = "closed"

    @property
    def scratch_need(self) -> int:
        engine = self.engine
        size = getattr(engine, "device_memory_size_v2", None)
        return int(size if size is not None else engine.device_memory_size)

    def infer(
        self, inputs: dict[str, np.ndarray], stop: StopToken | None = None, owned: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        """One batch; ``stop`` is ignored: enqueued TensorRT work cannot be cancelled (see the module's docstring)."""
        frames = inputs[FRAME_INPUT]
        check_frames(frames, self.bounds, self.max_batch)
        frame_in = self.buffers[FRAME_INPUT]
        np.copyto(frame_in.host_view(frames.shape), frames)  # this backend's own pinned buffer: outside the lock
        parameters = self._stage_parameters(inputs, frames.shape[0])

        def copy_in(stream) -> bool:
            self._copy_in(stream, [(FRAME_INPUT, frames.shape), *parameters])
            return True

        results = self._run(frames.shape, copy_in, owned)
        assert results is not None  # None only where copy_in could not fill the input; this one always does
        return results

    def infer_jpeg(
        self,
        data: bytes,
        height: int,
        width: int,
        decoder: GpuJpegDecoder,
        inputs: dict[str, np.ndarray] | None = None,
        owned: Collection[str] = (),
    ) -> dict[str, np.ndarray] | None:
        """One JPEG frame (its header already checked) decoded on the GPU by ``decoder`` (``gpu_decode``)
        straight into the engine's input buffer, then run; ``inputs``: its parameters, if any. None when
        the GPU decoder could not decode it: the caller decodes on the CPU and calls ``infer``."""
        self.bounds.check(height, width)
        frame_in = self.buffers[FRAME_INPUT]
        shape = (1, height, width, 3)
        parameters = self._stage_parameters(inputs or {}, 1)

        def copy_in(stream) -> bool:
            self._copy_in(stream, parameters)
            return decoder.decode_into(data, int(frame_in.device), height, width, stream.handle)

        return self._run(shape, copy_in, owned)

    def _copy_in(self, stream, staged: list[tuple[str, tuple[int, ...]]]) -> None:
        """Enqueue the copy of each (input name, shape) from its pinned buffer to the device."""
        for name, shape in staged:
            pair = self.buffers[name]
            checked(
                f"memcpy_htod_async({name})", self.cuda.memcpy_htod_async, pair.device, pair.host_view(shape), stream
            )

    def _stage_parameters(self, inputs: dict[str, np.ndarray], n: int) -> list[tuple[str, tuple[int, ...]]]:
        """Copy the per-frame parameters into their pinned buffers; (name, shape) of each, for the copy in."""
        staged = []
        for name, value in frame_parameters(inputs, self.parameters, n).items():
            np.copyto(self.buffers[name].host_view(value.shape), value)
            staged.append((name, value.shape))
        return staged

    def _set_input_shapes(self, shape: tuple[int, ...]) -> None:
        """The frames' shape, and each parameter's (one value per frame)."""
        checked(f"set_input_shape({FRAME_INPUT}, {shape})", self.context.set_input_shape, FRAME_INPUT, shape)
        for name in self.parameters:
            checked(f"set_input_shape({name}, {shape[:1]})", self.context.set_input_shape, name, shape[:1])

    def _run(self, shape: tuple[int, ...], copy_in, owned: Collection[str]) -> dict[str, np.ndarray] | None:
        """``copy_in(stream)`` fills the input buffer (False: it could not, nothing runs); then execute and copy out.
        Outputs in ``owned`` are copied out of their pinned buffers once more, for the caller to keep."""
        cuda, stream, start, copied, computed, done = self.cuda, self.scratch.stream, *self.events
        # The node's CUDA context is per thread in pycuda: the session's worker and warm-up threads push it here.
        with self.scratch.lock, self.scratch.current():
            self.scratch.bind(self.context, self.scratch_need)
            start.record(stream)
            if not copy_in(stream):
                return None
            copied.record(stream)
            if shape != self.input_shape:
                self._set_input_shapes(shape)
                self.input_shape = shape
                self.shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs}
            checked("execute_async_v3", self.context.execute_async_v3, stream.handle)
            computed.record(stream)
            results = {}
            for name in self.outputs:
                view = self.buffers[name].host_view(self.shapes[name])
                checked(f"memcpy_dtoh_async({name})", cuda.memcpy_dtoh_async, view, self.buffers[name].device, stream)
                results[name] = view
            done.record(stream)
            checked("Stream.synchronize", stream.synchronize)
        for name in owned:
            results[name] = results[name].copy()
        if not self._cache_saved:
            self._save_runtime_cache()  # the first frame (the warm-up) compiled this shape's kernels
        self.stages_ms = {
            "copy_in": copied.time_since(start),
            "compute": computed.time_since(copied),
            "copy_out": done.time_since(computed),
        }
        return results

    def _save_runtime_cache(self) -> None:
        if self.runtime_cache is not None:
            self.runtime_cache.save()
        self._cache_saved = True

    def memory(self) -> dict[str, int]:
        device = sum(pair.nbytes for name, pair in self.buffers.items())
        return {
            "device_buffers": device,
            "host_pinned": device,
            "device_weights_approx": self.plan.stat().st_size,  # the plan is mostly weights
            "scratch_need": self.scratch_need if self.engine is not None else 0,
        }
