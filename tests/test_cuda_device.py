"""GPU tests: the TensorRT backend's CUDA side through REAL pycuda, and real CUDA faults classified.

Skipped (with the reason) where pycuda or an NVIDIA GPU is missing, which includes CI. TensorRT is not
here either: the engine is a STAND-IN (``benchmarks.cuda_copies.StandInTensorRT``) whose
``execute_async_v3`` launches a real CUDA kernel at the tensor addresses the backend bound. What is real:
pinned host buffers, device buffers, the stream, the copies, the CUDA events, the memory accounting, and
the driver's own error texts that ``vision_node.runtime.faults`` reads.

    python3 -m pytest -v -rs -s tests/test_cuda_device.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

cuda = pytest.importorskip("pycuda.driver", reason="GPU test: needs pycuda (the trt extra) and an NVIDIA GPU")
try:
    cuda.init()
    if cuda.Device.count() < 1:
        raise RuntimeError("cuda.Device.count() is 0")
except Exception as err:  # a missing driver or device, however pycuda reports it
    pytest.skip(f"GPU test: no usable CUDA device ({err})", allow_module_level=True)
if shutil.which("nvcc") is None:
    pytest.skip("GPU test: nvcc is not on PATH (it compiles the stand-in engine's kernel)", allow_module_level=True)

from benchmarks.cuda_copies import BOUNDS, PLAN, StandInTensorRT, compile_kernel, open_backend, reference  # noqa: E402
from vision_node.contract import FRAME_INPUT, ShapeBounds  # noqa: E402
from vision_node.errors import EngineError  # noqa: E402
from vision_node.runtime import faults  # noqa: E402
from vision_node.runtime.cuda import SharedScratch, checked, load_pycuda  # noqa: E402
from vision_node.runtime.tensorrt import TensorRTBackend  # noqa: E402
from vision_node.serving.engines import Graph, ServedCapability  # noqa: E402
from vision_node.serving.session import CapabilitySession  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
SIZES = [(64, 64), (360, 640), (1080, 1920), (97, 131), (64, 64)]  # the last: smaller again after the largest


class CountingCuda:
    """The real ``pycuda.driver``, with its allocating calls recorded (bytes asked for)."""

    def __init__(self):
        self.allocations: list[tuple[str, int]] = []

    def __getattr__(self, name):
        return getattr(cuda, name)

    def mem_alloc(self, nbytes):
        self.allocations.append(("mem_alloc", int(nbytes)))
        return cuda.mem_alloc(nbytes)

    def pagelocked_empty(self, count, dtype):
        self.allocations.append(("pagelocked_empty", int(count) * np.dtype(dtype).itemsize))
        return cuda.pagelocked_empty(count, dtype)


def free_bytes() -> int:
    cuda.Context.synchronize()
    return cuda.mem_get_info()[0]


def frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (1, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def gpu():
    """GPU 0's primary context (as the node takes it), current on this thread for the module; the kernel."""
    _, context = load_pycuda()
    context.push()
    try:
        yield context, compile_kernel()
    finally:
        cuda.Context.pop()


@pytest.fixture
def opened(gpu, tmp_path):
    """(backend, its counting cuda, its scratch): the stand-in engine on real pycuda, opened, no frame run yet."""
    context, kernel = gpu
    counting = CountingCuda()
    scratch = SharedScratch(counting, context)
    backend = open_backend(counting, scratch, kernel, tmp_path)
    yield backend, counting, scratch
    backend.__exit__(None, None, None)
    scratch.free()


def test_outputs_equal_numpy_for_every_frame_size(opened):
    backend, _, _ = opened
    for i, (h, w) in enumerate(SIZES):
        frames = frame(h, w, seed=i)
        got = {k: v.copy() for k, v in backend.infer({FRAME_INPUT: frames}).items()}
        want = reference(frames)
        assert {k: v.shape for k, v in got.items()} == {"mean": (1, h, w), "inverted": (1, h, w, 3)}
        np.testing.assert_array_equal(got["inverted"], want["inverted"], err_msg=f"inverted {h}x{w}")
        # (r+g+b)/3 in float32, IEEE division on both sides: equal; 1e-5 allows a last-bit difference only
        np.testing.assert_allclose(got["mean"], want["mean"], rtol=0, atol=1e-5, err_msg=f"mean {h}x{w}")
        print(f"{h}x{w}: max |mean - numpy| = {np.abs(got['mean'] - want['mean']).max()}")
    assert backend.trt.launches == len(SIZES)


def test_stages_ms_from_cuda_events_are_positive(opened):
    backend, _, _ = opened
    for h, w in SIZES:
        for _ in range(3):
            backend.infer({FRAME_INPUT: frame(h, w)})
            stages = dict(backend.stages_ms)
            assert set(stages) == {"copy_in", "compute", "copy_out"}
            assert all(ms > 0 for ms in stages.values()), f"{h}x{w}: {stages}"
        print(f"{h}x{w}: " + ", ".join(f"{k} {v:.4f} ms" for k, v in stages.items()))


def test_no_device_or_pinned_allocation_per_frame(opened):
    backend, counting, scratch = opened
    backend.infer({FRAME_INPUT: frame(360, 640)})  # the first frame allocates the shared scratch, once
    allocations, free = list(counting.allocations), free_bytes()
    assert allocations[-1] == ("mem_alloc", scratch.size)
    sizes = [(64, 64), (360, 640), (1080, 1920), (512, 512)]
    for i in range(200):
        backend.infer({FRAME_INPUT: frame(*sizes[i % len(sizes)], seed=i % 7)})
    assert counting.allocations == allocations
    assert free_bytes() == free, "device memory changed over 200 frames"


def test_memory_numbers_equal_the_real_allocations(gpu, tmp_path):
    context, kernel = gpu
    counting = CountingCuda()
    scratch = SharedScratch(counting, context)
    before = free_bytes()
    backend = open_backend(counting, scratch, kernel, tmp_path)
    after_open = free_bytes()
    held = backend.memory()
    h, w = BOUNDS.max_hw
    want = h * w * 3 + h * w * 4 + h * w * 3  # frames uint8 [1,H,W,3]; mean float32 [1,H,W]; inverted uint8
    device = [n for kind, n in counting.allocations if kind == "mem_alloc"]
    pinned = [n for kind, n in counting.allocations if kind == "pagelocked_empty"]
    print(f"memory(): {held}; asked for: device {device}, pinned {pinned}; free fell by {before - after_open:,}")
    assert held["device_buffers"] == sum(device) == want
    assert held["host_pinned"] == sum(pinned) == want
    assert held["scratch_need"] == backend.trt.scratch_need
    for name, pair in backend.buffers.items():
        base, size = cuda.mem_get_address_range(int(pair.device))  # what the driver holds for that address
        print(f"{name}: {pair.nbytes:,} bytes asked for; the driver's range at that address: {size:,} bytes")
        assert base == int(pair.device) and pair.nbytes <= size <= pair.nbytes + 2 * MIB, (name, base, size)
        assert pair.host.nbytes == pair.nbytes, name
        assert isinstance(pair.host.base, cuda.HostAllocation), f"{name}: host buffer on {type(pair.host.base)}"
    granularity = 2 * MIB * len(device)  # cuMemAlloc rounds each allocation up to its page size
    assert 0 <= (before - after_open) - want <= granularity
    backend.__exit__(None, None, None)
    assert abs(free_bytes() - before) <= 2 * MIB, "closing the backend did not give its device buffers back"
    scratch.free()


def test_scratch_growth_frees_the_old_allocation(gpu):
    context, _ = gpu
    scratch = SharedScratch(cuda, context)

    class Bound:  # a stand-in execution context: where its activation memory is
        def set_device_memory(self, address, size):
            self.at = (int(address), int(size))

    engine = Bound()
    before = free_bytes()
    scratch.bind(engine, 64 * MIB)
    small = free_bytes()
    scratch.bind(engine, 512 * MIB)
    large = free_bytes()
    print(f"scratch held: {(before - small) / MIB:.1f} MiB at 64 MiB, {(before - large) / MIB:.1f} MiB at 512 MiB")
    assert abs((before - small) - 64 * MIB) <= 2 * MIB
    assert abs((before - large) - 512 * MIB) <= 2 * MIB, "the 64 MiB scratch was not freed when it grew"
    assert engine.at == (int(scratch.allocation), 512 * MIB)
    scratch.free()
    assert abs(free_bytes() - before) <= 2 * MIB


def test_real_out_of_memory_is_transient_and_the_process_allocates_afterwards(gpu):
    free, total = cuda.mem_get_info()
    with pytest.raises(EngineError) as caught:
        checked("mem_alloc", cuda.mem_alloc, 2 * total)
    err = caught.value
    print(f"OOM: {type(err.__cause__).__module__}.{type(err.__cause__).__name__}: {err.__cause__}")
    print(f"OOM wrapped: {type(err).__name__}: {err}; classify: {faults.classify(err)}")
    assert faults.classify(err) == faults.TRANSIENT
    checked("mem_alloc", cuda.mem_alloc, 256 * MIB, returns=True).free()
    assert free_bytes() >= free - 2 * MIB


def test_scratch_growth_that_runs_out_of_memory_keeps_the_old_scratch(gpu):
    """A transient failure: the next frame must find the scratch as it was (its real size), not a size it never got."""
    context, _ = gpu
    scratch = SharedScratch(cuda, context)

    class Bound:
        def set_device_memory(self, address, size):
            self.at = (int(address), int(size))

    first, second = Bound(), Bound()
    scratch.bind(first, 64 * MIB)
    with pytest.raises(EngineError) as caught:
        scratch.bind(first, 2 * cuda.mem_get_info()[1])
    assert faults.classify(caught.value) == faults.TRANSIENT
    try:
        assert scratch.size == 64 * MIB, f"scratch.size is {scratch.size:,} after a failed growth; 64 MiB is held"
        scratch.bind(second, 32 * MIB)  # another engine binds next: it must be told the real size
        assert second.at == (int(scratch.allocation), 64 * MIB)
    finally:
        scratch.free()


ILLEGAL_ACCESS = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from pycuda.compiler import SourceModule
    from vision_node.errors import EngineError
    from vision_node.runtime import faults
    from vision_node.runtime.cuda import checked, load_pycuda

    cuda, context = load_pycuda()
    context.push()
    wild = SourceModule("__global__ void wild(float *p) { p[threadIdx.x] = 1.0f; }").get_function("wild")
    report = []
    def attempt(what, call, *args):
        try:
            checked(what, call, *args)
        except EngineError as err:
            cause = err.__cause__
            report.append({"call": what, "module": type(cause).__module__, "type": type(cause).__name__,
                           "message": str(cause), "wrapped": str(err), "classify": faults.classify(err)})
        else:
            report.append({"call": what, "raised": None})
    attempt("launch wild(0x10)", lambda: wild(np.uintp(0x10), block=(32, 1, 1), grid=(1, 1)))
    attempt("Context.synchronize", cuda.Context.synchronize)
    attempt("mem_alloc after", cuda.mem_alloc, 1 << 20)
    print(json.dumps(report), flush=True)
    os._exit(0)  # the context is poisoned: skip pycuda's clean-up at exit
    """
)


def test_real_illegal_memory_access_is_fatal():
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run([sys.executable, "-c", ILLEGAL_ACCESS], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip(), f"rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for row in report:
        print("illegal access:", json.dumps(row))
    raised = [row for row in report if row.get("type")]
    assert raised, report  # expected at Context.synchronize: the launch is asynchronous
    for row in raised:  # the same exception type and text, rebuilt here, through checked() and classify()
        cause = getattr(cuda, row["type"])(row["message"])

        def fail(cause=cause):
            raise cause

        with pytest.raises(EngineError) as caught:
            checked(row["call"], fail)
        assert faults.classify(caught.value) == faults.FATAL == row["classify"], row


def test_infer_on_a_thread_where_no_context_is_current(opened):
    """The node opens a backend on one thread and runs frames on its session's worker thread, where nothing
    made the CUDA context current (pycuda contexts are per thread)."""
    backend, _, _ = opened
    frames = frame(360, 640)
    result = {}

    def work():
        try:
            for _ in range(2):
                result["out"] = {k: v.copy() for k, v in backend.infer({FRAME_INPUT: frames}).items()}
        except Exception as err:  # reported below
            result["err"] = err

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    err = result.get("err")
    if err is not None:
        print(
            f"worker thread: {type(err).__name__}: {err}; cause {type(err.__cause__).__module__}."
            f"{type(err.__cause__).__name__}; classify: {faults.classify(err)}"
        )
    assert err is None, f"infer on a thread without a current CUDA context: {err}"
    np.testing.assert_array_equal(result["out"]["inverted"], reference(frames)["inverted"])


def test_session_runs_waiting_frames_as_batches_on_its_worker_thread(gpu, tmp_path):
    """The node's CapabilitySession (queue, worker thread, --max-batch 4) over the stand-in engine on real CUDA:
    frames queued behind a running one go to the GPU together, from a thread the node's context is pushed on."""
    context, kernel = gpu
    scratch = SharedScratch(cuda, context)
    bounds = ShapeBounds(min_hw=(64, 64), max_hw=(1080, 1920), opt_hw=(512, 512), max_batch=4)
    plan = tmp_path / "stand-in.plan"
    plan.write_bytes(PLAN)
    trt = StandInTensorRT(scratch.stream, kernel)
    graph = Graph(plan, (64, 64), "stand-in", ({"name": "inverted"}, {"name": "mean"}))
    served = ServedCapability("stand-in", (graph,), bounds, (), True, {}, {})
    capability = SimpleNamespace(
        name="stand-in",
        render=lambda outputs, options, hw: {k: v.copy() for k, v in outputs.items()},
        frame_parameters=(),
        warm_up_parameters={},  # the graph takes the frames only
    )
    session = CapabilitySession(
        served,
        capability,
        lambda g: TensorRTBackend(plan, bounds, scratch, trt, cuda, max_batch=4),
        queue_size=16,
        max_batch=4,
        batch_window_s=0.05,  # a GPU frame is faster than the event loop queues nine requests
    )
    session.open()
    frames = [frame(360, 640, seed=i)[0] for i in range(9)]

    async def submit():
        deadline = time.monotonic() + 60
        return await asyncio.gather(*(session.run(f, {}, deadline) for f in frames))

    try:
        outcomes = asyncio.run(submit())
    finally:
        session.close()
        scratch.free()
    batches = [o.batch for o in outcomes]
    print(f"9 frames queued at once ran in batches {batches}")
    assert sorted(set(batches)) == [1, 4] and session.max_batch == 4  # [4, 4, 4, 4, 4, 4, 4, 4, 1]
    for f, outcome in zip(frames, outcomes):
        want = reference(f[None])
        np.testing.assert_array_equal(outcome.outputs["inverted"], want["inverted"])
        np.testing.assert_allclose(outcome.outputs["mean"], want["mean"], rtol=0, atol=1e-5)
