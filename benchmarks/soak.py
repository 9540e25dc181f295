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

from node import samples

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
    good = _good_requests()
    bad = [c for c in malformed.cases(2000, seed=11) if len(c.request) < 1 << 20]
    rng = random.Random(5)
    plan = [rng.random() < args.bad_share for _ in range(args.requests)]
    done = 0
    statuses = {"good": Counter(), "malformed": Counter()}
    lock = threading.Lock()
    samples_: list[tuple[int, float, float]] = []  # (requests done, seconds, RSS MiB)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log", queue_size=64)
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            url = f"http://127.0.0.1:{node.port}"
            started = time.perf_counter()
            samples_.append((0, 0.0, rss_mib(node.port)))
            next_index = iter(range(args.requests))

            def client() -> None:
                nonlocal done
                keep_alive = load.Client(url)
                for i in next_index:
                    if plan[i]:
                        kind, status = "malformed", malformed.send(node.port, bad[i % len(bad)])
                    else:
                        path, body, content_type = good[i % len(good)]
                        kind, (status, _) = "good", keep_alive.post(path, body, content_type)
                    with lock:
                        statuses[kind][status] += 1
                        done += 1
                keep_alive.close()

            workers = [threading.Thread(target=client) for _ in range(args.clients)]
            for w in workers:
                w.start()
            every = max(1, args.requests // args.samples)
            next_sample = every
            while any(w.is_alive() for w in workers):
                time.sleep(0.2)
                if done >= next_sample:
                    samples_.append((done, time.perf_counter() - started, rss_mib(node.port)))
                    progress(f"{done} requests, {samples_[-1][1]:.0f} s: node RSS {samples_[-1][2]:.1f} MiB")
                    next_sample += every
            for w in workers:
                w.join()
            wall = time.perf_counter() - started
            samples_.append((done, wall, rss_mib(node.port)))
            alive = node.proc.poll() is None and nodeproc.get(node.port, "/health")[0] == 200
        finally:
            node.stop()
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
        {"provenance": report.provenance({"engines": str(args.engines)}), "growth_percent": growth,
         "five_xx": five_xx, "alive": alive, "samples": samples_,
         "statuses": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()}},
        "Soak: mixed good and malformed requests", rows, notes, args.json, args.markdown,
    )  # fmt: skip
    return 0 if five_xx == 0 and alive else 1
