"""Backend faults in a real node process (``tests/faulty_node.py`` injects them around real ONNX Runtime).

Out of memory fails only its request (503, retryable); a broken device or a hung inference makes
``/ready`` 503 and the process exit 1 within 5 s, for its supervisor to restart it.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.faulty_node import ERROR, ILLEGAL_ADDRESS, OOM
from tests.nodes import frame, raw_type, start_node, stop, wait_for_http
from vision_node.runtime import faults

F = frame(64, 64)
BODY, MEDIA = F.tobytes(), raw_type(F)


@pytest.fixture
def faulty(tiny_build, tmp_path):
    """(post one frame, control file, process, url, log): a warm fault-injecting node serving segmentation."""
    control, log = tmp_path / "fault", tmp_path / "node.log"
    proc, url = start_node(
        tiny_build[0],
        log,
        str(control),
        module="tests.faulty_node",
        VISION_NODE_CAPABILITIES="segmentation",
        VISION_NODE_HANG_TIMEOUT_S="1",
        VISION_NODE_REQUEST_TIMEOUT_S="3",
    )
    client = httpx.Client(base_url=url, timeout=30)
    try:
        wait_for_http(f"{url}/ready", proc, log)

        def post():
            return client.post("/infer/segmentation/classes", content=BODY, headers={"content-type": MEDIA})

        yield post, control, proc, client, log
    finally:
        client.close()
        if proc.poll() is None:
            stop(proc)


def _exit_seconds(proc, since: float) -> float:
    proc.wait(15)
    return time.monotonic() - since


def test_the_runtimes_failure_texts_are_classified():
    assert faults.classify(RuntimeError(OOM)) == faults.TRANSIENT
    assert faults.classify(MemoryError()) == faults.TRANSIENT
    assert faults.classify(RuntimeError(ILLEGAL_ADDRESS)) == faults.FATAL
    assert faults.classify(RuntimeError(ERROR)) == faults.FRAME
    wrapped = RuntimeError("execute_async_v3 failed")
    wrapped.__cause__ = RuntimeError("cuStreamSynchronize failed: unspecified launch failure")
    assert faults.classify(wrapped) == faults.FATAL  # read through the chain checked() builds


def test_out_of_memory_fails_only_that_request_and_the_next_100_succeed(faulty):
    post, control, proc, client, _ = faulty
    control.write_text("oom")
    r = post()
    assert r.status_code == 503 and r.json()["error"] == "backend_out_of_memory", r.text
    assert r.headers["retry-after"] == "1"
    statuses = [post().status_code for _ in range(100)]
    assert statuses == [200] * 100
    assert client.get("/ready").status_code == 200 and proc.poll() is None
    metrics = client.get("/metrics").text
    assert 'vision_node_backend_failures_total{capability="segmentation",kind="transient"} 1.0' in metrics


def test_a_frame_error_is_500_and_the_node_stays_ready(faulty):
    post, control, proc, client, _ = faulty
    control.write_text("error")
    r = post()
    assert r.status_code == 500 and r.json()["error"] == "engine_error", r.text
    assert post().status_code == 200
    assert client.get("/ready").status_code == 200 and proc.poll() is None


def test_a_broken_device_makes_the_node_unready_and_exit_1_within_5_s(faulty):
    post, control, proc, client, log = faulty
    control.write_text("illegal-address")
    r = post()
    failed_at = time.monotonic()
    assert r.status_code == 503 and r.json()["error"] == "backend_failed", r.text
    try:  # the listener may already be closed: then nobody can be routed here either
        ready = client.get("/ready")
        assert ready.status_code == 503 and "illegal memory access" in ready.json()["detail"]
    except httpx.TransportError:
        pass
    took = _exit_seconds(proc, failed_at)
    print(f"broken device: exit {proc.returncode} {took:.2f} s after the failed response")
    assert proc.returncode == 1 and took < 5, log.read_text()
    assert "exiting with status 1 so that its supervisor restarts it" in log.read_text()


def test_failures_in_a_row_count_as_a_broken_device(faulty):
    post, control, proc, _, log = faulty
    statuses = []
    for _ in range(3):  # --max-consecutive-failures 3 (the default)
        control.write_text("error")
        statuses.append(post().status_code)
    assert statuses == [500, 500, 503]
    assert _exit_seconds(proc, time.monotonic()) < 5 and proc.returncode == 1
    assert "3 failures in a row" in log.read_text()


def test_a_hung_inference_gets_504_then_the_node_exits_1(faulty):
    post, control, proc, _, log = faulty
    control.write_text("hang")
    started = time.monotonic()
    r = post()  # the request deadline (3 s) answers; the hang watch (1 s) has already failed the node
    assert r.status_code in (503, 504), r.text
    took = _exit_seconds(proc, started)
    print(f"hung inference: exit {proc.returncode} {took:.2f} s after the request")
    assert proc.returncode == 1 and took < 1 + 5, log.read_text()
    assert "has not returned" in log.read_text()
