"""Several maps of one frame: one upload to /infer/depth+pose+segmentation against three requests.

The same JPEG frames, the same node (its own process, over HTTP with keep-alive), in one run:

- combined: one request, the frame decoded once, the three capabilities at the same time, one
  multipart/mixed answer;
- three in series: what a client does today, one request after the other;
- three in parallel: three requests at once on three connections (the frame sent and decoded three times).

Latency is per frame (all three maps back); bytes are what crossed the wire per frame, request and
response bodies plus headers.
"""

from __future__ import annotations

import http.client
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vision_node import samples

from . import nodeproc, report
from .report import progress
from .stats import summarise

CAPABILITIES = ("depth", "pose", "segmentation")


class _Client:
    """One keep-alive connection; counts the bytes of every request and response, headers included."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.bytes = 0

    def post(self, path: str, body: bytes) -> None:
        headers = {"Content-Type": "image/jpeg"}
        try:
            self.conn.request("POST", path, body, headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # the server closed this keep-alive connection while it sat idle (uvicorn: after 5 s): reconnect
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.conn.request("POST", path, body, headers)
            response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
        sent_head = len(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sent_head += sum(len(f"{k}: {v}\r\n") for k, v in headers.items())
        got_head = sum(len(f"{k}: {v}\r\n") for k, v in response.getheaders())
        self.bytes += sent_head + len(body) + got_head + len(data)


def run(args) -> int:
    names = [c for c in CAPABILITIES if c in args.capabilities]
    jpegs = _jpegs(args.frames, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            clients = [_Client(node.port) for _ in names]
            with ThreadPoolExecutor(len(names)) as pool:
                timings, moved = _measure(args, _scenarios(clients, names, pool), clients, jpegs)
        finally:
            node.stop()
    rows = []
    for scenario, seconds in timings.items():
        summary = summarise(seconds)
        rows.append(
            {
                "scenario": scenario,
                "frames": summary["n"],
                "p50 ms": summary["p50"],
                "p99 ms": summary["p99"],
                "max ms": summary["max"],
                "KiB moved per frame": moved[scenario] / len(seconds) / 1024,
            }
        )
    notes = [
        f"{args.size[1]}x{args.size[0]} JPEG frames (quality 90); default outputs: depth and segmentation PNG, "
        "pose JSON",
        "latency: from sending the first byte to having every map of the frame; scenarios interleaved per frame",
        "bytes: request line, headers and body out, headers and body back, per frame",
    ]
    report.write(
        {"provenance": report.provenance({"engines": str(args.engines)}), "rows": rows},
        f"Several maps of one frame: {'+'.join(names)} in one request or three",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0


def _jpegs(count: int, size: tuple[int, int]) -> list[bytes]:
    """``count`` different sample frames as JPEG q90."""
    jpegs = []
    for i in range(count):
        out = io.BytesIO()
        Image.fromarray(samples.frame(*size, seed=i)).save(out, format="JPEG", quality=90)
        jpegs.append(out.getvalue())
    return jpegs


def _scenarios(clients: list[_Client], names: list[str], pool: ThreadPoolExecutor) -> dict:
    """Scenario -> how it sends one frame (every map of it back when it returns)."""
    combined_path = "/infer/" + "+".join(names)

    def combined(body):
        clients[0].post(combined_path, body)

    def series(body):
        for name in names:
            clients[0].post(f"/infer/{name}", body)

    def parallel(body):
        list(pool.map(lambda pair: pair[0].post(f"/infer/{pair[1]}", body), zip(clients, names)))

    return {f"one request ({combined_path})": combined, "three in series": series, "three in parallel": parallel}


def _measure(args, scenarios: dict, clients: list[_Client], jpegs: list[bytes]) -> tuple[dict, dict]:
    """(scenario -> seconds per frame, scenario -> bytes moved), the scenarios interleaved frame by frame."""
    timings = {scenario: [] for scenario in scenarios}
    moved = {scenario: 0 for scenario in scenarios}
    for round_ in range(args.warmup + args.requests):
        for scenario, send in scenarios.items():  # interleaved: the machine's noise hits all alike
            body = jpegs[round_ % len(jpegs)]
            before = sum(c.bytes for c in clients)
            started = time.perf_counter()
            send(body)
            took = time.perf_counter() - started
            if round_ >= args.warmup:
                timings[scenario].append(took)
                moved[scenario] += sum(c.bytes for c in clients) - before
        if round_ == args.warmup:
            progress(f"measuring {args.requests} frames per scenario ...")
    return timings, moved
