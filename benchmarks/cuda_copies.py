"""Copy in / compute / copy out per frame of the TensorRT backend on a real GPU, with a STAND-IN engine.

TensorRT is not measured here. ``StandInTensorRT`` takes the place of the ``tensorrt`` module: its execution
context's ``execute_async_v3`` launches one small CUDA kernel (pycuda ``SourceModule``) that reads the frame at
the input tensor's device address and writes two outputs at theirs. The rest is the backend's real path through
pycuda: pinned host buffers, device buffers, the shared stream and the CUDA events behind ``stages_ms``.
``tests/test_cuda_device.py`` drives the same stand-in.

    python3 -m benchmarks.cuda_copies [--frames 200] [--sizes 512x512 1080x1920]   (pycuda and an NVIDIA GPU)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vision_node.contract import FRAME_INPUT, ShapeBounds
from vision_node.runtime.cuda import SharedScratch
from vision_node.runtime.tensorrt import TensorRTBackend

BOUNDS = ShapeBounds(min_hw=(64, 64), max_hw=(1080, 1920), opt_hw=(512, 512), max_batch=1)
PLAN = b"STAND-IN PLAN: not a TensorRT engine"

# mean: float32 [N,H,W], the mean of each pixel's three channels; inverted: uint8 [N,H,W,3], 255 - frame.
KERNEL = r"""
__global__ void stand_in(const unsigned char *frames, float *mean, unsigned char *inverted, long long pixels)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels) return;
    unsigned char r = frames[3 * i], g = frames[3 * i + 1], b = frames[3 * i + 2];
    mean[i] = (float)(r + g + b) / 3.0f;
    inverted[3 * i] = 255 - r;
    inverted[3 * i + 1] = 255 - g;
    inverted[3 * i + 2] = 255 - b;
}
"""


def reference(frames: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in kernel computes, in numpy."""
    return {"mean": frames.sum(axis=-1, dtype=np.float32) / np.float32(3), "inverted": 255 - frames}


def compile_kernel():
    """The stand-in kernel, compiled for the current context's GPU (nvcc)."""
    from pycuda.compiler import SourceModule

    kernel = SourceModule(KERNEL).get_function("stand_in")
    kernel.prepare("PPPq")
    return kernel


class StandInTensorRT:
    """STAND-IN for the slice of the ``tensorrt`` module the backend uses: NOT TensorRT.

    The engine has the node's input (``frames``, uint8 [N,H,W,3]) and two outputs (``mean``, ``inverted``); its
    shapes follow the input shape as TensorRT's would. ``execute_async_v3`` launches ``KERNEL`` on the stream whose
    handle it is given, at the addresses bound with ``set_tensor_address``.
    """

    __version__ = "0.0-stand-in"
    TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
    ExecutionContextAllocationStrategy = SimpleNamespace(USER_MANAGED="user_managed")
    DTYPES = {FRAME_INPUT: np.uint8, "mean": np.float32, "inverted": np.uint8}

    def __init__(self, stream, kernel, scratch_need: int = 1 << 20):
        self.stream, self.kernel, self.scratch_need = stream, kernel, scratch_need
        self.launches = 0
        self.Logger = _Logger
        self.Runtime = lambda logger: _Runtime(self)

    @staticmethod
    def nptype(dtype):
        return dtype


class _Logger:
    WARNING = 2

    def __init__(self, severity):
        pass


class _Runtime:
    def __init__(self, fake: StandInTensorRT):
        self.fake = fake

    def deserialize_cuda_engine(self, plan: bytes):
        return _Engine(self.fake) if plan == PLAN else None


class _Engine:
    """The stand-in engine: the node's input and the two outputs, scratch memory as asked."""

    def __init__(self, fake: StandInTensorRT):
        self.fake = fake
        self.names = list(fake.DTYPES)
        self.num_io_tensors = len(self.names)
        self.device_memory_size_v2 = fake.scratch_need

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.fake.TensorIOMode.INPUT if name == FRAME_INPUT else self.fake.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.fake.DTYPES[name]

    def create_execution_context(self, strategy):
        assert strategy == self.fake.ExecutionContextAllocationStrategy.USER_MANAGED
        return _Context(self.fake)


class _Context:
    """Shapes as TensorRT's would follow the input's; ``execute_async_v3`` launches the kernel on the stream."""

    def __init__(self, fake: StandInTensorRT):
        self.fake = fake
        self.addresses, self.shape, self.device_memory = {}, None, None

    def set_input_shape(self, name, shape):
        shape = tuple(int(d) for d in shape)
        if name != FRAME_INPUT or len(shape) != 4 or shape[3] != 3:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name):
        return {FRAME_INPUT: self.shape, "mean": self.shape[:3], "inverted": self.shape}[name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def set_device_memory(self, address, size):
        self.device_memory = (int(address), int(size))

    def execute_async_v3(self, stream_handle):
        fake = self.fake
        if stream_handle != fake.stream.handle or self.device_memory is None:
            return False
        pixels = int(np.prod(self.shape[:3]))
        a = self.addresses
        fake.kernel.prepared_async_call(
            ((pixels + 255) // 256, 1),
            (256, 1, 1),
            fake.stream,
            a[FRAME_INPUT],
            a["mean"],
            a["inverted"],
            pixels,
        )
        fake.launches += 1
        return True


def open_backend(cuda, scratch: SharedScratch, kernel, plan_dir, bounds: ShapeBounds = BOUNDS):
    """A TensorRTBackend on real pycuda with the stand-in engine, opened (its buffers allocated)."""
    plan = Path(plan_dir) / "stand-in.plan"
    plan.write_bytes(PLAN)
    trt = StandInTensorRT(scratch.stream, kernel)
    return TensorRTBackend(plan, bounds, scratch, trt, cuda).__enter__()


def measure(backend, h: int, w: int, frames: int) -> dict[str, list[float]]:
    batch = np.random.default_rng(h * w).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    for _ in range(10):
        backend.infer({FRAME_INPUT: batch})
    samples = {"copy_in": [], "compute": [], "copy_out": [], "infer (wall)": []}
    for _ in range(frames):
        start = time.perf_counter()
        backend.infer({FRAME_INPUT: batch})
        samples["infer (wall)"].append((time.perf_counter() - start) * 1000)
        for stage in ("copy_in", "compute", "copy_out"):
            samples[stage].append(backend.stages_ms[stage])
    return samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1080x1920"], help="HxW")
    args = parser.parse_args(argv)
    from vision_node.runtime.cuda import gpu_identity, load_pycuda

    cuda, context = load_pycuda()
    context.push()
    try:
        gpu = gpu_identity(cuda)
        scratch = SharedScratch(cuda, context)
        with tempfile.TemporaryDirectory() as tmp:
            backend = open_backend(cuda, scratch, compile_kernel(), tmp)
            try:
                results = [
                    ((h, w), measure(backend, h, w, args.frames))
                    for h, w in (tuple(int(d) for d in size.split("x")) for size in args.sizes)
                ]
            finally:
                backend.__exit__(None, None, None)
                scratch.free()
    finally:
        cuda.Context.pop()
    print(f"{gpu['name']} (sm{gpu['compute_capability']}); STAND-IN kernel, not TensorRT; {args.frames} frames each;")
    print("CUDA events on the backend's stream (pinned host <-> device), milliseconds per frame\n")
    print(f"| {'frame HxW':<10} | {'stage':<12} | {'bytes':>10} | {'p50 ms':>8} | {'p99 ms':>8} | {'GB/s p50':>8} |")
    print(f"|{'-' * 12}|{'-' * 14}|{'-' * 12}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for (h, w), samples in results:
        moved = {"copy_in": h * w * 3, "copy_out": h * w * (4 + 3)}
        for stage, ms in samples.items():
            p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
            nbytes = moved.get(stage)
            rate = f"{nbytes / p50 / 1e6:8.1f}" if nbytes else f"{'':8}"
            size = f"{nbytes:>10,}" if nbytes else f"{'':10}"
            print(f"| {f'{h}x{w}':<10} | {stage:<12} | {size} | {p50:8.3f} | {p99:8.3f} | {rate} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
