"""Overload: open-loop load at multiples of the node's measured capacity.

Capacity is measured first (closed loop, two clients keep the capability's worker busy). Then
requests are due at 0.5x, 1x, 2x, 4x that rate, whatever the node answers. What a node must hold:
accepted requests keep a bounded latency (at most queue size + 1 frame times), the rest are
refused with 503 + Retry-After at once, nothing else fails, and its memory stays flat.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vision_node import samples

from . import load, nodeproc, report
from .overhead import bodies
from .report import progress
from .stats import summarise


def rss_mib(port: int) -> float:
    """The node's resident memory, from its /metrics."""
    text = nodeproc.get(port, "/metrics")[1].decode()
    return float(re.search(r"^process_resident_memory_bytes (\S+)", text, re.M).group(1)) / 2**20


def open_loop(url: str, path: str, body: bytes, content_type: str, rate: float, duration_s: float) -> dict:
    """Requests due at ``rate``/s for ``duration_s``; each record: (status, from due, from send) in seconds."""
    total = max(1, int(rate * duration_s))
    start = time.perf_counter() + 0.2
    local = threading.local()
    records, lock = [], threading.Lock()

    def send(i: int) -> None:
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client = getattr(local, "client", None) or load.Client(url)
        local.client = client
        sent = time.perf_counter()
        try:
            status, _ = client.post(path, body, content_type)
        except OSError as err:
            status = type(err).__name__
        done = time.perf_counter()
        with lock:
            records.append((status, done - due, done - sent))

    with ThreadPoolExecutor(128) as pool:
        list(pool.map(send, range(total)))
    return {"records": records, "wall_s": time.perf_counter() - start}


def _node_levels(args, max_batch: int, reference: float | None, tmp: str) -> dict:
    """One node with ``--max-batch max_batch``: its capacity, then each load level (rates from ``reference``)."""
    frame = samples.frame(*args.size)
    body, content_type, _ = bodies(frame)["raw in, raw out"]
    path = f"/infer/{args.capability}/raw"
    node = nodeproc.spawn(
        args.engines,
        Path(tmp) / f"node-{max_batch}.log",
        capabilities=args.capability,
        queue_size=args.queue_size,
        max_batch=max_batch,
    )
    rows = []
    try:
        progress(f"max batch {max_batch}: node on port {node.port}, ready in {nodeproc.wait_ready(node):.2f} s")
        url = f"http://127.0.0.1:{node.port}"
        clients = args.queue_size + 1  # keeps the queue full: the capability never waits for a request
        base = load.closed_loop(url, path, body, content_type, clients, args.capacity_seconds)
        capacity = base["throughput_rps"]
        reference = reference or capacity
        progress(f"capacity: {capacity:.2f} frames/s ({clients} clients, {args.capacity_seconds:g} s)")
        rss_start = rss_mib(node.port)
        for multiple in args.multiples:
            rate = reference * multiple
            progress(f"{multiple:g}x capacity: {rate:.2f} requests/s for {args.duration:g} s")
            level = open_loop(url, path, body, content_type, rate, args.duration)
            records = level["records"]
            statuses = Counter(r[0] for r in records)
            accepted = [r[1] for r in records if r[0] == 200]
            refused = [r[2] for r in records if r[0] == 503]
            nan = {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
            ok, no = summarise(accepted) if accepted else nan, summarise(refused) if refused else nan
            rows.append(
                {
                    "max batch": max_batch,
                    "load": f"{multiple:g}x",
                    "offered /s": rate,
                    "ok /s": len(accepted) / level["wall_s"],
                    "accepted p50 ms": ok["p50"],
                    "accepted p99 ms": ok["p99"],
                    "503": statuses.get(503, 0),
                    "503 p50 ms": no["p50"],
                    "503 p99 ms": no["p99"],
                    "503 max ms": no["max"],
                    "other": sum(n for s, n in statuses.items() if s not in (200, 503)),
                    "node RSS MiB": rss_mib(node.port),
                }
            )
            last = rows[-1]
            progress(
                f"  ok {last['ok /s']:.1f}/s, accepted p50 {last['accepted p50 ms']:.1f} ms p99 "
                f"{last['accepted p99 ms']:.1f} ms, 503: {last['503']}, other: {last['other']}"
            )
            rows[-1]["statuses"] = {str(k): v for k, v in statuses.items()}
    finally:
        node.stop()
    return {"max_batch": max_batch, "capacity_rps": capacity, "rss_start_mib": rss_start, "rows": rows}


def run(args) -> int:
    nodes = []
    with tempfile.TemporaryDirectory() as tmp:
        for max_batch in args.max_batch:
            reference = nodes[0]["capacity_rps"] if nodes else None
            nodes.append(_node_levels(args, max_batch, reference, tmp))
    rows = [{k: v for k, v in row.items() if k != "statuses"} for n in nodes for row in n["rows"]]
    reference = nodes[0]["capacity_rps"]
    notes = [
        f"POST /infer/{args.capability}/raw, raw {args.size[0]}x{args.size[1]} frames; node queue size "
        f"{args.queue_size}; capacity measured first per node (closed loop, queue size + 1 clients, "
        f"{args.capacity_seconds:g} s): "
        + ", ".join(f"{n['capacity_rps']:.2f} frames/s at max batch {n['max_batch']}" for n in nodes),
        f"load multiples are of the first node's capacity ({reference:.2f}/s), so every node sees the same rates",
        "open loop: requests due at the rate whatever the node answers; accepted latency from when each was due, "
        "503 latency from when it was sent; other = any status but 200 and 503, or a failed connection",
        "memory: node RSS after each level; before the first: "
        + ", ".join(f"{n['rss_start_mib']:.1f} MiB (max batch {n['max_batch']})" for n in nodes),
        "the client runs on the same machine as the node: on a small CPU it takes cycles from it",
    ]
    report.write(
        {
            "provenance": report.provenance({"engines": str(args.engines)}),
            "capacity_rps": reference,
            "nodes": nodes,
            "levels": nodes[0]["rows"],
        },
        f"Overload: {args.capability} at multiples of capacity",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0
