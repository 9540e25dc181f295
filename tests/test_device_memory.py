"""The node's GPU memory in one number per capability and in total (issue 32, item 3).

From TensorRT for RTX's real build figures (the tiny build compiled on this CPU, ``compiled_build``): in the
manifest, in ``/capabilities``, in the start-up log and in what the node tells an orchestrator when it
registers (BYOC description, live-runner metadata). Without figures nothing is claimed.
"""

from __future__ import annotations

import time

import pytest

from tests.nodes import free_port, node_client, start_node, stop
from tests.orchestrator_double import OrchestratorDouble
from tests.test_tensorrt_compile import SUPPORTED
from vision_node import device_memory, manifest
from vision_node.config import Config
from vision_node.livepeer.live_runner import runner_entry

needs_rtx = pytest.mark.skipif(not SUPPORTED, reason="TensorRT for RTX has no build for this platform")


def expected(engines) -> dict:
    """Worked out here from each graph's recorded figures: the fp16 rung (every tiny graph has one verified)."""
    capabilities = manifest.load(engines)["capabilities"]
    alone = {}
    for name, entry in capabilities.items():
        figures = [g["memory"]["tensorrt_rtx"][g["fp16"]["precision"]] for g in entry["graphs"]]
        weights = sum(f["weights_bytes"] for f in figures)
        activation = max(f["activation_bytes"] for f in figures)
        alone[name] = (weights, activation)
    total = sum(w for w, _ in alone.values()) + max(a for _, a in alone.values())
    return {"alone": alone, "total": total}


@needs_rtx
def test_the_manifest_states_each_capability_alone_and_the_node_with_one_shared_activation(compiled_build):
    engines, _ = compiled_build
    stated, worked_out = manifest.load(engines)["device_memory"], expected(engines)
    assert stated["source"] == "tensorrt_rtx" and stated["missing"] == []
    for name, (weights, activation) in worked_out["alone"].items():
        need = stated["capabilities"][name]
        assert (need["weights_bytes"], need["activation_bytes"]) == (weights, activation)
        assert need["total_bytes"] == weights + activation and need["precision"] == "fp16"
        assert need["max_hw"] == [720, 1280] and need["max_batch"] == 1  # the tiny bounds, batch 1
    assert stated["total_bytes"] == worked_out["total"]
    assert stated["shared_activation_bytes"] == max(a for _, a in worked_out["alone"].values())
    # Sharing the scratch is what makes the node cheaper than its capabilities one by one.
    assert stated["total_bytes"] < sum(w + a for w, a in worked_out["alone"].values())


@needs_rtx
def test_capabilities_show_the_manifests_figures(compiled_build):
    engines, _ = compiled_build
    stated = manifest.load(engines)["device_memory"]
    with node_client(engines) as client:
        shown = client.get("/capabilities").json()
    assert shown["node"]["device_memory"] == stated
    for name, entry in shown["capabilities"].items():
        assert entry["device_memory"] == stated["capabilities"][name]


@needs_rtx
def test_the_orchestrator_is_told_the_gpu_memory_when_the_node_registers(compiled_build, tmp_path):
    engines, _ = compiled_build
    told = device_memory.of(
        {c: [g["memory"] for g in e["graphs"]] for c, e in manifest.load(engines)["capabilities"].items()}
    ).told()
    total_mb = round(manifest.load(engines)["device_memory"]["total_bytes"] / 1e6)
    assert told.startswith(f"GPU memory {total_mb} MB (depth ") and "fp16" in told
    log = tmp_path / "node.log"
    with OrchestratorDouble("secret") as double:
        port = free_port()
        proc, url = start_node(
            engines,
            log,
            VISION_NODE_PORT=port,
            VISION_NODE_ORCHESTRATOR_URL=double.url,
            VISION_NODE_ORCHESTRATOR_SECRET="secret",
            VISION_NODE_NODE_URL=f"http://127.0.0.1:{port}",
            VISION_NODE_CAPABILITIES="depth",
        )
        try:
            deadline = time.monotonic() + 60
            while "depth" not in double.registry:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            # the node serves depth only: its figures are depth's alone
            depth_alone = manifest.load(engines)["device_memory"]["capabilities"]["depth"]["total_bytes"]
            description = double.registry["depth"]["description"]
            assert description.startswith("vision node: depth conditioning maps per frame; GPU memory ")
            assert f"GPU memory {depth_alone / 1e6:.0f} MB (depth {depth_alone / 1e6:.0f} MB alone" in description
            assert description.removeprefix("vision node: depth conditioning maps per frame; ") in log.read_text()
        finally:
            stop(proc)
    # A live runner says it as its metadata, unless the operator wrote their own.
    config = Config(engines=engines, node_url="http://node:8000")
    assert runner_entry(config, "depth", memory=told)["metadata"] == told
    own = Config(engines=engines, node_url="http://node:8000", runner_metadata="rack 4")
    assert runner_entry(own, "depth", memory=told)["metadata"] == "rack 4"


def test_without_build_figures_no_memory_is_claimed(tiny_build, client):
    stated = manifest.load(tiny_build[0])["device_memory"]
    assert stated["total_bytes"] is None and stated["capabilities"] == {}
    assert stated["missing"] == ["depth", "segmentation", "pose"]
    shown = client.get("/capabilities").json()
    assert shown["node"]["device_memory"] == stated
    assert all(entry["device_memory"] is None for entry in shown["capabilities"].values())
    config = Config(engines=tiny_build[0], node_url="http://node:8000")
    assert "metadata" not in runner_entry(config, "depth", memory="")
