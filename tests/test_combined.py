"""Several capabilities of one frame in one request (``/infer/depth+pose``), and stateless depth smoothing."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.nodes import (
    GatedBackend,
    WrappedBackend,
    assert_error,
    frame,
    image,
    metadata,
    metric,
    node_client,
    parts,
    post,
    raw_type,
)
from vision_node.capabilities.depth import range_to_use
from vision_node.errors import StartupError
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend


def raw_post(client, path, f, **options):
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return client.post(f"{path}?{query}" if query else path, content=f.tobytes(), headers={"content-type": raw_type(f)})


def test_one_upload_answers_each_capability_as_its_own_request_would(client):
    f = frame(120, 160)
    r = raw_post(
        client,
        "/infer/depth+pose+segmentation",
        f,
        **{"depth.output": "raw", "pose.person_threshold": 0, "segmentation.output": "classes"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/mixed; boundary=")
    got = parts(r)
    assert [(name, media) for name, media, _, _ in got] == [
        ("depth", "application/octet-stream"),
        ("pose", "application/json"),
        ("segmentation", "image/png"),
    ]
    summary = metadata(r)
    assert summary["capabilities"] == ["depth", "pose", "segmentation"] and summary["frame"] == [120, 160]
    assert set(summary["timings_ms"]) == {"read", "decode", "total"}
    alone = {
        "depth": raw_post(client, "/infer/depth/raw", f),
        "pose": raw_post(client, "/infer/pose", f, person_threshold=0),
        "segmentation": raw_post(client, "/infer/segmentation/classes", f),
    }
    for name, _, meta, body in got:
        single = alone[name]
        assert meta["capability"] == name and meta["output"] == metadata(single)["output"]
        if name == "segmentation":
            np.testing.assert_array_equal(np.asarray(image(single)), np.asarray(_image(body)))
        else:
            assert body == single.content, name  # the same bytes as the request on its own


def _image(body: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(body))


def test_each_option_names_its_capability(client):
    f = frame(96, 96)
    r = raw_post(client, "/infer/depth+segmentation", f, output="raw")
    assert_error(r, 400, "bad_request", "each option names its capability", "depth.output")
    assert_error(
        raw_post(client, "/infer/depth+segmentation", f, **{"pose.output": "json"}),
        400,
        "bad_request",
        "'pose.output'",
        "combines depth, segmentation",
    )
    assert_error(
        raw_post(client, "/infer/depth+segmentation", f, **{"depth.bogus": "1"}),
        400,
        "bad_request",
        "depth: unknown option bogus",
    )
    assert_error(
        raw_post(client, "/infer/depth+segmentation", f, **{"segmentation.output": "json"}),
        400,
        "bad_request",
        "segmentation: option output='json'",
    )
    assert_error(raw_post(client, "/infer/depth+segmentation/raw", f), 400, "bad_request", "depth.output=raw")
    assert_error(raw_post(client, "/infer/depth+depth", f), 400, "bad_request", "named twice")
    assert_error(raw_post(client, "/infer/depth+flow", f), 404, "not_found", "flow")
    ok = raw_post(client, "/infer/segmentation+depth", f, **{"depth.output": "png16", "segmentation.output": "raw"})
    assert ok.status_code == 200 and [p[0] for p in parts(ok)] == ["segmentation", "depth"]  # the order named


def test_a_frame_outside_any_capabilitys_bounds_and_a_bad_body_are_refused_once(client):
    assert_error(raw_post(client, "/infer/depth+pose", frame(32, 32)), 422, "unprocessable_frame")
    bad = client.post("/infer/depth+pose", content=b"not a jpeg", headers={"content-type": "image/jpeg"})
    assert_error(bad, 400, "bad_request", "not a JPEG")


def test_a_combination_of_a_capability_not_served_stops_the_start(tiny_build):
    from vision_node.config import Config
    from vision_node.http.app import create_app
    from vision_node.serving import preflight

    config = Config(engines=tiny_build[0], capabilities=("depth",), combinations=("depth+pose",))
    with pytest.raises(StartupError, match="--combinations depth\\+pose: pose is not served here"):
        preflight.check(config)  # python -m vision_node serve
    with pytest.raises(StartupError, match="pose is not served here"), TestClient(create_app(config)):
        pass  # the app alone (the stream processor): its lifespan checks


def test_counted_and_timed_per_capability(client):
    counters = {
        "combination": ("vision_node_responses_total", {"route": "/infer/depth+segmentation", "status": "200"}),
        "other": ("vision_node_responses_total", {"route": "/infer/other", "status": "400"}),
        **{
            name: ("vision_node_stage_seconds_count", {"capability": name, "stage": "infer"})
            for name in ("depth", "segmentation", "pose")
        },
    }
    before = {key: metric(client, name, **labels) for key, (name, labels) in counters.items()}
    assert post(client, "/infer/depth+segmentation", frame()).status_code == 200
    assert raw_post(client, "/infer/depth+depth", frame()).status_code == 400  # route label stays bounded
    after = {key: metric(client, name, **labels) for key, (name, labels) in counters.items()}
    assert {key: after[key] - before[key] for key in counters} == {
        "combination": 1,
        "other": 1,
        "depth": 1,
        "segmentation": 1,
        "pose": 0,
    }


def gate_one(name: str, gate: threading.Event, fail: bool = False):
    """Real ONNX Runtime backends; ``name``'s held at ``gate`` (or failing after warm-up, with ``fail``)."""

    class Failing(WrappedBackend):
        warmed = False

        def infer(self, inputs, stop=None, owned=()):
            if self.warmed:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code (injected)")
            self.warmed = True
            return self.inner.infer(inputs, stop, owned)

    def for_capability(served):
        def open_graph(graph):
            inner = OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds)
            if served.name != name:
                return WrappedBackend(inner)
            return Failing(inner) if fail else GatedBackend(inner, gate)

        return open_graph

    return for_capability


def test_admitted_whole_or_refused_whole(tiny_build):
    """pose's queue full: depth+pose is 503 and nothing of it reaches depth."""
    gate = threading.Event()
    gate.set()  # warm-up passes
    with node_client(tiny_build[0], gate_one("pose", gate), queue_size=1) as c:
        gate.clear()
        f = frame(96, 96)
        held = [threading.Thread(target=post, args=(c, "/infer/pose", f)) for _ in range(2)]  # running + 1 waiting
        for t in held:
            t.start()
        node = c.app.state.node
        deadline = time.monotonic() + 10
        while node.sessions["pose"].pending < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = post(c, "/infer/depth+pose", f)
        assert_error(r, 503, "overloaded", "pose")
        assert r.headers["retry-after"] and node.sessions["depth"].pending == 0  # depth was never given the frame
        gate.set()
        for t in held:
            t.join()
        assert post(c, "/infer/depth+pose", f).status_code == 200


def test_a_part_that_fails_fails_the_request_naming_it(tiny_build, caplog):
    """The client gets the capability and an incident id; the backend's own text stays in the node's log."""
    with node_client(tiny_build[0], gate_one("segmentation", threading.Event(), fail=True)) as c:
        r = post(c, "/infer/depth+segmentation", frame())
        body = assert_error(r, 500, "engine_error", "segmentation: the backend failed on this frame (incident ")
        assert "ONNXRuntimeError" not in body["detail"] and "injected" not in body["detail"]
        case = re.search(r"incident ([0-9a-f]{8})", body["detail"]).group(1)
        assert any(case in rec.getMessage() and rec.exc_info for rec in caplog.records)  # the details, logged
        assert post(c, "/infer/depth", frame()).status_code == 200


def test_the_deadline_covers_every_part(tiny_build):
    gate = threading.Event()
    gate.set()
    with node_client(tiny_build[0], gate_one("pose", gate), request_timeout_s=0.5) as c:
        gate.clear()
        try:
            assert_error(post(c, "/infer/depth+pose", frame()), 504, "deadline_exceeded", "pose")
        finally:
            gate.set()


# ---------------------------------------------------------------- depth smoothing, stateless


def test_range_to_use_is_per_frame_fixed_or_moved_towards_the_frame():
    assert range_to_use(None, None, [1.0, 5.0]) == (1.0, 5.0)
    assert range_to_use(None, 0.9, [1.0, 5.0]) == (1.0, 5.0)  # the first frame of a smoothed stream
    assert range_to_use((0.0, 10.0), None, [1.0, 5.0]) == (0.0, 10.0)  # fixed
    lo, hi = range_to_use((0.0, 10.0), 0.75, [1.0, 5.0])
    assert lo == pytest.approx(0.25) and hi == pytest.approx(8.75)


def test_smoothing_travels_with_the_requests_and_the_same_request_gets_the_same_answer(client):
    f = frame(96, 128)
    first = raw_post(client, "/infer/depth", f, smooth=0.8)
    frame_range = metadata(first)["frame_depth_range"]
    assert metadata(first)["depth_range"] == frame_range  # nothing to smooth with yet
    sent = [frame_range[0] - 1.0, frame_range[1] + 1.0]
    options = {"smooth": 0.8, "range": f"{sent[0]},{sent[1]}"}
    second = raw_post(client, "/infer/depth", f, **options)
    want = [0.8 * s + 0.2 * r for s, r in zip(sent, frame_range)]
    assert metadata(second)["depth_range"] == pytest.approx(want)
    again = raw_post(client, "/infer/depth", f, **options)  # a retry, or another node: no state in between
    assert again.content == second.content and metadata(again)["depth_range"] == metadata(second)["depth_range"]
    fixed = raw_post(client, "/infer/depth", f, range=f"{sent[0]},{sent[1]}")
    assert metadata(fixed)["depth_range"] == pytest.approx(sent)  # range alone stays a fixed range
    assert_error(raw_post(client, "/infer/depth", f, smooth=1), 400, "bad_request", "smooth")
