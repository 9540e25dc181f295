"""SIGTERM on a real node process under load: ``/ready`` 503 at once, unregistered, everything accepted completes.

A steady stream (a request on a new connection every 25 ms, each in its own thread) and 50
requests in flight, on a real node whose frames take 50 ms more (``tests/faulty_node.py``: a
slower device, so that 50 are in flight at once whatever this machine's speed). The node keeps
serving for ``--drain-delay-s`` after unregistering, then closes its listener: a request after
that is refused at connect (never accepted), and every request the node accepted is answered 200.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import SimpleNamespace

import httpx

from tests.nodes import frame, free_port, raw_type, start_node, stop
from tests.orchestrator_double import OrchestratorDouble
from tests.test_byoc import wait_for

SECRET = "drain-secret"
F = frame(128, 128)
BODY, MEDIA = F.tobytes(), raw_type(F)
IN_FLIGHT = 50


def _post(port: int):
    """(outcome, time.monotonic() and time.time() when it ended); outcome: an HTTP status, "refused" at
    connect (never accepted) or "lost" (the connection was reset without an answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # light: the clients share 2 cores with the node
    try:
        conn.connect()
        conn.request("POST", "/infer/segmentation/classes", body=BODY, headers={"Content-Type": MEDIA})
        response = conn.getresponse()
        response.read()
        outcome = response.status
    except ConnectionRefusedError:
        outcome = "refused"
    except (OSError, http.client.HTTPException):
        outcome = "lost"
    finally:
        conn.close()
    return outcome, time.monotonic(), time.time()


def _logged_at(log: str, text: str) -> float:
    """time.time() of the node's first log line containing ``text`` (its logging format: asctime first)."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r'vision_node_in_flight\{capability="segmentation"\} (\S+)', text).group(1))


def _start_node(tiny_build, tmp_path, double: OrchestratorDouble):
    """(process, URL, port) of a segmentation node 50 ms slower a frame, registered with ``double``."""
    port = free_port()
    control = tmp_path / "fault"
    control.write_text("slow 0.05")
    proc, url = start_node(
        tiny_build[0],
        tmp_path / "node.log",
        str(control),
        module="tests.faulty_node",
        VISION_NODE_PORT=port,
        VISION_NODE_CAPABILITIES="segmentation",
        VISION_NODE_ORCHESTRATOR_URL=double.url,
        VISION_NODE_ORCHESTRATOR_SECRET=SECRET,
        VISION_NODE_NODE_URL=f"http://127.0.0.1:{port}",
        VISION_NODE_QUEUE_SIZE="500",
        VISION_NODE_REQUEST_TIMEOUT_S="120",
        VISION_NODE_DRAIN_DELAY_S="1",
    )
    return proc, url, port


def _sigterm_under_load(proc, url: str, port: int) -> SimpleNamespace:
    """SIGTERM once ``IN_FLIGHT`` requests are in flight beside the steady stream; what followed."""
    seen = SimpleNamespace(stream=[])  # stream: (sent at, outcome, ended at, ended wall clock)
    stopping = threading.Event()

    def one():
        sent = time.monotonic()
        seen.stream.append((sent, *_post(port)))

    with ThreadPoolExecutor(IN_FLIGHT + 200) as pool:
        burst = [pool.submit(_post, port) for _ in range(IN_FLIGHT)]

        def steady():
            while not stopping.is_set():
                pool.submit(one)
                time.sleep(0.025)

        streamer = threading.Thread(target=steady)
        streamer.start()
        wait_for(lambda: _in_flight(url) >= IN_FLIGHT, what="50 requests in flight")
        seen.sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # new, as a balancer's probe
        probe.request("GET", "/ready")
        seen.ready = probe.getresponse()
        seen.ready_body = json.loads(seen.ready.read())
        seen.ready_after = time.monotonic() - seen.sigterm
        seen.code = proc.wait(60)
        seen.exited_after = time.monotonic() - seen.sigterm
        stopping.set()
        streamer.join()
        seen.burst = [f.result() for f in burst]
    return seen


def test_sigterm_drains_in_flight_and_a_steady_stream_then_exits_0(tiny_build, tmp_path):
    log = tmp_path / "node.log"
    with OrchestratorDouble(SECRET) as double:
        proc, url, port = _start_node(tiny_build, tmp_path, double)
        try:
            wait_for(lambda: "segmentation" in double.registry, what=f"registration\n{log.read_text()}")
            seen = _sigterm_under_load(proc, url, port)
        finally:
            if proc.poll() is None:
                stop(proc)
        sigterm, stream, burst = seen.sigterm, seen.stream, seen.burst
        unregistered_after = double.unregistered_at[0] - sigterm if double.unregistered_at else None

    text = log.read_text()
    assert seen.code == 0, text
    assert seen.ready.status == 503 and seen.ready_body["detail"] == "shutting down"
    assert sorted(double.unregistered) == ["segmentation", "segmentation-live"] and not double.registry
    assert [status for status, *_ in burst] == [200] * IN_FLIGHT, text
    last_answer = max(at for _, at, _ in burst) - sigterm
    assert unregistered_after < last_answer  # the orchestrator is told before the node stops answering
    after = [outcome for sent, outcome, *_ in stream if sent > sigterm]
    answered = [o for o in after if o not in ("refused", "lost")]
    assert set(o for _, o, *_ in stream) <= {200, "refused", "lost"}, stream  # no error answers
    assert answered, "the drain delay should have kept serving the stream"
    # Nothing the node accepted was lost: it cut no request short, and the only resets are of connections
    # the kernel completed in the instant the listener closed, before the node could accept them.
    assert "timeout graceful shutdown exceeded" not in text
    closed = _logged_at(text, "Shutting down")  # uvicorn closes its listener right after this line
    lost = [ended for _, outcome, _, ended in stream if outcome == "lost"]
    assert all(abs(ended - closed) < 0.3 for ended in lost) and len(lost) <= 2, (closed, lost)
    print(
        f"\nSIGTERM: /ready 503 after {seen.ready_after * 1000:.1f} ms; unregistered after "
        f"{unregistered_after * 1000:.0f} ms; {IN_FLIGHT}/{IN_FLIGHT} in flight answered 200 (last after "
        f"{last_answer:.2f} s); stream after SIGTERM: {len(answered)} accepted, all 200, "
        f"{after.count('refused')} refused at connect, {len(lost)} reset as the listener closed; "
        f"exit 0 after {seen.exited_after:.2f} s"
    )
