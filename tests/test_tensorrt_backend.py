"""The TensorRT backend's own logic against FAKE TensorRT and pycuda (tests/fake_gpu.py).

What this proves: buffer sizes, the per-frame call sequence, copies of only the valid region,
no allocation per frame, the shared scratch, and errors that name the call. What it cannot
prove is TensorRT itself: that is ``python -m vision_node selftest`` on a GPU.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fake_gpu import FakeCuda, FakeTensorRT, engines_with_fake_plans, fp16_reference, patch_in_fake_gpu
from tests.nodes import frame, metadata, node_client, raw_type, wait_loaded, wait_ready
from vision_node.contract import FRAME_INPUT
from vision_node.errors import EngineError, StartupError
from vision_node.runtime import faults
from vision_node.runtime import tensorrt as trt_backend
from vision_node.runtime.cuda import SharedScratch
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.samples import frames
from vision_node.serving.engines import load


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
    cuda = fakes[1]
    scratch = SharedScratch(cuda, cuda.Device(0).retain_primary_context())
    backend, _, scratch = open_backend(tiny_build, "segmentation", fakes, scratch)
    opened = list(cuda.calls)
    assert ("create_execution_context", "user_managed") in opened
    allocations = [c for c in opened if c[0] in ("mem_alloc", "pagelocked_empty")]
    assert len(allocations) == 4  # input and output: one pinned host and one device buffer each, at open
    assert ("mem_alloc", 720 * 1280 * 3) in allocations  # the largest frame the bounds allow
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(120, 160)})
    first = [c[0] for c in cuda.calls]
    assert first == [
        "push",  # the node's CUDA context, current on the calling (worker) thread
        "mem_alloc",  # the shared scratch, on the first run only
        "set_device_memory",
        "htod",
        "set_input_shape",
        "execute_async_v3",
        "dtoh",
        "synchronize",
        "pop",
    ]
    assert cuda.calls[3][2] == 120 * 160 * 3 and cuda.calls[6][2] == 120 * 160  # only the valid bytes move
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(120, 160, seed=1)})
    same_shape = ["push", "htod", "execute_async_v3", "dtoh", "synchronize", "pop"]  # no rebind, no shape change
    assert [c[0] for c in cuda.calls] == same_shape
    cuda.calls.clear()
    backend.infer({FRAME_INPUT: frames(200, 100)})
    assert [c[0] for c in cuda.calls] == [
        "push",
        "htod",
        "set_input_shape",
        "execute_async_v3",
        "dtoh",
        "synchronize",
        "pop",
    ]


def test_outputs_the_caller_owns_are_copied_out_of_the_pinned_buffers(tiny_build, fakes):
    backend, reference, _ = open_backend(tiny_build, "depth", fakes)
    f = frames(120, 160, seed=3)
    got = backend.infer({FRAME_INPUT: f}, owned={"depth"})
    assert not np.shares_memory(got["depth"], backend.buffers["depth"].host)
    assert np.shares_memory(got["depth_max"], backend.buffers["depth_max"].host)  # the others: views, as ever
    want = reference.infer({FRAME_INPUT: f})["depth"].copy()
    backend.infer({FRAME_INPUT: frames(120, 160, seed=4)})  # the next frame overwrites the buffer, not the copy
    np.testing.assert_array_equal(got["depth"], want)


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


def test_a_closed_backend_leaves_no_binding_a_new_context_could_inherit(tiny_build):
    """A context's scratch binding is keyed by id(); a new context may get a closed one's id. It must
    still be bound before it runs (this once ran a FAKE engine "without scratch memory" in CI)."""
    import gc
    import weakref

    cuda = FakeCuda()
    scratch = SharedScratch(cuda)
    first, _, _ = open_backend(tiny_build, "depth", (FakeTensorRT(cuda), cuda), scratch)
    first.infer({FRAME_INPUT: frames(64, 64)})
    assert scratch.bound_contexts == 1
    closed = weakref.ref(first.context)
    first.__exit__(None, None, None)
    gc.collect()
    assert scratch.bound_contexts == 0 and closed() is None  # nothing of a closed backend is kept, not even its id
    second, _, _ = open_backend(tiny_build, "depth", (FakeTensorRT(cuda), cuda), scratch)
    cuda.calls.clear()
    second.infer({FRAME_INPUT: frames(64, 64)})  # the fake asserts the scratch was set before executing
    assert [c[0] for c in cuda.calls].count("set_device_memory") == 1


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
    with pytest.raises(StartupError, match=r"tensorrt backend is unavailable.*\.\[trt\]"):
        trt_backend.load_tensorrt()


# ---------------------------------------------------------------- engine files, build decisions and choice (pure)


def test_profile_spans_the_bounds_with_the_serving_batch():
    from vision_node.builder.engine_files import profile_shapes
    from vision_node.contract import ShapeBounds

    bounds = ShapeBounds(min_hw=(64, 64), opt_hw=(512, 512), max_hw=(2160, 3840), max_batch=4)
    assert profile_shapes(bounds, 1) == {"frames": ((1, 64, 64, 3), (1, 512, 512, 3), (1, 2160, 3840, 3))}
    assert profile_shapes(bounds, 8)["frames"][2] == (4, 2160, 3840, 3)  # never above the graph's bounds


def test_engine_files_are_keyed_by_graph_gpu_version_and_options(tmp_path):
    from dataclasses import replace

    from vision_node.builder import engine_files as ec
    from vision_node.runtime.flavours import TENSORRT, TENSORRT_RTX

    gpu = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    facts = ec.wanted("ab" * 32, TENSORRT, "10.13.0", {"precision": "fp16", "max_batch": 1}, gpu)
    path = ec.engine_path(tmp_path, "depth-518x518.fp16", facts)
    assert path.name.startswith("depth-518x518.fp16.NVIDIA-H100-80GB-HBM3.sm90.trt10.13.0.") and path.suffix == ".plan"
    for change in ({"tensorrt": "10.14.1"}, {"gpu": "NVIDIA L40S"}, {"onnx_sha256": "cd" * 32}):
        assert ec.engine_path(tmp_path, "depth-518x518.fp16", replace(facts, **change)) != path
    assert ec.decide(None, facts)[0] == "build"
    assert ec.decide(replace(facts), facts) == ("reuse", "built for this graph, GPU, TensorRT version and options")
    decision, why = ec.decide(replace(facts, tensorrt="10.8.0"), facts)
    assert decision == "build" and "foreign engine" in why and "10.8.0" in why
    # TensorRT for RTX: built ahead of time, bound to its compute-capability targets, not to a GPU model.
    rtx = ec.wanted("ab" * 32, TENSORRT_RTX, "1.7.1.116", {"precision": "fp16", "targets": ["8.6", "8.9"]}, gpu)
    assert rtx.gpu is None and "gpu" not in rtx.as_dict() and rtx.runtime == "tensorrt-rtx"
    rtx_path = ec.engine_path(tmp_path, "depth-518x518.fp16", rtx)
    assert rtx_path.name.startswith("depth-518x518.fp16.rtx1.7.1.116.") and "H100" not in rtx_path.name
    other_targets = ec.wanted("ab" * 32, TENSORRT_RTX, "1.7.1.116", {"precision": "fp16", "targets": ["12.0"]})
    assert ec.engine_path(tmp_path, "depth-518x518.fp16", other_targets) != rtx_path


def _engine(**fields) -> dict:
    """An engine record as the manifest lists it (TensorRT on an H100 unless ``fields`` say otherwise)."""
    from vision_node.manifest import EngineRecord

    record = {
        "onnx_sha256": "x",
        "runtime": "tensorrt",
        "tensorrt": "10.13.0",
        "options": {},
        "gpu": "H100",
        "compute_capability": "9.0",
        "sha256": "e",
        "bytes": 1,
        **fields,
    }
    return EngineRecord(**record).as_dict()


def test_pick_finds_this_machines_engine_or_says_what_exists():
    from vision_node.runtime.engine_choice import pick
    from vision_node.runtime.flavours import TENSORRT_RTX

    h100 = _engine(plan="a.plan")
    l40s = _engine(gpu="L40S", compute_capability="8.9", plan="b.plan")
    gpu = {"name": "H100", "compute_capability": "9.0"}
    assert pick([l40s, h100], ["x"], gpu, "10.13.0") == (h100, "")
    entry, why = pick([l40s], ["x"], gpu, "10.13.0")
    assert entry is None and "L40S sm8.9 TensorRT 10.13.0" in why
    assert pick([h100], ["y"], gpu, "10.13.0")[0] is None  # graph changed
    assert pick([], ["x"], gpu, "10.13.0")[1].startswith("no TensorRT engine")
    fp16 = _engine(onnx_sha256="x16", plan="c.plan")
    assert pick([h100, fp16], ["x16", "x"], gpu, "10.13.0")[0] == fp16  # the fp16 graph's engine first
    # TensorRT for RTX: any RTX engine of the graph, this version first; the card's verdict comes at open.
    rtx_old = _engine(
        onnx_sha256="x16", runtime="tensorrt-rtx", tensorrt="1.6.0", gpu=None, compute_capability=None, plan="d.plan"
    )
    rtx = {**rtx_old, "tensorrt": "1.7.1", "plan": "e.plan"}
    assert pick([h100, rtx_old, rtx], ["x16", "x"], gpu, "1.7.1", TENSORRT_RTX)[0] == rtx
    assert pick([h100, rtx_old], ["x16", "x"], gpu, "1.7.1", TENSORRT_RTX)[0] == rtx_old
    rtx_newer = {**rtx_old, "tensorrt": "1.10.0", "plan": "f.plan"}  # none of this version: the newest other
    assert pick([rtx_old, rtx_newer], ["x16"], gpu, "1.7.1", TENSORRT_RTX)[0] == rtx_newer
    assert pick([rtx_newer, rtx_old], ["x16"], gpu, "1.7.1", TENSORRT_RTX)[0] == rtx_newer
    entry, why = pick([h100], ["x"], gpu, "1.7.1", TENSORRT_RTX)
    assert entry is None and "H100 sm9.0 TensorRT 10.13.0" in why  # a TensorRT engine is no RTX engine


def _graph(fp16: bool):
    """A manifest graph record named d.onnx (sha256 "32"), with its fp16 twin d.fp16.onnx ("16") if asked."""
    from vision_node.manifest import FileRecord, GraphRecord, OnnxRecord, OptimisedCopy
    from vision_node.sizing import Sizing

    def variant(name):
        return FileRecord(path=f"{name}.trt.onnx", sha256=f"{name}-trt", bytes=1)

    twin = (
        OnnxRecord(
            path="d.fp16.onnx",
            sha256="16",
            bytes=1,
            precision="fp16",
            float_weights={},
            tensorrt_onnx=variant("d.fp16"),
        )
        if fp16
        else None
    )
    return GraphRecord(
        path="d.onnx",
        sha256="32",
        bytes=1,
        precision="fp32",
        float_weights={},
        tensorrt_onnx=variant("d"),
        sizing=Sizing.fixed(64, 64),
        inputs=[],
        outputs=[],
        onnxruntime=OptimisedCopy(path="d.ort.onnx", sha256="o", bytes=1, version="1", level="x"),
        fp16=twin,
    )


def test_engines_are_built_from_the_fp16_graph_then_the_fp32_one(tmp_path):
    """Each from its TensorRT variant, the file TensorRT is given."""
    from vision_node.builder.errors import BuildError
    from vision_node.builder.tensorrt import candidates

    graph = _graph(fp16=True)
    assert [c[0] for c in candidates(tmp_path, graph, "auto")] == ["fp16", "fp32"]
    assert candidates(tmp_path, graph, "fp16") == [("fp16", tmp_path / "d.fp16.trt.onnx", "d.fp16-trt")]
    assert candidates(tmp_path, graph, "fp32") == [("fp32", tmp_path / "d.trt.onnx", "d-trt")]
    alone = _graph(fp16=False)
    assert [c[0] for c in candidates(tmp_path, alone, "auto")] == ["fp32"]  # with a warning in the log
    with pytest.raises(BuildError, match="no fp16 graph"):
        candidates(tmp_path, alone, "fp16")


# ---------------------------------------------------------------- the server and the self-test on FAKE TensorRT


@pytest.fixture
def fake_gpu_node(tiny_build, tmp_path, monkeypatch):
    """The real server and self-test code paths with FAKE TensorRT/pycuda patched in where they are loaded."""
    trt, loaded = patch_in_fake_gpu(monkeypatch)
    engines_with_fake_plans(tiny_build[0], tmp_path / "engines")
    return tmp_path / "engines", trt.cuda, loaded


def test_server_serves_through_the_tensorrt_backend_path(fake_gpu_node):
    engines, cuda, _ = fake_gpu_node
    with node_client(engines, backend="tensorrt") as client:
        described = client.get("/capabilities").json()
        caps = described["capabilities"]
        assert described["node"]["backend"] == "tensorrt" and described["node"]["shared_scratch_bytes"] == 1 << 20
        assert (
            'vision_node_backend_memory_bytes{capability="node",kind="shared_scratch"} 1.048576e+06'
            in client.get("/metrics").text
        )
        assert caps["depth"]["backend"]["name"] == "tensorrt" and caps["depth"]["backend"]["device"] == "cuda"
        assert caps["depth"]["backend"]["precision"] == "fp16"  # the engine of the fp16 graph
        assert caps["depth"]["backend"]["memory_bytes"]["device_buffers"] > 0
        f = frame(120, 160)
        r = client.post("/infer/segmentation/raw", content=f.tobytes(), headers={"content-type": raw_type(f)})
        assert r.status_code == 200, r.text
        want = fp16_reference(engines, "segmentation").infer({FRAME_INPUT: f[None]})["classes"][0]
        np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(want.shape), want)
        assert metadata(r)["precision"] == "fp16" and metadata(r)["backend"] == "tensorrt"
        scratch_allocations = [c for c in cuda.calls if c[0] == "set_device_memory"]
        assert len({c[1] for c in scratch_allocations[-3:]}) == 1  # every engine on the one shared scratch


def test_server_refuses_engines_built_for_another_machine(fake_gpu_node):
    engines, _, _ = fake_gpu_node
    data = json.loads((engines / "manifest.json").read_text())
    for graph in data["capabilities"]["depth"]["graphs"]:
        for entry in graph["tensorrt"]:
            entry["gpu"] = "NVIDIA L40S"
    (engines / "manifest.json").write_text(json.dumps(data))
    with node_client(engines, wait=False, backend="tensorrt") as client:
        assert wait_loaded(client) == {"status": "ERROR"}
        assert client.get("/ready").status_code == 503
        detail = client.get("/ready").json()["detail"]
        assert "NVIDIA L40S" in detail and "FAKE GPU" in detail and "--tensorrt-only" in detail


def test_preflight_opens_the_gpu_once_for_the_node_and_names_a_missing_engine(fake_gpu_node):
    from starlette.testclient import TestClient

    from vision_node.config import Config
    from vision_node.http.app import create_app
    from vision_node.serving import preflight

    engines, _, loaded = fake_gpu_node
    config = Config(engines=engines, backend="tensorrt")
    served, gpu = preflight.check(config)
    assert sorted(served) == ["depth", "pose", "segmentation"] and gpu.gpu["name"] == "FAKE GPU"
    with TestClient(create_app(config, served=served, gpu=gpu)) as client:
        wait_ready(client)
    assert len(loaded) == 1  # the node went on with preflight's runtime: TensorRT and the GPU opened once
    plan = (
        engines
        / json.loads((engines / "manifest.json").read_text())["capabilities"]["pose"]["graphs"][0]["tensorrt"][0][
            "plan"
        ]
    )
    plan.unlink()
    with pytest.raises(StartupError, match=rf"{plan.name}: missing \(listed in the manifest\); rebuild it"):
        preflight.check(config)


def test_selftest_agrees_on_fake_engines_and_reports_time_and_vram(fake_gpu_node, capsys):
    from vision_node.serving import selftest

    engines, _, _ = fake_gpu_node
    assert selftest.run(engines, ["depth", "segmentation"], iterations=3) == 0
    out = capsys.readouterr().out
    assert "GPU: FAKE GPU (sm9.0), tensorrt 0.0-fake" in out
    assert "GPU time per frame" in out and "shared activation scratch" in out and "OK:" in out


def test_selftest_without_tensorrt_exits_2_saying_what_to_install(tiny_build, capsys):
    from vision_node.serving import selftest

    assert selftest.run(tiny_build[0]) == 2
    assert ".[trt]" in capsys.readouterr().err


def test_engine_build_reuses_falls_back_to_the_fp32_graph_and_refuses(tiny_build, tmp_path, monkeypatch):
    """The build's decisions with FAKE TensorRT: its builder is replaced, the gate runs the fake engine."""
    import shutil

    from vision_node.builder import tensorrt as build_trt
    from vision_node.builder.errors import BuildError
    from vision_node.builder.verify import Check

    cuda = FakeCuda()
    trt = FakeTensorRT(cuda)
    monkeypatch.setattr(build_trt, "load_tensorrt", lambda flavour=None: trt)
    monkeypatch.setattr(build_trt, "load_pycuda", lambda: (cuda, cuda.Device(0).retain_primary_context()))
    built = []

    def fake_build_plan(trt_, flavour, onnx_path, shapes, options, timing_cache=None):
        built.append(onnx_path.name)
        return onnx_path.read_bytes(), {}  # FAKE: the "engine" is the graph itself

    monkeypatch.setattr(build_trt, "build_plan", fake_build_plan)
    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)

    entries = build_trt.build_engines(engines, ["segmentation"])
    graph = entries["segmentation"].graphs[0]
    record = graph.tensorrt[0]
    assert built == ["segmentation-64x64.fp16.trt.onnx"]  # the fp16 graph (its TensorRT file): no fp16 builder flag
    assert record.gpu == "FAKE GPU" and record.precision == "fp16" and record.runtime == "tensorrt"
    assert graph.fp16 is not None and record.onnx_sha256 == graph.fp16.tensorrt_onnx.sha256
    assert record.gate and all(c["ok"] for c in record.gate)
    assert (engines / record.plan).is_file() and (engines / record.plan).with_suffix(".json").is_file()

    build_trt.build_engines(engines, ["segmentation"])
    assert len(built) == 1  # the engine on disk matches: reused, not rebuilt

    def gate_misses_fp16(capability, plan, *args):
        ok = ".fp16." not in plan.name
        return [Check("segmentation", "1x64x64", "pixel_agreement", 1.0 if ok else 0.5, 0.98)]

    monkeypatch.setattr(build_trt, "gate", gate_misses_fp16)
    for path in engines.glob("*.plan"):
        path.unlink()
    record = build_trt.build_engines(engines, ["segmentation"])["segmentation"].graphs[0].tensorrt[0]
    assert built[1:] == ["segmentation-64x64.fp16.trt.onnx", "segmentation-64x64.trt.onnx"]  # fp16 missed: fp32
    assert record.precision == "fp32" and not list(engines.glob("*.fp16.*.plan"))

    miss = [Check("segmentation", "1x64x64", "pixel_agreement", 0.5, 0.98)]
    monkeypatch.setattr(build_trt, "gate", lambda *args: miss)
    for path in engines.glob("*.plan"):
        path.unlink()
    with pytest.raises(BuildError, match=r"no TensorRT engine agreed.*tried: fp16, fp32"):
        build_trt.build_engines(engines, ["segmentation"])
    assert not list(engines.glob("segmentation-*.plan"))  # nothing that disagreed is kept


def test_a_scratch_growth_that_runs_out_of_memory_changes_nothing():
    """The failed allocation is transient (503 for that frame); the scratch must still say what it holds."""
    cuda = FakeCuda()
    scratch = SharedScratch(cuda)
    context = SimpleNamespace(set_device_memory=lambda address, size: True)
    scratch.bind(context, 1 << 20)
    held = scratch.allocation

    def out_of_memory(nbytes):
        raise RuntimeError("cuMemAlloc failed: out of memory")  # pycuda's text (seen on an H100)

    cuda.mem_alloc = out_of_memory
    with pytest.raises(EngineError) as failed:
        scratch.bind(context, 1 << 40)
    assert faults.classify(failed.value) == faults.TRANSIENT
    assert scratch.size == 1 << 20 and scratch.allocation is held
