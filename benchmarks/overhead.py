"""Node overhead: HTTP latency minus the node's own inference time, beside the bare HTTP floor."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vision_node import samples

from . import engine, nodeproc, report
from .report import progress
from .stats import summarise


def bodies(frame: np.ndarray) -> dict[str, tuple[bytes, str, str]]:
    """scenario -> (body, Content-Type, output format path suffix)."""
    jpeg = io.BytesIO()
    Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
    h, w = frame.shape[:2]
    return {
        "raw in, raw out": (frame.tobytes(), f"application/octet-stream; width={w}; height={h}", "/raw"),
        "JPEG in, PNG out": (jpeg.getvalue(), "image/jpeg", ""),
    }


def post(conn: http.client.HTTPConnection, path: str, body: bytes, content_type: str):
    """(seconds, X-Metadata or None, response bytes) of one request."""
    start = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
    meta = response.getheader("X-Metadata")
    return elapsed, json.loads(meta) if meta else None, len(data)


def echo_floor(cases: dict, requests: int, warmup: int) -> dict:
    """p50/p99 of the bare HTTP stack (benchmarks.echo on uvicorn) for each (body, response size) case."""
    port = nodeproc.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.echo:app", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                post(conn, "/echo?n=1", b"", "application/octet-stream")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        floors = {}
        for key, (body, content_type, size) in cases.items():
            path = f"/echo?n={size}"
            for _ in range(warmup):
                post(conn, path, body, content_type)
            floors[key] = summarise([post(conn, path, body, content_type)[0] for _ in range(requests)])
        conn.close()
        return floors
    finally:
        proc.terminate()
        proc.wait()


def run(args) -> int:
    payloads = bodies(samples.frame(*args.size))
    results, served = _over_http(args, payloads)
    progress("HTTP floor: the same bodies and response sizes through a bare Starlette echo on uvicorn")
    cases = {key: (payloads[key[1]][0], payloads[key[1]][1], samples_[0][2]) for key, samples_ in results.items()}
    floors = echo_floor(cases, args.requests, args.warmup)
    rows, raw = [], {}
    for capability in args.capabilities:
        progress(f"{capability}: {args.requests} in-process inferences on the same frame")
        direct = engine.graph_rows(
            args.engines, capability, [args.size], [1], progress, warmup=5, iterations=args.requests
        )[0]  # the same sample frame through the same backend class, in this process
        for scenario in payloads:
            row, raw[f"{capability} / {scenario}"] = _row(
                capability, scenario, results[(capability, scenario)], direct, floors[(capability, scenario)]
            )
            rows.append(row)
    h, w = args.size
    notes = [
        f"frame {h}x{w} (HxW), one request at a time over a keep-alive loopback connection (http.client)",
        "overhead = client-measured HTTP latency - the node's own inference time for that request (X-Metadata)",
        "in-process = the same graph through OnnxRuntimeBackend in the benchmark's process, same frame",
        "echo floor = the same request and response sizes through a bare Starlette app on uvicorn (benchmarks.echo):"
        " what any Python HTTP node pays before doing anything",
        f"models: {', '.join(sorted({m['name'] for c in served.values() for m in c['models']}))}"
        f" ({', '.join(sorted({c['weights'] for c in served.values()}))} weights)",
    ]
    prov = report.provenance({"engines": str(args.engines)})
    report.write(
        {"provenance": prov, "results": raw, "rows": rows},
        "Node overhead (HTTP latency - in-process inference)",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0


def _over_http(args, payloads: dict) -> tuple[dict, dict]:
    """((capability, scenario) -> each request's (seconds, X-Metadata, response bytes), /capabilities),
    from a node this starts and stops."""
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            ready_s = nodeproc.wait_ready(node)
            progress(f"node ready in {ready_s:.2f} s on port {node.port}")
            served = nodeproc.capabilities(node.port)
            results = {}
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
            for capability in args.capabilities:
                for scenario, (body, content_type, suffix) in payloads.items():
                    path = f"/infer/{capability}{suffix}"
                    progress(f"{capability}, {scenario}: {args.warmup} warm-up + {args.requests} requests to {path}")
                    for _ in range(args.warmup):
                        post(conn, path, body, content_type)
                    timed = [post(conn, path, body, content_type) for _ in range(args.requests)]
                    results[(capability, scenario)] = timed
            conn.close()
        finally:
            node.stop()
    return results, served


def _row(capability: str, scenario: str, samples_: list, direct: dict, floor: dict) -> tuple[dict, dict]:
    """(the table's row, the JSON report's entry) of one capability and scenario."""
    client = [s for s, _, _ in samples_]
    infer = [m["timings_ms"]["infer"] / 1000 for _, m, _ in samples_]
    over = summarise([c - i for c, i in zip(client, infer)])
    http_ = summarise(client)
    stage = {k: summarise([m["timings_ms"][k] / 1000 for _, m, _ in samples_])["p50"] for k in ("decode", "encode")}
    row = {
        "capability": capability,
        "scenario": scenario,
        "HTTP p50 ms": http_["p50"],
        "HTTP p99 ms": http_["p99"],
        "in-process p50 ms": direct["p50 ms"],
        "overhead p50 ms": over["p50"],
        "overhead p99 ms": over["p99"],
        "echo floor p50 ms": floor["p50"],
        "decode p50 ms": stage["decode"],
        "encode p50 ms": stage["encode"],
    }
    return row, {"http": http_, "overhead": over, "in_process": direct, "echo_floor": floor}
