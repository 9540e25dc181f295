"""HTTP load against a node: a closed-loop concurrency sweep and an open-loop fixed-rate run
(``python -m benchmarks http``).

Each client thread keeps its own keep-alive connection. Latency is the client's view; the
node's own stage timings (X-Metadata) are reported beside it. In open loop, latency counts
from the moment a request was due, so a stalled node cannot hide its backlog.
"""

from __future__ import annotations

import http.client
import io
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from vision_node import samples

from . import nodeproc, report
from .overhead import bodies
from .stats import summarise

STAGES = ("decode", "queue", "infer", "encode", "total")


class Client:
    def __init__(self, url: str, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.conn = None

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict | None]:
        for attempt in (0, 1):  # one reconnect: the node may close a keep-alive connection
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request("POST", path, body, {"Content-Type": content_type})
                response = self.conn.getresponse()
                response.read()
                meta = response.getheader("X-Metadata")
                if response.will_close:
                    self.close()
                return response.status, json.loads(meta) if meta else None
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _summary(records: list[tuple[float, int, dict | None]], wall: float) -> dict:
    ok = [(t, m) for t, status, m in records if status == 200]
    statuses = Counter(status for _, status, _ in records)
    out = {"requests": len(records), "ok": len(ok), "statuses": dict(sorted(statuses.items())), "wall_s": wall}
    out["throughput_rps"] = len(ok) / wall if wall > 0 else 0.0
    if ok:
        out["client"] = summarise([t for t, _ in ok])
        out["server_p50_ms"] = {
            stage: summarise([m["timings_ms"][stage] / 1000 for _, m in ok if m])["p50"] for stage in STAGES
        }
    return out


def closed_loop(url, path, body, content_type, concurrency: int, duration_s: float, warmup: int = 3) -> dict:
    """``concurrency`` clients, each sending its next request as soon as the last is answered."""
    for _ in range(warmup):
        Client(url).post(path, body, content_type)
    stop = time.perf_counter() + duration_s

    def worker() -> list:
        client, records = Client(url), []
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status, meta = client.post(path, body, content_type)
            records.append((time.perf_counter() - start, status, meta))
        client.close()
        return records

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [f.result() for f in [pool.submit(worker) for _ in range(concurrency)]]
    return {"concurrency": concurrency, **_summary([r for rs in results for r in rs], time.perf_counter() - started)}


def open_loop(url, path, body, content_type, rate: float, duration_s: float, max_clients: int = 64) -> dict:
    """Requests due at a fixed rate; latency counts from when each was due."""
    total = max(1, int(rate * duration_s))
    start = time.perf_counter() + 0.1
    due = [start + i / rate for i in range(total)]
    local = threading.local()
    records, lock = [], threading.Lock()

    def send(when: float) -> None:
        delay = when - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client = getattr(local, "client", None) or Client(url)
        local.client = client
        status, meta = client.post(path, body, content_type)
        with lock:
            records.append((time.perf_counter() - when, status, meta))

    with ThreadPoolExecutor(max_clients) as pool:
        list(pool.map(send, due))
    return {"rate_rps": rate, **_summary(records, time.perf_counter() - start)}


# ---------------------------------------------------------------- the command: python -m benchmarks http


def run(args) -> int:
    body, content_type = _body(args)
    path = f"/infer/{args.capability}" + (f"/{args.output}" if args.output else "")
    with tempfile.TemporaryDirectory() as tmp:
        node = None
        url = args.url
        if url is None:
            node = nodeproc.spawn(args.engines, Path(tmp) / "node.log", queue_size=args.queue_size)
            report.progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            url = f"http://127.0.0.1:{node.port}"
        try:
            levels = _levels(args, url, path, body, content_type)
        finally:
            if node is not None:
                node.stop()
    notes = [
        f"POST {path}, {args.input} frames {args.size[0]}x{args.size[1]} (synthetic sample frame), "
        f"{args.duration} s per level; client latency in ms, node stages from X-Metadata (ms)",
        "closed loop: each client sends its next request when the last is answered; open loop: requests due at a "
        "fixed rate, latency counted from when each was due",
        "the client runs on the same machine as the node: on a small CPU it takes cycles from it",
    ]
    report.write(
        {"provenance": report.provenance({"url": args.url, "engines": str(args.engines)}), "levels": levels},
        f"HTTP load: {args.capability}",
        [_row(level) for level in levels],
        notes,
        args.json,
        args.markdown,
    )
    return 0


def _body(args) -> tuple[bytes, str]:
    """The sample frame in the format asked for: (body, Content-Type)."""
    frame = samples.frame(*args.size)
    if args.input == "png":
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="PNG")
        return out.getvalue(), "image/png"
    body, content_type, _ = bodies(frame)["raw in, raw out" if args.input == "raw" else "JPEG in, PNG out"]
    return body, content_type


def _levels(args, url: str, path: str, body: bytes, content_type: str) -> list[dict]:
    """The closed-loop levels (1 to 16 clients unless told), then the open-loop rates."""
    levels = []
    concurrency = args.concurrency if args.concurrency is not None else ([] if args.rate else [1, 2, 4, 8, 16])
    for c in concurrency:
        report.progress(f"closed loop, {c} clients, {args.duration} s: POST {path}")
        levels.append(closed_loop(url, path, body, content_type, c, args.duration))
        report.progress(_level_line(levels[-1]))
    for rate in args.rate:
        report.progress(f"open loop, {rate} requests/s, {args.duration} s: POST {path}")
        levels.append(open_loop(url, path, body, content_type, rate, args.duration))
        report.progress(_level_line(levels[-1]))
    return levels


def _level_line(level: dict) -> str:
    """A load level's result as soon as it is measured."""
    client = level.get("client", {})
    return (
        f"  {level['throughput_rps']:.1f} ok/s, p50 {client.get('p50', float('nan')):.1f} ms, "
        f"p99 {client.get('p99', float('nan')):.1f} ms, statuses {dict(level['statuses'])}"
    )


def _row(level: dict) -> dict:
    client, server = level.get("client", {}), level.get("server_p50_ms", {})
    return {
        "load": f"{level['concurrency']} clients" if "concurrency" in level else f"{level['rate_rps']:g} req/s",
        "requests": level["requests"],
        "ok/s": level["throughput_rps"],
        "statuses": " ".join(f"{k}:{v}" for k, v in level["statuses"].items()),
        **{f"{p} ms": client.get(p, float("nan")) for p in ("p50", "p90", "p95", "p99", "max")},
        "node queue p50": server.get("queue", float("nan")),
        "node infer p50": server.get("infer", float("nan")),
        "node total p50": server.get("total", float("nan")),
    }
