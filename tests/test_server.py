"""The node's routes through Starlette's TestClient, with the lifespan running and real ONNX Runtime sessions."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.nodes import (
    assert_error,
    frame,
    gated,
    image,
    in_process_backends,
    jpeg,
    metadata,
    node_client,
    post,
)
from vision_node.capabilities.pose import COLOURS
from vision_node.capabilities.segmentation import ADE20K_PALETTE
from vision_node.contract import FRAME_INPUT


@pytest.fixture(scope="module")
def backends(tiny_build):
    with in_process_backends(tiny_build[0]) as opened:
        yield {name: backend for name, (backend, _) in opened.items()}


def run(backend, f):
    return {k: v.copy() for k, v in backend.infer({FRAME_INPUT: f[None]}).items()}


# ---------------------------------------------------------------- health, readiness, capabilities, metrics


def test_ready_and_health_report_warm_node(client):
    assert client.get("/ready").json() == {"ready": True, "capabilities": ["depth", "segmentation", "pose"]}
    assert client.get("/health").json() == {"status": "IDLE"}


def test_not_ready_and_loading_until_warm_up_finishes(tiny_build):
    gate = threading.Event()  # warm-up inference blocks until set
    with node_client(tiny_build[0], gated(gate), wait=False) as c:
        for _ in range(3):
            assert c.get("/health").json() == {"status": "LOADING"}
            assert_error(c.get("/ready"), 503, "not_ready", "loading")
            assert_error(post(c, "/infer/depth", frame()), 503, "not_ready")
            time.sleep(0.05)
        gate.set()
        deadline = time.monotonic() + 30
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.get("/health").json() == {"status": "IDLE"}
        assert post(c, "/infer/depth", frame()).status_code == 200


def test_capabilities_describe_models_backend_and_limits(client):
    body = client.get("/capabilities").json()
    assert body["limits"]["max_body_bytes"] == 32 << 20
    assert set(body["capabilities"]) == {"depth", "segmentation", "pose"}
    depth = body["capabilities"]["depth"]
    assert depth["models"][0]["name"] == "depth-anything-v2-small-tiny"
    assert depth["models"][0]["licence"] == "apache-2.0"
    assert depth["weights"] == "demo" and depth["demo"] is True
    assert depth["backend"]["name"] == "onnxruntime"
    assert depth["backend"]["device"] == "CPUExecutionProvider"
    assert depth["backend"]["memory_bytes"]["host_buffers"] > 0
    assert depth["outputs"] == ["controlnet", "png16", "jpeg", "raw8", "raw"]
    assert depth["frame_bounds"] == {"min_hw": [64, 64], "max_hw": [720, 1280]}
    assert depth["verification"]["passed"] == depth["verification"]["checks"] > 0
    assert [m["role"] for m in body["capabilities"]["pose"]["models"]] == ["detector", "pose"]
    assert "/" not in depth["graphs"][0]["file"]  # no local paths leak


def test_metrics_count_stages_statuses_queue_and_memory(client):
    post(client, "/infer/segmentation", frame())
    client.post("/infer/segmentation", content=b"x", headers={"content-type": "image/gif"})
    text = client.get("/metrics").text
    for stage in ("read", "decode", "queue", "infer", "render", "encode", "total"):
        assert f'vision_node_stage_seconds_count{{capability="segmentation",stage="{stage}"}}' in text
    assert 'vision_node_responses_total{route="/infer/segmentation",status="200"}' in text
    assert 'vision_node_responses_total{route="/infer/segmentation",status="415"}' in text
    assert 'vision_node_queue_depth{capability="pose"} 0.0' in text
    assert 'vision_node_in_flight{capability="depth"} 0.0' in text
    assert "vision_node_ready 1.0" in text
    assert 'vision_node_backend_memory_bytes{capability="depth",kind="host_buffers"}' in text
    assert "process_resident_memory_bytes" in text


# ---------------------------------------------------------------- depth outputs


def test_depth_raw_equals_the_in_process_backend(client, backends):
    f = frame(130, 170)
    r = post(client, "/infer/depth/raw", f)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    meta = metadata(r)
    assert meta["dtype"] == "float32" and meta["shape"] == [130, 170]
    got = np.frombuffer(r.content, "<f4").reshape(130, 170)
    want = run(backends["depth"], f)
    np.testing.assert_array_equal(got, want["depth"][0])
    assert meta["depth_range"] == [float(want["depth_min"][0]), float(want["depth_max"][0])]
    assert set(meta["timings_ms"]) == {"read", "decode", "queue", "infer", "render", "encode", "total"}
    assert meta["model"] == "depth-anything-v2-small-tiny" and meta["backend"] == "onnxruntime"
    assert meta["precision"] == "fp32"
    assert meta["weights"] == "demo" and meta["frame"] == [130, 170]


@pytest.mark.parametrize("channels", [1, 3])
def test_depth_controlnet_map_is_min_max_normalised_near_bright(client, backends, channels):
    f = frame()
    r = post(client, f"/infer/depth?channels={channels}", f)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = image(r)
    assert img.mode == ("L" if channels == 1 else "P") and img.size == (160, 120)  # P: a grey palette, RGB loaded
    got = np.asarray(img.convert("L" if channels == 1 else "RGB")).astype(int)
    depth = run(backends["depth"], f)["depth"][0]
    want = np.floor(np.clip((depth - depth.min()) / (depth.max() - depth.min()), 0, 1) * 255 + 0.5)
    if channels == 3:
        assert (got == got[..., :1]).all()
        got = got[..., 0]
    assert np.abs(got - want).max() <= 1  # float32 rounding at .5 boundaries
    assert got[depth == depth.max()].min() == 255 and got[depth == depth.min()].max() == 0  # near = bright


def test_depth_fixed_range_clips_and_is_echoed(client, backends):
    f = frame()
    depth = run(backends["depth"], f)["depth"][0]
    lo, hi = float(np.percentile(depth, 25)), float(np.percentile(depth, 75))
    r = post(client, "/infer/depth/png16", f, range=f"{lo},{hi}")
    assert r.status_code == 200
    assert metadata(r)["depth_range"] == [lo, hi]
    img = image(r)
    got = np.asarray(img).astype(np.int64)
    assert img.mode.startswith("I") and got.max() == 65535 and got.min() == 0
    assert (got[depth >= hi] == 65535).all() and (got[depth <= lo] == 0).all()
    want = np.floor(np.clip((depth - lo) / (hi - lo), 0, 1) * 65535 + 0.5)
    assert np.abs(got - want).max() <= 2


# ---------------------------------------------------------------- segmentation outputs


def test_segmentation_outputs_agree_with_each_other_and_the_backend(client, backends):
    f = frame()
    want = run(backends["segmentation"], f)["classes"][0]
    raw = post(client, "/infer/segmentation/raw", f)
    assert metadata(raw)["dtype"] == "uint8" and metadata(raw)["shape"] == [120, 160]
    np.testing.assert_array_equal(np.frombuffer(raw.content, np.uint8).reshape(120, 160), want)
    ids = image(post(client, "/infer/segmentation/classes", f))
    assert ids.mode == "L"
    np.testing.assert_array_equal(np.asarray(ids), want)
    palette = image(post(client, "/infer/segmentation", f))  # the default: ADE20K palette
    assert palette.mode == "P"
    np.testing.assert_array_equal(np.asarray(palette), want)
    rgb = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(rgb, np.array(ADE20K_PALETTE, np.uint8)[want])


# ---------------------------------------------------------------- pose outputs


def test_pose_json_holds_coco17_and_openpose18_of_the_backend_output(client, backends):
    f = frame(160, 200)
    r = post(client, "/infer/pose", f, person_threshold=0)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    want = run(backends["pose"], f)
    k = want["boxes"].shape[1]
    assert body["canvas_width"] == 200 and body["canvas_height"] == 160
    assert len(body["people"]) == k == metadata(r)["persons"]
    for person, box, score, kps, kscores in zip(
        body["people"], want["boxes"][0], want["box_scores"][0], want["keypoints"][0], want["keypoint_scores"][0]
    ):
        np.testing.assert_allclose(person["box"], box, atol=0.01)
        assert person["score"] == pytest.approx(score, abs=1e-4)
        coco = np.array(person["keypoints"])
        assert coco.shape == (17, 3)
        np.testing.assert_allclose(coco[:, :2], kps, atol=1e-3)
        np.testing.assert_allclose(coco[:, 2], kscores, atol=1e-3)
        openpose = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
        neck_score = kscores[5:7].min()
        if neck_score >= 0.3:
            np.testing.assert_allclose(openpose[1, :2], kps[5:7].mean(0), atol=2e-3)
        else:
            assert (openpose[1] == 0).all()


def test_pose_person_threshold_filters_people(client):
    f = frame(160, 200)
    everyone = post(client, "/infer/pose", f, person_threshold=0).json()["people"]
    scores = sorted(p["score"] for p in everyone)
    cut = (scores[0] + scores[-1]) / 2
    kept = post(client, f"/infer/pose?person_threshold={cut}", f).json()["people"]
    assert len(kept) == sum(s >= cut - 1e-4 for s in scores) and all(p["score"] >= cut - 1e-4 for p in kept)
    assert post(client, "/infer/pose?person_threshold=1", f).json()["people"] == []


def test_pose_skeleton_png_is_frame_sized_openpose_drawing(client):
    f = frame(160, 200)
    r = post(client, "/infer/pose/skeleton", f, person_threshold=0, keypoint_threshold=0)
    img = image(r)
    assert r.status_code == 200 and img.mode == "P" and img.size == (200, 160)
    img = img.convert("RGB")
    people = post(client, "/infer/pose", f, person_threshold=0, keypoint_threshold=0).json()["people"]
    colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3)}
    drawn_keypoints = {COLOURS[j] for j in range(18)} & colours
    assert people and drawn_keypoints  # keypoint discs in the OpenPose colours
    empty = image(post(client, "/infer/pose/skeleton?person_threshold=1", f))
    assert not np.asarray(empty).any()  # nobody: all black


# ---------------------------------------------------------------- inputs and options


@pytest.mark.parametrize("kind", ["raw", "png"])
def test_lossless_inputs_give_identical_results(client, kind):
    f = frame()
    base = post(client, "/infer/segmentation/raw", f).content
    assert post(client, "/infer/segmentation/raw", f, kind=kind).content == base


def test_jpeg_input_is_decoded_like_pillow(client, backends):
    f = frame()
    body = jpeg(f)
    decoded = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    r = client.post("/infer/segmentation/raw", content=body, headers={"content-type": "image/jpeg"})
    want = run(backends["segmentation"], decoded)["classes"][0]
    np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(want.shape), want)


def test_options_from_path_content_type_and_query_are_equivalent(client):
    f = frame()
    by_path = post(client, "/infer/depth/controlnet", f, channels=1).content
    by_type = post(client, "/infer/depth", f, output="controlnet", channels=1).content
    by_query = client.post(
        "/infer/depth?output=controlnet&channels=1&width=160&height=120",
        content=f.tobytes(),
        headers={"content-type": "application/octet-stream"},
    ).content
    assert by_path == by_type == by_query
    assert Image.open(io.BytesIO(by_path)).mode == "L"  # channels=1 took effect (3, the default, is indexed)
    assert post(client, "/infer/depth", f).content != by_path
