"""The TensorRT backend's own logic against FAKE TensorRT and pycuda (tests/fake_gpu.py).

What this proves: buffer sizes, the per-frame call sequence, copies of only the valid region,
no allocation per frame, the shared scratch, and errors that name the call. What it cannot
prove is TensorRT itself: that is ``python -m node selftest`` on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from node.contract import FRAME_INPUT
from node.engines import load
from node.errors import EngineError, StartupError
from node.runtime import tensorrt as trt_backend
from node.runtime.cuda import SharedScratch
from node.runtime.onnxruntime import OnnxRuntimeBackend
from node.samples import frames
from tests.fake_gpu import FakeCuda, FakeTensorRT


@pytest.fixture
def fakes():
    cuda = FakeCuda()
    return FakeTensorRT(cuda), cuda


def open_backend(tiny_build, capability, fakes, scratch=None):
    trt, cuda = fakes
    served = load(tiny_build[0], (capability,))[capability]
    graph = served.graphs[0]
    scratch = scratch or SharedScratch(cuda)
    backend = trt_backend.TensorRTBackend(graph.path, served.bounds, scratch, trt, cuda).__enter__()
    reference = OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds).__enter__()
    return backend, reference, scratch


@pytest.mark.parametrize("capability", ["depth", "segmentation", "pose"])
def test_outputs_equal_the_graph_for_every_frame_size(tiny_build, fakes, capability):
    backend, reference, _ = open_backend(tiny_build, capability, fakes)
    for h, w in [(64, 64), (120, 160), (300, 200), (120, 160)]:
        f = frames(h, w, seed=h)
        got = {k: v.copy() for k, v in backend.infer({FRAME_INPUT: f}).items()}
        want = reference.infer({FRAME_INPUT: f})
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{capability} {name} {h}x{w}")


def test_per_frame_sequence_copies_valid_regions_and_allocates_nothing(tiny_build, fakes):
    backend, _, scratch = open_backend(tiny_build, "segmentation", fakes)
    cuda = fakes[1]
    opened = list(cuda.calls)
    assert ("create_execution_context", "user_managed") in opened
    allocations = [c for c in opened if c[0] in ("mem_alloc", "pagelocked_empty")]
    assert len(allocations) == 4  # input and output: one pinned host and one device buffer each, at open
    assert ("mem_alloc", 720 * 1280 * 3) in allocations  # the largest frame the bounds allow
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(120, 160)})
    first = [c[0] for c in cuda.calls]
    assert first == [
        "mem_alloc",  # the shared scratch, on the first run only
        "set_device_memory",
        "htod",
        "set_input_shape",
        "execute_async_v3",
        "dtoh",
        "synchronize",
    ]
    assert cuda.calls[2][2] == 120 * 160 * 3 and cuda.calls[5][2] == 120 * 160  # only the valid bytes move
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(120, 160, seed=1)})
    assert [c[0] for c in cuda.calls] == ["htod", "execute_async_v3", "dtoh", "synchronize"]  # same shape: no rebind
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(200, 100)})
    assert [c[0] for c in cuda.calls] == ["htod", "set_input_shape", "execute_async_v3", "dtoh", "synchronize"]


def test_engines_share_one_scratch_sized_to_the_largest(tiny_build):
    cuda = FakeCuda()
    scratch = SharedScratch(cuda)
    small, _, _ = open_backend(tiny_build, "segmentation", (FakeTensorRT(cuda, scratch_need=1000), cuda), scratch)
    large, _, _ = open_backend(tiny_build, "depth", (FakeTensorRT(cuda, scratch_need=5000), cuda), scratch)
    small.infer({FRAME_INPUT: frames(64, 64)})
    assert scratch.size == 1000
    large.infer({FRAME_INPUT: frames(64, 64)})  # grows once, the old buffer is freed
    assert scratch.size == 5000 and small.context.device_memory_at != large.context.device_memory_at
    small.infer({FRAME_INPUT: frames(64, 64)})  # rebinds to the grown buffer
    assert small.context.device_memory_at == large.context.device_memory_at == int(scratch.allocation)
    cuda.calls.clear()
    small.infer({FRAME_INPUT: frames(64, 64)})
    large.infer({FRAME_INPUT: frames(64, 64)})
    assert not [c for c in cuda.calls if c[0] in ("mem_alloc", "set_device_memory")]  # steady state: nothing


def test_a_failed_execute_is_an_error_naming_the_call(tiny_build):
    cuda = FakeCuda()
    backend, _, _ = open_backend(tiny_build, "depth", (FakeTensorRT(cuda, fail_execute=True), cuda))
    with pytest.raises(EngineError, match="execute_async_v3 returned False"):
        backend.infer({FRAME_INPUT: frames(64, 64)})


def test_an_engine_that_does_not_deserialise_is_named(tiny_build, tmp_path, fakes):
    trt, cuda = fakes
    plan = tmp_path / "broken.plan"
    plan.write_bytes(b"not a plan")
    served = load(tiny_build[0], ("depth",))["depth"]
    with pytest.raises(EngineError, match=r"deserialize_cuda_engine\(broken\.plan\) returned None"):
        trt_backend.TensorRTBackend(plan, served.bounds, SharedScratch(cuda), trt, cuda).__enter__()


def test_without_tensorrt_the_error_says_which_extra_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(StartupError, match=r"TensorRT backend is unavailable.*\.\[trt\]"):
        trt_backend.load_tensorrt()
