"""HTTP load against a node: a closed-loop concurrency sweep and an open-loop fixed-rate run.

Each client thread keeps its own keep-alive connection. Latency is the client's view; the
node's own stage timings (X-Metadata) are reported beside it. In open loop, latency counts
from the moment a request was due, so a stalled node cannot hide its backlog.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

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
