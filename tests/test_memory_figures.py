"""Memory per capability known at build time (issue 21): in the manifest, in /capabilities, plausible.

The ONNX Runtime proxy is measured at every build (``vision_node.builder.memory``); TensorRT for RTX's own
figures come from its builder's log during ``--compile-check`` (``tests/test_tensorrt_compile.py``).
"""

from __future__ import annotations

from vision_node.builder import trt_memory
from vision_node.builder.memory import PROXY, costliest_frames
from vision_node.serving.engines import load

GIB = 1 << 30


def test_the_builder_log_figures_are_read_as_tensorrt_writes_them():
    log = """Total Host Persistent Memory: 80 bytes
Total Device Persistent Memory: 0 bytes
Max Scratch Memory: 526809088 bytes
Total Activation Memory: 526811648 bytes
Total Weights Memory: 643840 bytes"""
    assert trt_memory.parse(log) == {
        "persistent_bytes": 0,
        "max_scratch_bytes": 526809088,
        "activation_bytes": 526811648,
        "weights_bytes": 643840,
    }
    assert trt_memory.parse("Engine generation completed in 9.5 seconds.") == {}


def test_every_graph_states_its_weights_and_its_scratch_at_the_costliest_admitted_frames(tiny_build):
    out, entries = tiny_build
    for capability, served in load(out).items():
        graph = served.graphs[0]
        proxy = graph.memory[PROXY]
        size = graph.path.stat().st_size
        assert 0.3 * size < proxy["weights_bytes"] <= size, (capability, proxy["weights_bytes"], size)
        # Noise at the largest frame makes every graph's arena grow; none needs gigabytes at the tiny bounds.
        assert 10 << 20 < proxy["activation_bytes"] < 2 * GIB, (capability, proxy["activation_bytes"])
        frames = [tuple(hw) for hw in proxy["frames"]]
        assert frames == costliest_frames(graph.sizing, served.bounds) and frames[0] == served.bounds.max_hw
        assert proxy["batch"] == 1 and "proxy" in proxy["method"]
    depth = load(out)["depth"].graphs[0].memory[PROXY]["frames"]
    assert len(depth) > 1  # the frames its patch budget caps are measured too


def test_capabilities_show_each_graphs_memory(client, tiny_build):
    shown = client.get("/capabilities").json()["capabilities"]
    for capability, entry in tiny_build[1].items():
        assert shown[capability]["graphs"][0]["memory"] == entry["graphs"][0]["memory"]
        assert shown[capability]["graphs"][0]["memory"][PROXY]["activation_bytes"] > 0
