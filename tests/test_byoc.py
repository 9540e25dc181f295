"""Livepeer BYOC, through a test double of the orchestrator (tests/orchestrator_double.py).

A real node process registers with the double, is reached only the way go-livepeer forwards a
job (path, body, Content-Type, Bearer token), re-registers after the double "restarts", and
unregisters on SIGTERM.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.nodes import frame, free_port, jpeg, parts, raw_type, start_node, stop
from tests.orchestrator_double import OrchestratorDouble, livepeer_header

SECRET, TOKEN = "orch-secret", "node-token"


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def registered(tiny_build, tmp_path_factory):
    """(double, node process, node URL, log path) with the node registered."""
    log = tmp_path_factory.mktemp("byoc") / "node.log"
    with OrchestratorDouble(SECRET) as double:
        port = free_port()  # known before the start: the node registers its own URL
        proc, url = start_node(
            tiny_build[0],
            log,
            VISION_NODE_PORT=port,
            VISION_NODE_ORCHESTRATOR_URL=double.url,
            VISION_NODE_ORCHESTRATOR_SECRET=SECRET,
            VISION_NODE_NODE_URL=f"http://127.0.0.1:{port}",
            VISION_NODE_TOKEN=TOKEN,
            VISION_NODE_CAPABILITY_NAMES="depth=vision-depth",
            VISION_NODE_REGISTER_INTERVAL_S="0.5",
            VISION_NODE_COMBINATIONS="depth+pose",
        )
        try:
            wait_for(lambda: len(double.registry) == 7, what=f"registration\n{log.read_text() if log.exists() else ''}")
            yield double, proc, url, log
        finally:
            if proc.poll() is None:
                stop(proc)


def test_each_capability_registers_with_go_livepeer_fields(registered):
    double, _, url, log = registered
    assert set(double.registry) == {
        "vision-depth",
        "segmentation",
        "pose",
        "depth+pose",
        "vision-depth-live",
        "segmentation-live",
        "pose-live",
    }
    body = double.registry["pose"]
    assert body == {
        "name": "pose",
        "description": "vision node: pose conditioning maps per frame",
        "url": url,
        "capacity": 5,  # 1 running + the default queue of 4: what the node takes before 503
        "price_per_unit": 0,
        "price_scaling": 1,
        "currency": "wei",
        "token": TOKEN,
    }
    assert "register vision-depth at" in log.read_text() and ": ok" in log.read_text()


def test_each_capability_registers_a_streaming_capability_whose_url_takes_go_livepeers_stream_calls(registered):
    double, _, url, _ = registered
    live = double.registry["vision-depth-live"]
    assert live["url"] == f"{url}/live/depth"  # go-livepeer calls {url}/stream/start ...
    assert live["capacity"] == 4  # --stream-capacity: streams, not requests
    assert live["description"] == "vision node: depth conditioning maps of live video" and live["token"] == TOKEN
    status = httpx.get(f"{live['url']}/stream/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status.status_code == 200 and status.json() == {"capability": "depth", "capacity": 4, "streams": []}


def test_re_registers_after_the_orchestrator_restarts(registered):
    double, *_ = registered
    double.restart()
    assert not double.registry
    wait_for(lambda: len(double.registry) == 7, timeout=10, what="re-registration")


@pytest.mark.parametrize(
    "route, content_type, kind, expect",
    [
        ("infer/vision-depth", "image/jpeg", "jpeg", "image/png"),
        ("infer/depth/png16", "image/jpeg", "jpeg", "image/png"),
        ("infer/depth", "RAW; output=raw", "raw", "application/octet-stream"),
        ("infer/segmentation", "image/jpeg", "jpeg", "image/png"),
        ("infer/segmentation/classes", "image/jpeg", "jpeg", "image/png"),
        ("infer/segmentation", "RAW; output=raw", "raw", "application/octet-stream"),
        ("infer/pose", "image/jpeg; person_threshold=0", "jpeg", "application/json"),
        ("infer/pose/skeleton", "RAW; keypoint_threshold=0.2", "raw", "image/png"),
    ],
)
def test_every_capability_and_output_works_with_only_what_the_orchestrator_forwards(
    registered, route, content_type, kind, expect
):
    double, *_ = registered
    f = frame(120, 160)
    body = jpeg(f) if kind == "jpeg" else f.tobytes()
    if content_type.startswith("RAW"):
        content_type = raw_type(f) + content_type[3:]
    capability = route.split("/")[1]
    route = route.replace("vision-depth", "depth")
    name = "vision-depth" if capability in ("vision-depth", "depth") else capability
    r = httpx.post(
        f"{double.url}/process/request/{route}?output=ignored&width=1",  # the orchestrator drops the query
        content=body,
        headers={"Content-Type": content_type, "Livepeer": livepeer_header(name), "X-Forwarded-Junk": "1"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(expect)
    assert json.loads(r.headers["x-metadata"])["capability"] == capability.replace("vision-", "")
    assert set(double.forwarded_headers[-1]) == {"content-type", "authorization"}


def test_a_combination_is_a_capability_of_its_own_through_the_orchestrator(registered):
    double, *_ = registered
    f = frame(120, 160)
    r = httpx.post(
        f"{double.url}/process/request/infer/depth+pose",
        content=f.tobytes(),
        headers={
            "Content-Type": raw_type(f) + "; depth.output=raw; pose.person_threshold=0",
            "Livepeer": livepeer_header("depth+pose"),
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert [(name, media) for name, media, _, _ in parts(r)] == [
        ("depth", "application/octet-stream"),
        ("pose", "application/json"),
    ]
    assert json.loads(r.headers["x-metadata"])["capabilities"] == ["depth", "pose"]


def test_infer_without_the_token_is_403_never_401(registered):
    _, _, url, _ = registered
    f = frame(120, 160)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{url}/infer/depth", content=f.tobytes(), headers={"Content-Type": raw_type(f), **headers})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert httpx.get(f"{url}/health").status_code == 200  # probes stay open


def test_unregisters_every_capability_on_sigterm(registered):
    double, proc, _, log = registered
    assert stop(proc) == 0
    assert set(double.unregistered) >= {"vision-depth", "segmentation", "pose", "depth+pose", "vision-depth-live"}
    assert not double.registry
    assert "unregister pose at" in log.read_text()


def test_a_wrong_secret_is_logged_and_retried_with_backoff(tiny_build, tmp_path):
    with OrchestratorDouble(SECRET) as double:
        proc, url = start_node(
            tiny_build[0],
            tmp_path / "log",
            VISION_NODE_ORCHESTRATOR_URL=double.url,
            VISION_NODE_ORCHESTRATOR_SECRET="wrong",
            VISION_NODE_NODE_URL="http://127.0.0.1:1",
            VISION_NODE_CAPABILITIES="segmentation",
        )
        try:
            wait_for(lambda: double.rejected >= 2, what="a retry")
            text = (tmp_path / "log").read_text()
            assert "HTTP 400" in text and "wrong orchestrator secret" in text and not double.registry
        finally:
            stop(proc)
