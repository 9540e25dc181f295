"""Soak: many mixed good and malformed requests against one node; its statuses and memory over time.

Good requests rotate over every capability and input (raw, JPEG, PNG) on keep-alive
connections; malformed ones are ``benchmarks.malformed``'s cases, each on its own connection.
Memory is the node's resident set from /metrics, sampled as the run goes; growth is counted
from the end of the warm-up (the first 10 % of requests) to the end.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from vision_node import samples

from . import load, malformed, nodeproc, report
from .overhead import bodies
from .overload import rss_mib
from .report import progress


def _good_requests() -> list[tuple[str, bytes, str]]:
    small, image = samples.frame(64, 64), samples.frame(96, 128)
    raw = bodies(small)["raw in, raw out"]
    jpeg_png = bodies(image)["JPEG in, PNG out"]
    out = []
    for capability in ("depth", "segmentation", "pose"):
        out.append((f"/infer/{capability}", raw[0], raw[1]))
        out.append((f"/infer/{capability}", jpeg_png[0], jpeg_png[1]))
    return out


def run(args) -> int:
    soak = _Soak(args)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log", queue_size=64)
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            soak.drive(node.port)
            alive = node.proc.poll() is None and nodeproc.get(node.port, "/health")[0] == 200
        finally:
            node.stop()
    samples_, statuses, wall = soak.samples, soak.statuses, soak.wall
    warm = next(s for s in samples_ if s[0] >= args.requests * 0.1)
    final = samples_[-1]
    growth = (final[2] - warm[2]) / warm[2] * 100
    five_xx = sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, int) and s >= 500)
    rows = [
        {"requests": f"{s[0]}", "seconds": s[1], "node RSS MiB": s[2], "vs warm-up %": (s[2] - warm[2]) / warm[2] * 100}
        for s in samples_
    ]
    notes = [
        f"{args.requests} requests ({args.bad_share:.0%} malformed), {args.clients} clients, {wall:.0f} s "
        f"({args.requests / wall:.0f} requests/s); node alive and healthy at the end: {alive}",
        f"good: {dict(statuses['good'])}",
        f"malformed: {dict(statuses['malformed'])}",
        f"5xx: {five_xx}; RSS after warm-up ({warm[0]} requests) {warm[2]:.1f} MiB, at the end {final[2]:.1f} MiB: "
        f"growth {growth:+.2f} % (goal < 5 %), max {max(s[2] for s in samples_):.1f} MiB",
    ]
    report.write(
        {
            "provenance": report.provenance({"engines": str(args.engines)}),
            "growth_percent": growth,
            "five_xx": five_xx,
            "alive": alive,
            "samples": samples_,
            "statuses": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()},
        },
        "Soak: mixed good and malformed requests",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0 if five_xx == 0 and alive else 1


class _Soak:
    """The run against one node: ``args.clients`` threads share the requests; memory sampled as they go."""

    def __init__(self, args):
        self.args, self.port = args, None
        self.good = _good_requests()
        self.bad = [c for c in malformed.cases(2000, seed=11) if len(c.request) < 1 << 20]
        rng = random.Random(5)
        self.plan = [rng.random() < args.bad_share for _ in range(args.requests)]  # True: a malformed request
        self.done = 0
        self.statuses = {"good": Counter(), "malformed": Counter()}
        self.lock = threading.Lock()
        self.samples: list[tuple[int, float, float]] = []  # (requests done, seconds, RSS MiB)
        self.wall = 0.0
        self._next_index = iter(range(args.requests))

    def drive(self, port: int) -> None:
        self.port = port
        started = time.perf_counter()
        self.samples.append((0, 0.0, rss_mib(self.port)))
        workers = [threading.Thread(target=self._client) for _ in range(self.args.clients)]
        for w in workers:
            w.start()
        every = max(1, self.args.requests // self.args.samples)
        next_sample = every
        while any(w.is_alive() for w in workers):
            time.sleep(0.2)
            if self.done >= next_sample:
                self.samples.append((self.done, time.perf_counter() - started, rss_mib(self.port)))
                progress(f"{self.done} requests, {self.samples[-1][1]:.0f} s: node RSS {self.samples[-1][2]:.1f} MiB")
                next_sample += every
        for w in workers:
            w.join()
        self.wall = time.perf_counter() - started
        self.samples.append((self.done, self.wall, rss_mib(self.port)))

    def _client(self) -> None:
        keep_alive = load.Client(f"http://127.0.0.1:{self.port}")
        for i in self._next_index:
            if self.plan[i]:
                kind, status = "malformed", malformed.send(self.port, self.bad[i % len(self.bad)])
            else:
                path, body, content_type = self.good[i % len(self.good)]
                kind, (status, _) = "good", keep_alive.post(path, body, content_type)
            with self.lock:
                self.statuses[kind][status] += 1
                self.done += 1
        keep_alive.close()
