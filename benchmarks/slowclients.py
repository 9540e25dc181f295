"""Slow clients (slowloris): sockets that trickle a request one byte a second, and what the node did to them.

Four kinds, in turn: ``idle`` (connects, sends nothing), ``line`` (the request line a byte at a
time), ``headers`` (a whole line, then headers a byte at a time) and ``body`` (a whole head with
Content-Length, then the body a byte at a time). One thread drives every socket; each records
when the node closed it and the status it answered, if any.

``python -m benchmarks slow-clients`` measures normal traffic's latency without and beside them.
"""

from __future__ import annotations

import selectors
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vision_node import samples

from . import load, nodeproc, report
from .overhead import bodies
from .report import progress
from .stats import summarise

KINDS = ("idle", "line", "headers", "body")


@dataclass
class SlowSocket:
    kind: str
    sock: socket.socket
    opened: float
    pending: bytes  # what is still to trickle
    closed: float | None = None
    status: int | None = None
    received: bytes = b""


def _script(kind: str, port: int, path: str) -> tuple[bytes, bytes]:
    """(sent at once, trickled) for one kind of slow client."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
    if kind == "idle":
        return b"", b""
    if kind == "line":
        return b"", head.encode() * 100
    if kind == "headers":
        return head.encode(), b"X-Slow: " + b"a" * 100000
    return (head + "Content-Length: 100000\r\n\r\n").encode(), b"\0" * 100000


@dataclass
class Trickler:
    """``count`` slow sockets against 127.0.0.1:``port``; ``reopen`` keeps ``count`` open (a sustained attack)."""

    port: int
    count: int = 200
    path: str = "/infer/segmentation"
    interval_s: float = 1.0
    reopen: bool = False
    sockets: list[SlowSocket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Trickler:
        self._selector = selectors.DefaultSelector()
        for i in range(self.count):
            self._open(KINDS[i % len(KINDS)])
        self._thread = threading.Thread(target=self._run, name="trickler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            if s.closed is None:
                s.sock.close()
        self._selector.close()

    def _open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        first, trickle = _script(kind, self.port, self.path)
        sock.sendall(first)
        sock.setblocking(False)
        slow = SlowSocket(kind, sock, time.monotonic(), trickle)
        self.sockets.append(slow)
        self._selector.register(sock, selectors.EVENT_READ, slow)

    @property
    def open_count(self) -> int:
        return sum(s.closed is None for s in self.sockets)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                self._read(key.data)
            if time.monotonic() >= next_tick:
                next_tick += self.interval_s
                for s in [s for s in self.sockets if s.closed is None and s.pending]:
                    try:
                        s.sock.send(s.pending[:1])
                        s.pending = s.pending[1:]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self._closed(s)

    def _read(self, s: SlowSocket) -> None:
        try:
            data = s.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            s.received += data
            return
        self._closed(s)

    def _closed(self, s: SlowSocket) -> None:
        s.closed = time.monotonic()
        if s.received.startswith(b"HTTP/1.1 "):
            s.status = int(s.received.split(b" ", 2)[1])
        self._selector.unregister(s.sock)
        s.sock.close()
        if self.reopen and not self._stop.is_set():
            self._open(s.kind)


def _normal(url: str, path: str, body: bytes, content_type: str, duration_s: float) -> list[float]:
    """Seconds per request of one keep-alive client, back to back, for ``duration_s`` (200s only)."""
    client, took = load.Client(url), []
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end:
        start = time.perf_counter()
        status, _ = client.post(path, body, content_type)
        if status == 200:
            took.append(time.perf_counter() - start)
    client.close()
    return took


def run(args) -> int:
    frame = samples.frame(*args.size)
    body, content_type, _ = bodies(frame)["raw in, raw out"]
    path = "/infer/segmentation/raw"
    rows, phases = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(
            args.engines, Path(tmp) / "node.log", capabilities="segmentation", receive_timeout_s=args.receive_timeout
        )
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            url = f"http://127.0.0.1:{node.port}"
            _normal(url, path, body, content_type, 2)  # warm-up
            progress(f"baseline: one client, {args.duration:g} s")
            phases["baseline"] = _normal(url, path, body, content_type, args.duration)
            progress(f"beside {args.sockets} sockets trickling a byte a second (reopened when closed)")
            with Trickler(node.port, count=args.sockets, reopen=True) as trickler:
                time.sleep(1)
                phases["beside slow clients"] = _normal(url, path, body, content_type, args.duration)
                held = [s.closed - s.opened for s in trickler.sockets if s.closed]
                statuses = Counter(s.status for s in trickler.sockets if s.closed)
                still_open = trickler.open_count
            progress("baseline again")
            phases["baseline after"] = _normal(url, path, body, content_type, args.duration)
        finally:
            node.stop()
    for name, took in phases.items():
        s = summarise(took)
        rows.append({"phase": name, "requests": s["n"], **{f"{p} ms": s[p] for p in ("p50", "p90", "p99", "max")}})
    base_p99 = (rows[0]["p99 ms"] + rows[2]["p99 ms"]) / 2
    ratio = rows[1]["p99 ms"] / base_p99
    held_s = summarise(held) if held else {}
    notes = [
        f"POST {path}, raw {args.size[0]}x{args.size[1]}, one keep-alive client back to back, {args.duration:g} s "
        "per phase; the two baselines bracket the attack",
        f"p99 beside slow clients / mean baseline p99 = {ratio:.2f} (goal <= 1.2)",
        f"slow sockets: {args.sockets} kept open (idle, request line, headers, body; a byte a second); node receive "
        f"deadline {args.receive_timeout:g} s; {len(held)} closed by the node during the phase, held "
        + (f"{held_s['min'] / 1000:.2f}-{held_s['max'] / 1000:.2f} s" if held else "-")
        + f", answers {dict(statuses)}; {still_open} open at the end",
    ]
    report.write(
        {
            "provenance": report.provenance({"engines": str(args.engines)}),
            "p99_ratio": ratio,
            "slow_sockets_held_s": held_s,
            "slow_socket_answers": {str(k): v for k, v in statuses.items()},
            "phases": {k: summarise(v) for k, v in phases.items()},
        },
        "Slow clients: normal latency without and beside them",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0
