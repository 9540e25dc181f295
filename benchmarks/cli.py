"""``python -m benchmarks``: latency reports for the node.

overhead   node overhead = HTTP latency - in-process inference, per request, for raw and JPEG/PNG
coldstart  process start -> /ready and -> first successful inference, over several starts
"""

from __future__ import annotations

import argparse
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

from node import samples
from node.contract import FRAME_INPUT
from node.engines import load
from node.runtime.onnxruntime import OnnxRuntimeBackend

from . import nodeproc, report
from .stats import summarise


def _hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ overhead


def _bodies(frame: np.ndarray) -> dict[str, tuple[bytes, str, str]]:
    """scenario -> (body, Content-Type, output format path suffix)."""
    jpeg = io.BytesIO()
    Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
    h, w = frame.shape[:2]
    return {
        "raw in, raw out": (frame.tobytes(), f"application/octet-stream; width={w}; height={h}", "/raw"),
        "JPEG in, PNG out": (jpeg.getvalue(), "image/jpeg", ""),
    }


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, content_type: str):
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


def _echo_floor(cases: dict, requests: int, warmup: int) -> dict:
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
                _post(conn, "/echo?n=1", b"", "application/octet-stream")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        floors = {}
        for key, (body, content_type, size) in cases.items():
            path = f"/echo?n={size}"
            for _ in range(warmup):
                _post(conn, path, body, content_type)
            floors[key] = summarise([_post(conn, path, body, content_type)[0] for _ in range(requests)])
        conn.close()
        return floors
    finally:
        proc.terminate()
        proc.wait()


def _in_process(engines: Path, capability: str, frame: np.ndarray, n: int) -> list[float]:
    served = load(engines, (capability,))[capability]
    graph = served.graph_for(*frame.shape[:2])
    with OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds) as backend:
        for _ in range(5):
            backend.infer({FRAME_INPUT: frame[None]})
        times = []
        for _ in range(n):
            start = time.perf_counter()
            backend.infer({FRAME_INPUT: frame[None]})
            times.append(time.perf_counter() - start)
    return times


def overhead(args) -> int:
    frame = samples.frame(*args.size)
    bodies = _bodies(frame)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            ready_s = nodeproc.wait_ready(node)
            _progress(f"node ready in {ready_s:.2f} s on port {node.port}")
            served = nodeproc.capabilities(node.port)
            results = {}
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
            for capability in args.capabilities:
                for scenario, (body, content_type, suffix) in bodies.items():
                    path = f"/infer/{capability}{suffix}"
                    _progress(f"{capability}, {scenario}: {args.warmup} warm-up + {args.requests} requests to {path}")
                    for _ in range(args.warmup):
                        _post(conn, path, body, content_type)
                    samples_ = [_post(conn, path, body, content_type) for _ in range(args.requests)]
                    results[(capability, scenario)] = samples_
            conn.close()
        finally:
            node.stop()
    _progress("HTTP floor: the same bodies and response sizes through a bare Starlette echo on uvicorn")
    cases = {key: (bodies[key[1]][0], bodies[key[1]][1], samples_[0][2]) for key, samples_ in results.items()}
    floors = _echo_floor(cases, args.requests, args.warmup)
    rows, raw = [], {}
    for capability in args.capabilities:
        _progress(f"{capability}: {args.requests} in-process inferences on the same frame")
        direct = summarise(_in_process(args.engines, capability, frame, args.requests))
        for scenario in bodies:
            samples_ = results[(capability, scenario)]
            client = [s for s, _, _ in samples_]
            infer = [m["timings_ms"]["infer"] / 1000 for _, m, _ in samples_]
            over = summarise([c - i for c, i in zip(client, infer)])
            http_ = summarise(client)
            stage = {
                k: summarise([m["timings_ms"][k] / 1000 for _, m, _ in samples_])["p50"] for k in ("decode", "encode")
            }
            rows.append(
                {
                    "capability": capability,
                    "scenario": scenario,
                    "HTTP p50 ms": http_["p50"],
                    "HTTP p99 ms": http_["p99"],
                    "in-process p50 ms": direct["p50"],
                    "overhead p50 ms": over["p50"],
                    "overhead p99 ms": over["p99"],
                    "echo floor p50 ms": floors[(capability, scenario)]["p50"],
                    "decode p50 ms": stage["decode"],
                    "encode p50 ms": stage["encode"],
                }
            )
            raw[f"{capability} / {scenario}"] = {
                "http": http_,
                "overhead": over,
                "in_process": direct,
                "echo_floor": floors[(capability, scenario)],
            }
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


# ------------------------------------------------------------------------------------ cold start


def coldstart(args) -> int:
    runs = []
    frame = samples.frame(*args.size)
    body, content_type, _ = _bodies(frame)["raw in, raw out"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            node = nodeproc.spawn(args.engines, Path(tmp) / f"node-{i}.log")
            try:
                ready_s = nodeproc.wait_ready(node)
                first = {}
                conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
                for capability in nodeproc.capabilities(node.port):
                    _post(conn, f"/infer/{capability}", body, content_type)
                    first[capability] = time.perf_counter() - node.spawned
                conn.close()
            finally:
                node.stop()
            runs.append({"ready_s": ready_s, "first_inference_s": first})
            _progress(f"start {i + 1}/{args.runs}: ready {ready_s:.2f} s, " + ", ".join(
                f"first {c} {s:.2f} s" for c, s in first.items()
            ))  # fmt: skip
    ready = summarise([r["ready_s"] for r in runs])
    rows = [{"measure": "start -> /ready 200", **{k: ready[k] / 1000 for k in ("min", "p50", "p95", "max")}}]
    for capability in runs[0]["first_inference_s"]:
        s = summarise([r["first_inference_s"][capability] for r in runs])
        rows.append(
            {"measure": f"start -> first {capability}", **{k: s[k] / 1000 for k in ("min", "p50", "p95", "max")}}
        )
    rows = [{"measure": r["measure"], **{f"{k} s": v for k, v in r.items() if k != "measure"}} for r in rows]
    notes = [
        f"{args.runs} starts of `python -m node serve` (fresh process each; the OS file cache is warm after the first)",
        "ready = first 200 from /ready (every graph loaded, hashed and warm); first inference: one raw "
        f"{args.size[0]}x{args.size[1]} frame per capability, in turn, right after ready",
    ]
    prov = report.provenance({"engines": str(args.engines)})
    report.write({"provenance": prov, "runs": runs, "rows": rows}, "Cold start", rows, notes, args.json, args.markdown)
    return 0


# ------------------------------------------------------------------------------------ parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Latency reports for the vision node. Each command prints a table; --json and --markdown "
        "also write it with its provenance (machine, versions, command).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python build_engines.py --weights demo --tiny --out /tmp/tiny\n"
        "  python -m benchmarks overhead --engines /tmp/tiny\n"
        "  python -m benchmarks coldstart --engines engines --runs 5 --markdown coldstart.md",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub):
        sub.add_argument("--engines", type=Path, default=Path("engines"), help="engines directory (default: engines)")
        sub.add_argument("--json", metavar="PATH", help="also write the report as JSON")
        sub.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")

    o = commands.add_parser("overhead", help="HTTP latency minus in-process inference, raw and JPEG/PNG")
    common(o)
    o.add_argument("--capabilities", type=lambda s: s.split(","), default=["depth", "segmentation"])
    o.add_argument("--size", type=_hw, default=(512, 512), metavar="HxW", help="frame size (default: 512x512)")
    o.add_argument("--requests", type=int, default=300, help="timed requests per scenario (default: 300)")
    o.add_argument("--warmup", type=int, default=30, help="untimed requests first (default: 30)")
    o.set_defaults(run=overhead)

    c = commands.add_parser("coldstart", help="process start -> ready -> first inference, several starts")
    common(c)
    c.add_argument("--runs", type=int, default=5, help="number of starts (default: 5)")
    c.add_argument("--size", type=_hw, default=(512, 512), metavar="HxW", help="first-inference frame size")
    c.set_defaults(run=coldstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
