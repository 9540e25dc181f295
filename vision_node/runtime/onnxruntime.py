"""ONNX Runtime backend: the graph as built, on the CPU here or on CUDA with onnxruntime-gpu.

Output buffers are allocated once at open time for the largest frame and batch the bounds
allow; each call binds the input and the valid region of each output buffer through an
``IOBinding``, so ONNX Runtime writes straight into them. Nothing is allocated per frame but
what the caller keeps: an output named in ``owned`` is bound to a new array, the caller's, which
spares the copy out of the buffer it would otherwise make (1 MB for a 512² depth map).

Each call gets its own ``RunOptions``, which serve two things:

- memory: ONNX Runtime's CPU arena keeps the peak of every frame it has run until the process
  ends. A frame of more than ``keep_arena_pixels`` pixels (times the batch) shrinks the arena
  when it ends, so the node returns to the memory of its ordinary frames. Those keep the arena
  warm: giving it back and faulting it in again would cost each of them 4-52 % more CPU time
  on the demo build (issue 21's figures).
- stopping: ``StopToken.stop()`` sets ``terminate`` on the running call's options; ONNX Runtime
  checks it between nodes and the call raises ``RunStopped``. The session is fine afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import FRAME_INPUT, ShapeBounds
from ..errors import StartupError
from .base import RunStopped, StopToken, check_frames, frame_parameters, parameter_names
from .gpu_decode import GpuJpegDecoder

log = logging.getLogger("vision_node")

# Dimension names the build step gives the frame's batch, height and width.
_FRAME_DIMS = ("batch", "height", "width")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precision = "fp32"  # the fp32 graph; the fp16 one is what TensorRT builds from
    gpu_decoder: GpuJpegDecoder | None = None  # JPEG frames are decoded on the CPU (``infer_jpeg``)

    def __init__(
        self,
        path: Path,
        outputs: tuple[dict, ...],
        bounds: ShapeBounds,
        *,
        max_batch: int = 1,
        device: str = "auto",
        threads: int = 0,
        keep_arena_pixels: int = 1920 * 1080,
        spin: bool = False,
    ):
        self.path = Path(path)
        self.outputs = outputs  # manifest: name, dtype, shape (frame dimension names or ints)
        for out in outputs:
            unknown = [d for d in out["shape"] if not isinstance(d, int) and d not in _FRAME_DIMS]
            if unknown:
                raise StartupError(
                    f"{self.path}: output {out['name']} has unresolved dimensions {unknown}; "
                    "rebuild it with this version of vision-node-build"
                )
        self.bounds = bounds
        self.max_batch = min(max_batch, bounds.max_batch)
        self.requested_device = device
        self.threads = threads
        self.spin = spin
        self.keep_arena_pixels = keep_arena_pixels
        self.device = "closed"
        # While open: the onnxruntime module, its InferenceSession and IOBinding (onnxruntime ships no types).
        self._ort: Any = None
        self._session: Any = None
        self._binding: Any = None
        self._buffers: dict[str, np.ndarray] = {}
        self.parameters: tuple[str, ...] = ()  # the graph's per-frame inputs beside the frames

    def __enter__(self) -> OnnxRuntimeBackend:
        import onnxruntime as ort  # only the backend in use is imported

        self._ort = ort
        providers = _providers(ort, self.requested_device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        if not self.spin:  # idle threads sleep instead of spinning on the cores the streams' codecs need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: ORT warns about things the build already checked
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # ORT raises its own exception types per failure
            raise StartupError(f"{self.path}: ONNX Runtime could not load it: {err}") from None
        self.device = self._session.get_providers()[0]
        self.parameters = parameter_names(self.path, [i.name for i in self._session.get_inputs()])
        self._binding = self._session.io_binding()
        max_h, max_w = self.bounds.max_hw
        for out in self.outputs:
            size = int(np.prod(_shape(out, self.max_batch, max_h, max_w)))
            self._buffers[out["name"]] = np.empty(size, dtype=out["dtype"])
        return self

    def __exit__(self, *exc) -> None:
        self._binding = None
        self._session = None
        self._ort = None
        self._buffers = {}
        self.device = "closed"

    def infer(
        self, inputs: dict[str, np.ndarray], stop: StopToken | None = None, owned: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        frames = inputs[FRAME_INPUT]
        check_frames(frames, self.bounds, self.max_batch)
        n, h, w, _ = frames.shape
        frames = np.ascontiguousarray(frames)
        binding = self._binding
        binding.bind_input(FRAME_INPUT, "cpu", 0, np.uint8, list(frames.shape), frames.ctypes.data)
        parameters = frame_parameters(inputs, self.parameters, n)  # held until the run ends
        for name, value in parameters.items():
            binding.bind_input(name, "cpu", 0, np.float32, [n], value.ctypes.data)
        results = {}
        for out in self.outputs:
            shape = _shape(out, n, h, w)
            if out["name"] in owned:
                view = np.empty(shape, out["dtype"])
            else:
                view = self._buffers[out["name"]][: int(np.prod(shape))].reshape(shape)
            binding.bind_output(out["name"], "cpu", 0, view.dtype, list(shape), view.ctypes.data)
            results[out["name"]] = view
        run = self._ort.RunOptions()  # this call's own: a stop that comes late reaches no other frame
        run.log_severity_level = 4  # the session logs a failed run itself; a stopped one is no error
        if n * h * w > self.keep_arena_pixels:
            run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        if stop is not None:
            stop.on_stop(lambda: setattr(run, "terminate", True))
        try:
            self._session.run_with_iobinding(binding, run)
        except Exception as err:  # ONNX Runtime's Fail: "Exiting due to terminate flag being set to true."
            if stop is not None and stop.stopped:
                raise RunStopped(f"{self.path.name}: stopped during a run of {n} {w}x{h} frame(s)") from err
            raise
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
        """None: ONNX Runtime has no GPU-JPEG input (it has no ``gpu_decoder``); the caller decodes on the CPU."""
        return None

    def memory(self) -> dict[str, int]:
        return {"host_buffers": sum(b.nbytes for b in self._buffers.values())}


def _shape(output: dict, n: int, h: int, w: int) -> tuple[int, ...]:
    """An output's shape for a batch of n frames of h x w."""
    frame = {"batch": n, "height": h, "width": w}
    return tuple(frame.get(d, d) for d in output["shape"])


def _providers(ort, device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise StartupError(
            "device cuda: this onnxruntime has no CUDA provider; install the gpu extra (onnxruntime-gpu) "
            "instead of onnxruntime"
        )
    return ["CPUExecutionProvider"]
