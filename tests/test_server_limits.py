"""The node's limits and errors through TestClient: bad options, routes, media types, sizes, bombs,
body limits, a full queue and deadlines (real ONNX Runtime sessions; a gate holds frames in flight)."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.nodes import (
    assert_error,
    frame,
    gated,
    in_process_backends,
    jpeg,
    metadata,
    node_client,
    png,
    post,
    raw_type,
)


@pytest.mark.parametrize(
    "path, params, words",
    [
        ("/infer/depth?output=webp", {}, ["output", "controlnet, png16, jpeg, raw8, raw"]),
        ("/infer/depth", {"channels": 2}, ["channels"]),
        ("/infer/depth", {"range": "5,1"}, ["range", "lo < hi"]),
        ("/infer/depth", {"range": "nan,1"}, ["range"]),
        ("/infer/depth", {"colour": "red"}, ["unknown option colour", "channels, output, quality, range"]),
        ("/infer/depth/raw?output=png16", {}, ["output given twice"]),
        ("/infer/depth?channels=1&channels=3", {}, ["repeated in the query"]),
        ("/infer/pose", {"person_threshold": "2"}, ["person_threshold", "0..1"]),
        ("/infer/pose", {"keypoint_threshold": "x"}, ["keypoint_threshold"]),
    ],
)
def test_bad_options_are_400_naming_the_option(client, path, params, words):
    assert_error(post(client, path, frame(), **params), 400, "bad_request", *words)


def test_unknown_capability_and_routes_are_404_json(client):
    assert_error(post(client, "/infer/optical-flow", frame()), 404, "not_found", "optical-flow", "depth")
    r = client.get("/admin")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/infer/depth")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("media", ["image/gif", "image/webp", "multipart/form-data; boundary=x", ""])
def test_unsupported_media_types_are_415(client, media):
    headers = {"content-type": media} if media else {}
    assert_error(client.post("/infer/depth", content=png(frame()), headers=headers), 415, "unsupported_media_type")


def test_raw_frame_needs_dimensions_and_the_exact_length(client):
    f = frame()
    r = client.post("/infer/depth", content=f.tobytes(), headers={"content-type": "application/octet-stream"})
    assert_error(r, 400, "bad_request", "width= and height=")
    r = client.post("/infer/depth", content=f.tobytes()[:-1], headers={"content-type": raw_type(f)})
    assert_error(r, 400, "bad_request", "57600 bytes", "57599")
    r = client.post("/infer/depth", content=f.tobytes(), headers={"content-type": raw_type(f, extra=1)})
    assert r.status_code == 400
    r = client.post("/infer/depth", content=f.tobytes(), headers={"content-type": "application/octet-stream; width=a"})
    assert r.status_code == 400


@pytest.mark.parametrize("h, w", [(63, 160), (120, 1281), (0, 100), (-5, 100), (10**9, 10**9)])
def test_raw_dimensions_outside_the_bounds_are_422(client, h, w):
    r = client.post(
        "/infer/depth",
        content=b"\0" * 300,
        headers={"content-type": f"application/octet-stream; width={w}; height={h}"},
    )
    assert_error(r, 422, "unprocessable_frame", "outside the graph's bounds")


def test_image_dimensions_outside_the_bounds_are_422(client):
    assert_error(post(client, "/infer/depth", frame(64, 1300), kind="png"), 422, "unprocessable_frame")
    assert_error(post(client, "/infer/depth", frame(40, 100), kind="jpeg"), 422, "unprocessable_frame")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge image in its header (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(client):
    r = client.post("/infer/depth", content=png_header_only(50_000, 50_000), headers={"content-type": "image/png"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "body, media, words",
    [
        (png(frame()), "image/jpeg", ["not a JPEG"]),
        (jpeg(frame()), "image/png", ["not a PNG"]),
        (b"GIF89a" + b"\0" * 100, "image/png", ["not a PNG"]),
        (jpeg(frame())[:600], "image/jpeg", ["could not be decoded"]),
        (png(frame())[:200], "image/png", ["could not be decoded"]),
        (b"", "image/jpeg", ["not a JPEG"]),
    ],
)
def test_mislabelled_truncated_and_empty_images_are_400(client, body, media, words):
    assert_error(client.post("/infer/depth", content=body, headers={"content-type": media}), 400, "bad_request", *words)


def test_image_size_options_are_refused_for_images(client):
    r = client.post("/infer/depth?width=10", content=png(frame()), headers={"content-type": "image/png"})
    assert_error(r, 400, "bad_request", "raw frames")


def test_body_over_the_limit_is_413_by_length_and_while_streaming(tiny_build):
    limit = 64 * 64 * 3
    with node_client(tiny_build[0], max_body_bytes=limit) as c:
        assert post(c, "/infer/depth", frame(64, 64)).status_code == 200  # exactly the limit
        assert_error(post(c, "/infer/depth", frame(64, 65)), 413, "payload_too_large", str(limit))  # 192 bytes over
        big = frame(120, 160)

        def chunks():  # no Content-Length: chunked transfer
            for i in range(0, big.nbytes, 4096):
                yield big.tobytes()[i : i + 4096]

        r = c.post("/infer/depth", content=chunks(), headers={"content-type": raw_type(big)})
        assert_error(r, 413, "payload_too_large")


# ---------------------------------------------------------------- load and time


def test_full_queue_is_503_with_retry_after_and_accepted_requests_complete(tiny_build):
    gate = threading.Event()
    gate.set()  # warm-up passes
    with node_client(tiny_build[0], gated(gate), queue_size=2) as c:
        gate.clear()  # hold the next frames in flight
        f = frame()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, c, "/infer/segmentation/raw", f) for _ in range(8)]
            deadline = time.monotonic() + 10
            while sum(fu.done() for fu in futures) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            rejected = [fu.result() for fu in futures if fu.done()]
            assert c.get("/health").json() == {"status": "OK"}  # busy
            gate.set()
            results = [fu.result() for fu in futures]
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 3 + [503] * 5, statuses  # one running + two waiting; the rest refused
        for r in rejected:
            assert_error(r, 503, "overloaded", "queue size 2")
            assert r.headers["retry-after"] == "1"


def test_deadline_gives_504_and_the_next_request_succeeds(tiny_build):
    gate = threading.Event()
    gate.set()
    with node_client(tiny_build[0], gated(gate), request_timeout_s=0.3) as c:
        gate.clear()
        started = time.monotonic()
        r = post(c, "/infer/depth", frame())
        assert_error(r, 504, "deadline_exceeded")
        assert time.monotonic() - started < 2
        gate.set()
        assert post(c, "/infer/depth", frame()).status_code == 200


def test_waiting_frames_of_one_size_run_as_one_batch_with_the_results_of_single_frames(tiny_build):
    """--max-batch 4: what waits behind a running frame runs together when it has the same size."""
    gate, opened = threading.Event(), []
    gate.set()
    with (
        node_client(
            tiny_build[0],
            gated(gate, max_batch=4, opened=opened),
            capabilities=("segmentation",),
            max_batch=4,
            queue_size=8,
        ) as c,
        in_process_backends(tiny_build[0]) as single,
    ):
        backend = opened[0]
        backend.batches.clear()
        gate.clear()  # the first frame holds the worker; the rest wait
        frames = [frame(seed=i) for i in range(4)] + [frame(100, 140, seed=9)]
        with ThreadPoolExecutor(5) as pool:
            backend.waiting.clear()
            first = pool.submit(post, c, "/infer/segmentation/raw", frames[0])
            assert backend.waiting.wait(30)  # the worker holds the first frame
            rest = [pool.submit(post, c, "/infer/segmentation/raw", f) for f in frames[1:]]
            while _in_flight(c) < 5:
                time.sleep(0.01)
            gate.set()
            results = [first.result()] + [f.result() for f in rest]
        wanted = [single["segmentation"][0].infer({"frames": f[None]})["classes"][0].copy() for f in frames]
    assert backend.batches == [1, 3, 1], backend.batches  # the 120x160 frames together; the other alone
    assert [metadata(r)["batch"] for r in results] == [1, 3, 3, 3, 1]
    for want, r in zip(wanted, results):
        np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(want.shape), want)


def test_pose_frames_with_their_own_thresholds_run_as_one_batch_and_each_keeps_its_own_persons(tiny_build):
    """A batch's frames carry one person_threshold each into the graph: a frame keeps only its own persons."""
    gate, opened = threading.Event(), []
    gate.set()
    f = frame(seed=4)
    with (
        node_client(
            tiny_build[0], gated(gate, max_batch=4, opened=opened), capabilities=("pose",), max_batch=4, queue_size=8
        ) as c,
        in_process_backends(tiny_build[0]) as single,
    ):
        backend = opened[0]
        backend.batches.clear()
        gate.clear()
        thresholds = [0.0, 0.0, 1.0, 0.0]  # the first holds the worker; the other three run together
        with ThreadPoolExecutor(4) as pool:
            backend.waiting.clear()
            first = pool.submit(post, c, "/infer/pose", f, person_threshold=thresholds[0])
            assert backend.waiting.wait(30)
            rest = [pool.submit(post, c, "/infer/pose", f, person_threshold=t) for t in thresholds[1:]]
            while _in_flight(c) < 4:
                time.sleep(0.01)
            gate.set()
            results = [first.result()] + [r.result() for r in rest]
        pose = single["pose"][0]
        alone = {}
        for t in set(thresholds):
            outputs = pose.infer({"frames": f[None], "person_threshold": np.array([t], np.float32)})
            alone[t] = {k: v.copy() for k, v in outputs.items()}
    assert backend.batches == [1, 3], backend.batches
    for t, r in zip(thresholds, results):
        assert r.status_code == 200, r.text
        people, want = r.json()["people"], alone[t]
        kept = want["box_scores"][0] >= t
        assert len(people) == int(kept.sum()) and (t < 1.0) == bool(people), (t, len(people))
        for person, points, scores in zip(people, want["keypoints"][0][kept], want["keypoint_scores"][0][kept]):
            np.testing.assert_allclose(np.asarray(person["keypoints"])[:, :2], points, atol=2e-3)
            np.testing.assert_allclose(np.asarray(person["keypoints"])[:, 2], scores, atol=2e-3)


def _in_flight(client) -> float:
    metrics = client.get("/metrics").text
    return float(next(line for line in metrics.splitlines() if line.startswith("vision_node_in_flight{")).split()[-1])


def test_a_worker_thread_that_stops_fails_the_node_instead_of_leaving_requests_waiting(tiny_build):
    with node_client(tiny_build[0], capabilities=("segmentation",), request_timeout_s=1.0) as c:
        session = c.app.state.node.sessions["segmentation"]

        def broken_take():
            raise RuntimeError("a bug in the queue")

        session._take = broken_take  # stands for any bug in the worker's loop
        assert_error(post(c, "/infer/segmentation/raw", frame()), 504, "deadline_exceeded")
        body = assert_error(c.get("/ready"), 503, "not_ready", "worker thread stopped", "a bug in the queue")
        assert c.get("/health").json() == {"status": "ERROR"}, body
