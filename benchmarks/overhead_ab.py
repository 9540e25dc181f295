"""The node's own overhead against the bare HTTP floor, measured interleaved: raw in, raw out.

    python -m benchmarks.overhead_ab --engines engines/tiny --capability segmentation --size 512x512 --rounds 300

It starts a node and ``benchmarks.echo`` on uvicorn, then sends each round one request to each of the
node (``/infer/<capability>/raw``), the bare echo and the echo with one worker-thread hop
(``/echo-hop``), the same bytes in and out, in an order rotated every round: a noisy machine's drift
and whatever one request leaves behind (ONNX Runtime's threads, caches) hit all three alike.
Prints p50s: node round trip − its own inference, echo, echo + hop, and node over echo.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import nodeproc


def _post(conn, path: str, body: bytes, content_type: str):
    start = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
    return time.perf_counter() - start, response.getheader("X-Metadata"), len(data)


def measure(node_port: int, echo_port: int, capability: str, size: tuple[int, int], rounds: int) -> dict:
    h, w = size
    body, content_type = bytes(h * w * 3), f"application/octet-stream; width={w}; height={h}"
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=60)
             for name, port in (("node", node_port), ("echo", echo_port), ("echo+hop", echo_port))}  # fmt: skip
    node_path = f"/infer/{capability}/raw"
    answer = _post(conns["node"], node_path, body, content_type)[2]
    paths = {"node": node_path, "echo": f"/echo?n={answer}", "echo+hop": f"/echo-hop?n={answer}"}
    for name in conns:  # warm each connection and server
        for _ in range(5):
            _post(conns[name], paths[name], body, content_type)
    ms: dict[str, list[float]] = {name: [] for name in conns}
    orders = list(itertools.permutations(conns))
    for i in range(rounds):
        for name in orders[i % len(orders)]:
            seconds, meta, _ = _post(conns[name], paths[name], body, content_type)
            own = json.loads(meta)["timings_ms"]["infer"] if name == "node" else 0.0
            ms[name].append(seconds * 1000 - own)
    p50 = {name: float(np.median(v)) for name, v in ms.items()}
    return {**{f"{k} p50 ms": v for k, v in p50.items()}, "node over echo p50 ms": p50["node"] - p50["echo"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("engines"))
    p.add_argument("--capability", default="segmentation", choices=("depth", "segmentation"))
    p.add_argument("--size", default="512x512", help="HxW (default: 512x512)")
    p.add_argument("--rounds", type=int, default=300, help="rounds of three requests (default: 300)")
    args = p.parse_args(argv)
    size = tuple(int(d) for d in args.size.split("x"))
    echo_port = nodeproc.free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.echo:app", "--port", str(echo_port)]
    echo = subprocess.Popen([*command, "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            nodeproc.wait_ready(node)
            result = measure(node.port, echo_port, args.capability, size, args.rounds)
        finally:
            node.stop()
            echo.terminate()
            echo.wait()
    print(f"{args.capability} raw in, raw out, {args.size}, {args.rounds} rounds interleaved (order rotated):")
    for key, value in result.items():
        print(f"  {key}: {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
