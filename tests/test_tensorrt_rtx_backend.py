"""The TensorRT-for-RTX path of the TensorRT backend against FAKE TensorRT for RTX and pycuda.

What this proves: the node opens the tensorrt_rtx module, gives every engine our shared scratch
through a runtime config, keeps one runtime cache per GPU in the engines directory (loaded on the
next start), and names an engine the runtime says cannot run here. Not TensorRT for RTX itself:
that is ``python -m vision_node selftest --backend tensorrt-rtx`` on an RTX GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.fake_gpu import engines_with_fake_plans, fp16_reference, patch_in_fake_gpu
from tests.nodes import frame, node_client, raw_type, wait_loaded
from vision_node.contract import FRAME_INPUT


@pytest.fixture
def fake_rtx_node(tiny_build, tmp_path, monkeypatch):
    """The server's tensorrt-rtx path with FAKE TensorRT for RTX and pycuda (its runtime config and cache)."""
    trt, loaded = patch_in_fake_gpu(monkeypatch)
    engines_with_fake_plans(tiny_build[0], tmp_path / "engines", runtime="tensorrt-rtx")
    return tmp_path / "engines", trt, loaded


def test_rtx_backend_serves_with_a_runtime_cache_kept_in_the_engines_directory(fake_rtx_node):
    engines, trt, loaded = fake_rtx_node
    with node_client(engines, backend="tensorrt-rtx") as client:
        caps = client.get("/capabilities").json()["capabilities"]
        assert caps["depth"]["backend"]["name"] == "tensorrt-rtx" and loaded[0].module == "tensorrt_rtx"
        f = frame(120, 160)
        r = client.post("/infer/segmentation/raw", content=f.tobytes(), headers={"content-type": raw_type(f)})
        assert r.status_code == 200, r.text
        want = fp16_reference(engines, "segmentation").infer({FRAME_INPUT: f[None]})["classes"][0]
        np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(want.shape), want)
    contexts = [c for c in trt.cuda.calls if c[0] == "create_execution_context"]
    assert len(contexts) == 3 and all(c[1] == "user_managed" for c in contexts)  # our scratch, via a runtime config
    assert len({id(c[2]) for c in contexts}) == 1  # one runtime cache for every engine
    cache = engines / "runtime-cache.FAKE-GPU.sm90.rtx0.0-fake.bin"
    assert cache.read_bytes() == b"fake-runtime-cache used by 3"  # written after warm-up and at shutdown
    assert trt.runtime_cache_blobs == []  # nothing to load on the first start
    with node_client(engines, backend="tensorrt-rtx"):
        pass
    assert trt.runtime_cache_blobs == [b"fake-runtime-cache used by 3"]  # the second start loads it


def test_rtx_backend_refuses_an_engine_the_runtime_says_cannot_run_here(fake_rtx_node):
    engines, trt, _ = fake_rtx_node
    trt.validity = ("INVALID", 2)  # UNSUPPORTED_CC: e.g. an H100 (sm90), which TensorRT for RTX does not list
    with node_client(engines, wait=False, backend="tensorrt-rtx") as client:
        assert wait_loaded(client) == {"status": "ERROR"}
        detail = client.get("/ready").json()["detail"]
        assert "says this engine cannot run on this GPU: UNSUPPORTED_CC" in detail


def test_selftest_runs_rtx_engines_too(fake_rtx_node, capsys):
    from vision_node.serving import selftest

    engines, _, _ = fake_rtx_node
    assert selftest.run(engines, ["depth"], iterations=2, backend="tensorrt-rtx") == 0
    out = capsys.readouterr().out
    assert "GPU: FAKE GPU (sm9.0), tensorrt_rtx 0.0-fake" in out and ".fp16.rtx" in out and "OK:" in out
