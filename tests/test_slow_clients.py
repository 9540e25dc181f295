"""Slow clients and oversized heads against a real node process (vision_node/http/server.py's guarded protocol).

200 sockets trickling a byte a second cannot hold the node: each is answered 408 (or, having
sent nothing, closed) by the receive deadline, while normal requests beside them succeed.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from benchmarks.slowclients import Trickler
from tests.nodes import ROOT, frame, raw_type, start_node, stop, wait_for_http

DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def node(tiny_build, tmp_path_factory):
    log = tmp_path_factory.mktemp("slow") / "node.log"
    proc, url = start_node(
        tiny_build[0], log, VISION_NODE_RECEIVE_TIMEOUT_S=str(DEADLINE_S), VISION_NODE_CAPABILITIES="segmentation"
    )
    try:
        wait_for_http(f"{url}/ready", proc, log)
        yield url, int(url.rsplit(":", 1)[1])
    finally:
        assert stop(proc) == 0, log.read_text()


def test_200_trickling_sockets_are_closed_by_the_deadline_while_normal_requests_succeed(node):
    url, port = node
    f = frame(128, 128)
    with Trickler(port, count=200) as trickler, httpx.Client(base_url=url, timeout=10) as client:
        statuses = []
        while trickler.open_count and time.monotonic() - trickler.sockets[0].opened < DEADLINE_S + 5:
            r = client.post("/infer/segmentation/classes", content=f.tobytes(), headers={"content-type": raw_type(f)})
            statuses.append(r.status_code)
        time.sleep(0.2)
    held = [s.closed - s.opened if s.closed else None for s in trickler.sockets]
    late = [(s.kind, h) for s, h in zip(trickler.sockets, held) if h is None or h > DEADLINE_S + 1.0]
    print(
        f"\n200 slow sockets: held {min(held):.2f}-{max(h for h in held if h):.2f} s; {len(statuses)} normal requests"
    )
    assert not late, late
    assert statuses and set(statuses) == {200}
    by_kind = {
        kind: {s.status for s in trickler.sockets if s.kind == kind} for kind in ("idle", "line", "headers", "body")
    }
    assert by_kind == {"idle": {None}, "line": {408}, "headers": {408}, "body": {408}}, by_kind
    body = next(s for s in trickler.sockets if s.kind == "body").received
    assert b'"error": "request_timeout"' in body and b"connection: close" in body
    metrics = httpx.get(f"{url}/metrics").text
    assert float(re.search(r'vision_node_refused_connections_total\{status="408"\} (\S+)', metrics).group(1)) >= 150


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 20000 + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(2000)),
    ],
    ids=["one 20 kB header", "2000 headers"],
)
def test_a_head_over_the_cap_is_431_json(node, head):
    _, port = node
    answer = _raw_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"error": "headers_too_large"' in answer


def test_a_long_url_is_431_and_a_head_under_the_cap_is_served(node):
    _, port = node
    answer = _raw_request(port, b"GET /health?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    ok = _raw_request(
        port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 15000 + b"\r\n\r\n"
    )
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]


def test_a_head_trickled_past_the_cap_is_431_before_it_ends(node):
    """httptools holds a header that is still arriving: the bytes read are counted, not only finished headers."""
    _, port = node
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(40):
                sock.sendall(b"a" * 1000)
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_the_guard_overrides_hooks_the_installed_uvicorn_has_and_the_version_is_capped():
    """server.GuardedHttpToolsProtocol subclasses uvicorn's httptools protocol, which is not public API: every hook
    it overrides must exist there, and pyproject caps uvicorn at the versions these tests passed on."""
    import inspect
    from importlib import metadata

    import tomllib
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from vision_node.http.server import GuardedHttpToolsProtocol

    overridden = [
        name
        for name, _ in inspect.getmembers(GuardedHttpToolsProtocol, inspect.isfunction)
        if name in GuardedHttpToolsProtocol.__dict__ and not name.startswith("_")
    ]
    assert overridden and all(hasattr(HttpToolsProtocol, name) for name in overridden), overridden
    spec = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("uvicorn")
    )
    cap = re.search(r"<\s*([\d.]+)", spec)
    assert cap, f"{spec}: no upper bound"
    installed = tuple(int(p) for p in metadata.version("uvicorn").split(".")[:2])
    assert installed < tuple(int(p) for p in cap.group(1).split("."))
