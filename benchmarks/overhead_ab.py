"""The node's own overhead against bare apps on the same HTTP stack, in blocks taken in turn: raw in, raw out.

    python -m benchmarks.overhead_ab --engines engines/tiny --capability segmentation --size 512x512

It starts a node and ``benchmarks.echo`` on uvicorn, then sends each round a block of requests in a
row to each of five targets, the same frame in and as many bytes out:

- ``node``: ``/infer/<capability>/raw``;
- ``echo``: the bare echo; ``echo+hop``: the echo with one worker-thread hop;
- ``echo+sleep``: the echo whose worker sleeps as long as the node's inference takes (its median
  over the warm-up requests);
- ``bare+model``: the barest node, a Starlette handler that runs the graph the node loads through
  ONNX Runtime's ``session.run`` on a worker thread and answers its output's bytes.

The targets' order is rotated every round, so a noisy machine's drift hits them alike. A block's
first request follows another target's and is not kept: each kept one follows its own kind, as in
a stream of frames. Each round trip less the time its worker spent (the node's own inference, the
echo's sleep, the bare app's run) is the overhead.

Why not the echo alone: on this machine (a VM whose idle vCPUs halt) the same code costs more right
after a wait (woken threads, cold caches), and more again after a model that fills the caches. A
node meets that twice a request (in its own inference, and the previous one); the bare echo never
does. ``echo+sleep`` over ``echo+hop`` is the wait's price; ``node over bare+model`` is what the
node's own code adds to the same model.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vision_node.serving.engines import load

from . import nodeproc, report

TARGETS = ("node", "echo", "echo+hop", "echo+sleep", "bare+model")
CONTROLS = ("echo", "echo+sleep", "bare+model")  # what the node is read against


def _post(conn, path: str, body: bytes, content_type: str) -> tuple[float, http.client.HTTPResponse, int]:
    start = time.perf_counter()
    try:
        conn.request("POST", path, body, {"Content-Type": content_type})
        response = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        # the server closed it while it idled (keep-alive timeout): reconnect. Only a block's first request
        # comes after an idle stretch, and that one is not kept.
        conn.close()
        start = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": content_type})
        response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
    return time.perf_counter() - start, response, len(data)


def _worker_ms(name: str, response: http.client.HTTPResponse) -> float:
    """The time the request's worker spent (not overhead): the node's inference, the echo's sleep."""
    if name == "node":
        return json.loads(response.getheader("X-Metadata"))["timings_ms"]["infer"]
    if name in ("echo+sleep", "bare+model"):
        return float(response.getheader("X-Wait-ms"))
    return 0.0


def measure(node_port: int, echo_port: int, capability: str, size: tuple[int, int], rounds: int, block: int) -> dict:
    h, w = size
    body, content_type = bytes(h * w * 3), f"application/octet-stream; width={w}; height={h}"
    conns = {
        name: http.client.HTTPConnection("127.0.0.1", node_port if name == "node" else echo_port, timeout=600)
        for name in TARGETS
    }
    node_path = f"/infer/{capability}/raw"
    warm = [_post(conns["node"], node_path, body, content_type) for _ in range(9)]
    answer = warm[0][2]
    wait_ms = float(np.median([_worker_ms("node", response) for _, response, _ in warm]))
    paths = {
        "node": node_path,
        "echo": f"/echo?n={answer}",
        "echo+hop": f"/echo-hop?n={answer}",
        "echo+sleep": f"/echo-wait?n={answer}&ms={wait_ms:.3f}",
        "bare+model": f"/model?height={h}&width={w}",
    }
    bare = _post(conns["bare+model"], paths["bare+model"], body, content_type)[2]
    if bare != answer:
        raise RuntimeError(f"the bare app answered {bare} bytes, the node {answer}: not the same output")
    for name in TARGETS:  # warm each connection and server
        for _ in range(5):
            _post(conns[name], paths[name], body, content_type)
    ms: dict[str, list[float]] = {name: [] for name in TARGETS}
    orders = [TARGETS[i:] + TARGETS[:i] for i in range(len(TARGETS))]  # each target in each place in turn
    for i in range(rounds):
        for name in orders[i % len(orders)]:
            for k in range(block + 1):  # the first follows another target's request: not kept
                seconds, response, _ = _post(conns[name], paths[name], body, content_type)
                if k:
                    ms[name].append(seconds * 1000 - _worker_ms(name, response))
    for conn in conns.values():
        conn.close()
    p50 = {name: float(np.median(v)) for name, v in ms.items()}
    p99 = {name: float(np.percentile(v, 99)) for name, v in ms.items()}
    return {
        "wait ms": wait_ms,
        "response bytes": answer,
        "p50": p50,
        "p99": p99,
        **{f"node over {name} p50 ms": p50["node"] - p50[name] for name in CONTROLS},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engines", type=Path, default=Path("engines"))
    p.add_argument("--capability", default="segmentation", choices=("depth", "segmentation"))
    p.add_argument("--size", default="512x512", help="HxW (default: 512x512)")
    p.add_argument("--rounds", type=int, default=50, help="rounds, a block to every target each (default: 50)")
    p.add_argument("--block", type=int, default=6, help="requests kept per target and round (default: 6)")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs, each with a fresh node and echo; figures are their medians (default: 1)",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--markdown", type=Path, help="also write a Markdown report here")
    args = p.parse_args(argv)
    size = tuple(int(d) for d in args.size.split("x"))
    graph = load(args.engines, (args.capability,), onnxruntime=True)[args.capability].graph_for(*size)
    runs = []
    for i in range(args.runs):
        runs.append(_run(args, graph, size))
        overs = ", ".join(f"over {name} {runs[-1][f'node over {name} p50 ms']:.3f}" for name in CONTROLS)
        report.progress(f"run {i + 1}/{args.runs}: node {overs} ms")
    result = {
        "graph": graph.onnxruntime_file.name,
        "wait ms": statistics.median([r["wait ms"] for r in runs]),
        "response bytes": runs[0]["response bytes"],
        "p50": {name: statistics.median([r["p50"][name] for r in runs]) for name in TARGETS},
        "p99": {name: statistics.median([r["p99"][name] for r in runs]) for name in TARGETS},
        **{key: statistics.median([r[key] for r in runs]) for key in (f"node over {name} p50 ms" for name in CONTROLS)},
        "runs": runs,
    }
    print(
        f"{args.capability} raw in, raw out, {args.size}, {args.rounds} rounds of {args.block} requests a target,"
        f" {args.runs} run(s), medians:"
    )
    for name in TARGETS:
        print(f"  {name} p50 ms: {result['p50'][name]:.3f}")
    for key in ("wait ms", *(f"node over {name} p50 ms" for name in CONTROLS)):
        print(f"  {key}: {result[key]:.3f}")
    if args.json or args.markdown:
        _write(args, size, result)
    return 0


def _run(args, graph, size: tuple[int, int]) -> dict:
    """One run: a fresh echo (with the node's graph for /model) and a fresh node."""
    echo_port = nodeproc.free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.echo:app", "--port", str(echo_port)]
    model = {"ECHO_MODEL": str(graph.onnxruntime_file), "ECHO_MODEL_OUTPUT": graph.outputs[0]["name"]}
    command += ["--log-level", "warning", "--timeout-keep-alive", "600"]
    echo = subprocess.Popen(command, env={**os.environ, **model}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            nodeproc.wait_ready(node)
            return measure(node.port, echo_port, args.capability, size, args.rounds, args.block)
        finally:
            node.stop()
            echo.terminate()
            echo.wait()


def _write(args, size: tuple[int, int], result: dict) -> None:
    each = {name: " / ".join(f"{r[f'node over {name} p50 ms']:+.2f}" for r in result["runs"]) for name in CONTROLS}
    over = {name: f"{result[f'node over {name} p50 ms']:+.2f} ms" for name in CONTROLS}
    rows = [
        {
            "target": name,
            "p50 ms": result["p50"][name],
            "p99 ms": result["p99"][name],
            "node over it, p50": over.get(name, ""),
            "each run": each.get(name, ""),
        }
        for name in TARGETS
    ]
    notes = [
        f"{args.capability}, raw frame {args.size} (HxW) in ({size[0] * size[1] * 3} bytes),"
        f" raw map out ({result['response bytes']} bytes); per round, {args.block + 1} requests in a row to each"
        f" target, the first not kept (it follows another target's); {args.rounds} rounds, the targets' order"
        " rotated every round; keep-alive loopback connections, one request at a time",
        f"{args.runs} run(s), each with a fresh node and echo; every figure is the median of the runs' figures",
        "each figure is the round trip less the time the request's worker spent: the node's own inference"
        " (X-Metadata), the echo's sleep and the bare app's session.run (X-Wait-ms); echo+hop's worker does"
        " nothing",
        f"echo+sleep: the echo's worker sleeps {result['wait ms']:.1f} ms, the node's median inference over"
        " its warm-up requests; over echo+hop, it is what a wait that long costs a bare app on this machine",
        f"bare+model: the graph the node loads ({result['graph']}), run by ONNX Runtime with default options"
        " in a bare Starlette handler on a worker thread; over it, the node's own code",
    ]
    command = "python -m benchmarks.overhead_ab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prov = report.provenance({"engines": str(args.engines), "command": command})
    report.write(
        {"provenance": prov, "results": result},
        "Node overhead, raw in and raw out, against bare apps on the same HTTP stack",
        rows,
        notes,
        args.json,
        args.markdown,
    )


if __name__ == "__main__":
    raise SystemExit(main())
