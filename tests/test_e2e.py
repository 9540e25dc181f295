"""End to end: ``python -m vision_node serve`` as a real uvicorn process on a loopback port, real frames over HTTP.

Results must equal the in-process backend's exactly and the transformers reference's (same
seeded weights) within the build step's tolerances.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks import parity, photographs
from tests.conftest import tiny_plan
from tests.nodes import frame, in_process_backends, jpeg, png, raw_type, start_node, stop
from vision_node.builder import pipeline, verify
from vision_node.contract import FRAME_INPUT
from vision_node.sizing import Sizing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def node_url(tiny_build, tmp_path_factory):
    """A node process; while it starts, /ready is polled beside /health and must never be 200 early."""
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc, url = start_node(tiny_build[0], log, VISION_NODE_QUEUE_SIZE="2")
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()  # SIGTERM: drained, then a clean exit
    assert "stopped after draining" in log.read_text()


def _wait_ready(proc, url, log):
    seen = []
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:  # /ready first: the node may turn ready between the two calls, never back
                ready = client.get("/ready").status_code
                health = client.get("/health").json()["status"]
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            seen.append((health, ready))
            if ready == 200:
                break
    assert seen and seen[-1][1] == 200, log.read_text()
    assert ("LOADING", 200) not in seen
    assert seen[0] == ("LOADING", 503), seen[:3]
    assert "ready: depth, segmentation, pose" in log.read_text()


@pytest.fixture(scope="module")
def http(node_url):
    with httpx.Client(base_url=node_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def in_process(tiny_build):
    with in_process_backends(tiny_build[0]) as opened:
        yield {name: (backend, graph.sizing) for name, (backend, graph) in opened.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same seeded demo models the tiny build exported: the transformers reference."""
    plan = tiny_plan(tmp_path_factory.mktemp("unused"))
    return {cap: pipeline.load_models(cap, plan) for cap in ("depth", "segmentation", "pose")}


def as_graph_outputs(capability: str, response) -> dict[str, np.ndarray]:
    """The HTTP result in the graph's output layout, so the build step's checks apply unchanged."""
    return parity.as_graph_outputs(capability, response.content, json.loads(response.headers["x-metadata"]))


ROUTES, OPTIONS = parity.ROUTES, parity.OPTIONS


@pytest.mark.parametrize("capability", ["depth", "segmentation", "pose"])
@pytest.mark.parametrize("kind", ["raw", "png", "jpeg"])
def test_http_results_equal_in_process_backend_and_transformers(http, in_process, models, capability, kind):
    f = frame(150, 200, seed=11)
    if kind == "raw":
        body, media = f.tobytes(), raw_type(f)
    elif kind == "png":
        body, media = png(f), "image/png"
    else:
        body, media = jpeg(f), "image/jpeg"
        f = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))  # what the node decodes
    r = http.post(ROUTES[capability], content=body, headers={"content-type": media + OPTIONS[capability]})
    assert r.status_code == 200, r.text
    got = as_graph_outputs(capability, r)

    backend, sizing = in_process[capability]
    direct = backend.infer({FRAME_INPUT: f[None]})
    for name, value in got.items():
        if capability == "pose":  # JSON rounds to 0.01 px (boxes) and 0.001 (keypoints)
            np.testing.assert_allclose(value, direct[name], atol=0.006, err_msg=name)
        else:
            np.testing.assert_array_equal(value, direct[name], err_msg=name)

    # Pose keypoints are judged on the boxes the graph used (the JSON rounds them to 0.01 px, and
    # random-weight heatmaps are flat enough for that to move a keypoint).
    used = {**got, "boxes": direct["boxes"]} if capability == "pose" else got
    want = pipeline.reference_outputs(capability, models[capability], f[None], sizing, used)
    checks = verify.compare(capability, f"http {kind} 1x150x200", got, want)
    assert checks and all(c.ok for c in checks), verify.table(checks)


@pytest.mark.parametrize("name", photographs.PHOTOGRAPHS)
def test_depth_over_http_on_photographs_matches_transformers_at_its_own_resolution(http, models, name):
    """What ``pipeline("depth-estimation")`` does: the processor's defaults, aspect ratio kept, multiples of 14."""
    from vision_node.builder import reference

    f = np.ascontiguousarray(photographs.photograph(name)[:720])  # hubble (872 rows) cropped into the tiny bounds
    r = http.post(ROUTES["depth"], content=f.tobytes(), headers={"content-type": raw_type(f)})
    assert r.status_code == 200, r.text
    got = as_graph_outputs("depth", r)
    depth = models["depth"]["depth"]
    want = reference.depth(depth.model, depth.processor, f[None], Sizing.of_processor(depth.processor))
    correlation = np.corrcoef(got["depth"].ravel(), want["depth"].ravel())[0, 1]
    assert correlation >= 0.999, correlation
    checks = verify.compare("depth", f"http {name} {f.shape[0]}x{f.shape[1]}", got, want)
    assert all(c.ok for c in checks), verify.table(checks)
    # The node reports the resolution the processor itself resizes this photograph to.
    meta = json.loads(r.headers["x-metadata"])
    pixels = depth.processor(images=[f], return_tensors="pt")["pixel_values"]
    assert meta["resolution_mode"] == "keep-aspect" and meta["graph_resolution"] == list(pixels.shape[2:])


def test_overload_gives_503_with_retry_after_and_no_other_5xx(node_url):
    f = frame(360, 640)
    body, media = f.tobytes(), raw_type(f)

    def one(_):
        with httpx.Client(base_url=node_url, timeout=30) as client:
            r = client.post("/infer/segmentation/raw", content=body, headers={"content-type": media})
            return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    statuses = [s for s, _ in results]
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert all(retry == "1" for s, retry in results if s == 503)


def test_start_up_stops_with_the_file_named_when_an_artefact_is_corrupt(tiny_build, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)
    target = engines / "segmentation-64x64.ort.onnx"  # what ONNX Runtime loads: the build's optimised copy
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(data)
    proc, _ = start_node(engines, tmp_path / "log")
    assert proc.wait(30) == 2  # the artefacts are wrong: a restart cannot cure that
    text = (tmp_path / "log").read_text()
    assert "cannot start: " in text and "segmentation-64x64.ort.onnx: SHA-256" in text
    assert "serving" not in text and "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_start_up_failures_come_first_in_one_line_with_an_exit_code_that_says_whether_to_restart(tiny_build, tmp_path):
    import socket

    missing, _ = start_node(tmp_path / "nowhere", tmp_path / "missing.log")
    assert missing.wait(30) == 2
    text = (tmp_path / "missing.log").read_text()
    assert "engines directory not found" in text and "Traceback" not in text and len(text.splitlines()) == 1
    no_trt, _ = start_node(tiny_build[0], tmp_path / "trt.log", VISION_NODE_BACKEND="tensorrt")
    assert no_trt.wait(30) == 2  # a restart cannot install a package
    text = (tmp_path / "trt.log").read_text()
    assert "pip install -e '.[trt]'" in text and "restarts it" not in text and "Traceback" not in text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        busy, _ = start_node(tiny_build[0], tmp_path / "port.log", VISION_NODE_PORT=port)
        assert busy.wait(30) == 1  # the previous process may still hold the port: a restart may cure it
    text = (tmp_path / "port.log").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in text and "Address already in use" in text
    assert "node: ready" not in text and "serving" not in text and time.monotonic() - started < 10  # nothing loaded


def test_a_graph_onnx_runtime_cannot_load_stops_the_process(tiny_build, tmp_path):
    """The hash matches (the manifest was rewritten) but the file is not a model: warm-up fails, exit 1."""
    from vision_node import manifest

    engines = tmp_path / "engines"
    shutil.copytree(tiny_build[0], engines)
    target = engines / "depth-98x98-aspect.ort.onnx"  # what ONNX Runtime loads: the build's optimised copy
    target.write_bytes(b"not an onnx model")
    data = manifest.load(engines)
    optimised = data["capabilities"]["depth"]["graphs"][0]["onnxruntime"]
    optimised["sha256"], optimised["bytes"] = manifest.sha256(target), target.stat().st_size
    (engines / "manifest.json").write_text(json.dumps(data))
    proc, url = start_node(engines, tmp_path / "log")
    assert proc.wait(60) == 1
    text = (tmp_path / "log").read_text()
    assert "depth-98x98-aspect.ort.onnx: ONNX Runtime could not load it" in text


def test_serving_never_imports_torch_or_the_build_code(tiny_build):
    script = f"""
import sys
from tests.nodes import node_client, frame, raw_type
with node_client({str(tiny_build[0])!r}) as c:
    f = frame()
    assert c.post("/infer/pose", content=f.tobytes(), headers={{"content-type": raw_type(f)}}).status_code == 200
build_side = ("torch.", "transformers", "vision_node.builder")
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(build_side))
assert not leaked, leaked
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)


CALL_PAGES = ("README.md", "docs/api.md")  # each has a "## Calling the node" heading over one bash block


def calling_block(page: str) -> list[str]:
    """The shell lines of a page's "## Calling the node" ```bash block."""
    text = (ROOT / page).read_text()
    assert "\n## Calling the node\n" in text, f"{page} lost its '## Calling the node' section"
    block = text.split("\n## Calling the node\n", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line and not line.startswith("#")]


def readme_calls() -> list[str]:
    """The README's calls (one per capability), then every example of docs/api.md's "Calling the node"."""
    return [line for page in CALL_PAGES for line in calling_block(page)]


def test_readme_curl_examples_work_against_the_node(node_url, tmp_path):
    readme, api = (calling_block(page) for page in CALL_PAGES)
    assert all(any(f"/infer/{cap}" in line for line in readme) for cap in ("depth", "segmentation", "pose"))
    assert sum(line.count("curl ") for line in api) >= 8
    lines = readme_calls()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in lines:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line.replace("http://127.0.0.1:8000", node_url)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    assert Image.open(tmp_path / "depth.png").size == (640, 480)
    depth16 = np.asarray(Image.open(tmp_path / "depth16.png"))
    assert depth16.dtype == np.uint16 and ((depth16 == 0) | (depth16 == 65535)).mean() < 0.01  # a range that fits
    assert Image.open(tmp_path / "depth.png").convert("RGB").mode == "RGB"  # a grey palette: RGB when loaded
    assert Image.open(tmp_path / "depth.jpg").format == "JPEG"
    assert (tmp_path / "depth.u8").stat().st_size == 640 * 480
    assert Image.open(tmp_path / "seg.png").mode == "P"
    assert "people" in json.loads((tmp_path / "pose.json").read_text())
    assert (tmp_path / "depth.f32").stat().st_size == 640 * 480 * 4
    both = (tmp_path / "maps.multipart").read_bytes()
    assert both.count(b'Content-Disposition: inline; name="depth"') == 1 and b'name="pose"' in both
