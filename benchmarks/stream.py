"""``python -m benchmarks stream``: live streams through the node, beside a relay that only copies them.

Three processes on this machine: a trickle server (the double after go-livepeer's, autocreating, as the
orchestrator's would hold the channels), the node (``python -m vision_node serve``, or the stand-in engine of
``benchmarks.standin`` in place of the network, optionally pinned to CPUs with ``taskset``), and this
harness, which starts streams as go-livepeer's orchestrator does (``benchmarks.stream_orchestrator``),
publishes a real H.264 clip into each at its own pace (24 fps, 1 s GOPs, photographs with camera motion)
and decodes every output as it arrives.

Per configuration (frame size, number of streams): each stream's output rate (maps delivered per frame
sent), latency = map decoded by the reader - input frame sent by the publisher (one clock; the first
``--warmup`` seconds left out), its p95 in the first and the last 10 s (growth shows there), frames the
node dropped (latest frame wins), the node's time per stage (p50 of each stream's own, from
``/stream/status``) and the node's CPU time per map (all its threads, from /proc). The floor: the same
publishers and readers with a relay in the node's place that copies each segment as its bytes arrive
(MPEG-TS framing, the trickle hops and the harness itself).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from . import nodeproc, report
from .live_clip import encode_segments, photo_clip
from .live_io import Reader, publish, relay
from .report import progress
from .stream_orchestrator import StreamOrchestrator

FPS = 24
STAGES = ("decode", "queue", "infer", "render", "encode", "publish")


def add_arguments(p) -> None:
    p.add_argument("--capability", default="depth", choices=("depth", "segmentation", "pose"))
    p.add_argument("--streams", default="1,2,4,8", help="numbers of concurrent streams (default: 1,2,4,8)")
    p.add_argument("--sizes", default="512x512,720x1280", metavar="HxW,...", help="frame sizes (default: 512², 720p)")
    p.add_argument("--seconds", type=float, default=20.0, help="each configuration's length (default: 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at each stream's start left out (default: 3)")
    p.add_argument(
        "--standin-ms",
        type=float,
        default=None,
        help="serve with the stand-in engine (benchmarks.standin) taking this long, GIL released",
    )
    p.add_argument("--node-cpus", default="", help="pin the node to these CPUs (taskset -c), e.g. 0")
    p.add_argument("--no-floor", action="store_true", help="skip the relay's floor")
    p.add_argument("--label", default="", help="what this run serves, for the report (e.g. 'tiny build')")


def run(args) -> int:
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    counts = [int(n) for n in args.streams.split(",") if n]
    clips = {}
    for h, w in sizes:
        progress(f"encoding a {w}x{h} clip (4 s, looped)")
        clips[(h, w)] = encode_segments(photo_clip(4 * FPS, h, w, seed=1), fps=FPS, gop=FPS)
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as tmp, _TrickleProcess() as trickle:
        if not args.no_floor:
            for size in sizes:
                for n in counts:
                    result = asyncio.run(_relayed(trickle, clips[size], n, args))
                    runs.append({"what": "relay", "size": size, "streams": n, **result})
                    rows.append(_row("relay (floor)", size, n, result))
                    progress(_line(rows[-1]))
        node = _Node(args, Path(tmp) / "node.log", max(counts))
        try:
            for size in sizes:
                for n in counts:
                    result = asyncio.run(_streamed(trickle, node, clips[size], n, args))
                    runs.append({"what": "node", "size": size, "streams": n, **result})
                    rows.append(_row(args.label or "node", size, n, result))
                    progress(_line(rows[-1]))
        finally:
            node.stop()
    _floor_columns(rows)
    notes = [
        f"{args.capability}, {FPS} fps in, 1 s GOPs (the publisher's libx264 superfast/zerolatency; the node's "
        f"ultrafast), {args.seconds:g} s per row; "
        f"latency = map decoded by the reader - frame sent by the publisher, the first {args.warmup:g} s left out",
        "delivered = maps out / frames sent (latest frame wins: the rest were dropped before inference)",
        "stages: p50 ms of each stream's own, median over streams; node CPU: all the node's threads per map out",
        "the floor: the same harness with a relay in the node's place (each segment copied as its bytes arrive)",
    ]
    if args.standin_ms is not None:
        notes.append(f"STAND-IN ENGINE ({args.standin_ms:g} ms, GIL released): the host side only, no network")
    if args.node_cpus:
        notes.append(f"the node pinned to CPU(s) {args.node_cpus} (taskset); trickle server and harness unpinned")
    prov = report.provenance({"capability": args.capability, "standin_ms": args.standin_ms})
    report.write(
        {"provenance": prov, "runs": runs, "rows": rows}, "Live streams", rows, notes, args.json, args.markdown
    )
    if args.markdown:
        _plot(rows, Path(args.markdown).with_suffix(".png"))  # in place of the generic one: against the streams
    return 0


def _plot(rows: list[dict], png: Path) -> None:
    """Latency p95 and output rate against the number of streams, one line per build and size."""
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in dict.fromkeys((r["what"], r["size"]) for r in rows):
        line = [r for r in rows if (r["what"], r["size"]) == key]
        style = "--" if key[0].startswith("relay") else "-"
        streams = [r["streams"] for r in line]
        latency.plot(streams, [r["p95 ms"] for r in line], style, marker="o", label=" · ".join(key))
        rate.plot(streams, [r["fps out (min)"] for r in line], style, marker="o", label=" · ".join(key))
    latency.set(xlabel="streams at once", ylabel="latency p95 (ms, frame sent -> map decoded)", yscale="log")
    rate.set(xlabel="streams at once", ylabel="fps out (the slowest stream)", ylim=(0, FPS * 1.1))
    rate.axhline(0.9 * FPS, color="grey", linewidth=0.8)
    for ax in (latency, rate):
        ax.grid(alpha=0.3)
    rate.legend(fontsize=7)
    fig.suptitle("Live streams: the node against a relay that only copies (dashed)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the processes


class _TrickleProcess:
    """The trickle server double in a process of its own (its relaying is not the harness's CPU)."""

    SCRIPT = (
        "import sys\nfrom benchmarks.trickle_server import TrickleServer\n"
        "with TrickleServer(autocreate=True) as s:\n    print(s.url, flush=True)\n    sys.stdin.read()"
    )

    def __enter__(self):
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.url = self.proc.stdout.readline().strip()
        self.http = httpx.Client(timeout=10)
        return self

    def __exit__(self, *exc):
        self.http.close()
        self.proc.stdin.close()
        self.proc.wait(10)

    def create_channel(self, name: str, mime_type: str) -> str:
        """What go-livepeer's orchestrator does for a stream (here over HTTP: the server autocreates)."""
        self.http.post(f"{self.url}/{name}", headers={"Expect-Content": mime_type}).raise_for_status()
        return f"{self.url}/{name}"

    def close_channel(self, name: str) -> None:
        self.http.delete(f"{self.url}/{name}")


class _Node:
    def __init__(self, args, log: Path, capacity: int):
        self.port = nodeproc.free_port()
        env = {
            **os.environ,
            "VISION_NODE_ENGINES": str(args.engines),
            "VISION_NODE_PORT": str(self.port),
            "VISION_NODE_STREAM_CAPACITY": str(capacity),
            "VISION_NODE_STREAM_STATUS_INTERVAL_S": "2",
            "VISION_NODE_CAPABILITIES": args.capability,
        }
        module = ["-m", "vision_node", "serve"]
        if args.standin_ms is not None:
            module = ["-m", "benchmarks.standin", "--standin-ms", str(args.standin_ms)]
        pin = ["taskset", "-c", args.node_cpus] if args.node_cpus else []
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [*pin, sys.executable, *module],
                env=env,
                stdout=out,
                stderr=out,
                cwd=Path(__file__).resolve().parents[1],
            )
        self.url = f"http://127.0.0.1:{self.port}"
        nodeproc.wait_ready(nodeproc.NodeProcess(self.proc, self.port, log, time.perf_counter()))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ------------------------------------------------------------------------------------------- one configuration


async def _streamed(trickle, node: _Node, segments, n: int, args) -> dict:
    """n streams through the node at once."""
    orch = StreamOrchestrator(trickle, f"{node.url}/live/{args.capability}")
    ids = [f"s{time.monotonic_ns()}-{i}" for i in range(n)]
    try:
        started = await asyncio.gather(*(orch.start(i, None) for i in ids))
        bad = [s.body for s in started if s.status != 200]
        if bad:
            raise RuntimeError(f"the node refused a stream: {bad[0]}")
        cpu = node.cpu_seconds()
        outcome = await _drive([(s.subscribe_url, s.publish_url) for s in started], segments, args)
        cpu = node.cpu_seconds() - cpu
        async with httpx.AsyncClient(timeout=10) as http:
            statuses = [
                (await http.get(f"{node.url}/live/{args.capability}/stream/status", headers={"X-Stream-Id": i})).json()
                for i in ids
            ]
        await asyncio.gather(*(orch.stop(i) for i in ids))
        await asyncio.gather(*outcome.pop("reading"))
    finally:
        await orch.close()
    maps = sum(s["frames"]["out"] for s in statuses)
    outcome["node_cpu_ms_per_map"] = cpu * 1000 / maps if maps else math.nan
    frames_in = sum(s["frames"]["in"] for s in statuses)
    outcome["dropped"] = sum(s["frames"]["dropped"] for s in statuses) / max(1, frames_in)
    outcome["stages_ms"] = {
        stage: float(np.median([s["stages_ms_p50"][stage] or 0 for s in statuses])) for stage in STAGES
    }
    return outcome


async def _relayed(trickle, segments, n: int, args) -> dict:
    """The same publishers and readers, each stream copied by a relay: the harness's floor."""
    pairs, relays = [], []
    for i in range(n):
        name = f"relay{time.monotonic_ns()}-{i}"
        source, sink = trickle.create_channel(name, "video/MP2T"), trickle.create_channel(name + "-out", "video/MP2T")
        relays.append(asyncio.ensure_future(relay(source, sink)))
        pairs.append((source, sink))
    outcome = await _drive(pairs, segments, args)
    for source, sink in pairs:
        trickle.close_channel(source.rsplit("/", 1)[1])
        trickle.close_channel(sink.rsplit("/", 1)[1])
    await asyncio.gather(*outcome.pop("reading"), *relays, return_exceptions=True)
    return {**outcome, "node_cpu_ms_per_map": math.nan, "dropped": 0.0, "stages_ms": {}}


async def _drive(pairs: list[tuple[str, str]], segments, args) -> dict:
    """Publish into each input and read each output; latency and delivery per stream."""
    frames = sum(len(s.frames) for s in segments)
    loops = max(1, math.ceil(args.seconds * FPS / frames))
    readers = [Reader(out) for _, out in pairs]
    reading = [asyncio.ensure_future(r.run()) for r in readers]
    sent = await asyncio.gather(*(publish(inp, segments, FPS, loop_clip=loops) for inp, _ in pairs))
    await asyncio.sleep(1.0)  # the last maps
    latencies, delivered, first, last = [], [], [], []
    for times, reader in zip(sent, readers):
        start = min(times.values()) + args.warmup
        kept = {pts: t for pts, t in times.items() if t >= start}
        arrived = {a.pts: a.time - times[a.pts] for a in reader.frames if a.pts in kept}
        delivered.append(len(arrived) / max(1, len(kept)))
        latencies += list(arrived.values())
        by_time = sorted((kept[p], lat) for p, lat in arrived.items())
        first += [lat for t, lat in by_time if t < start + 10]
        last += [lat for t, lat in by_time if t >= by_time[-1][0] - 10] if by_time else []
    ms = lambda values, q: float(np.percentile(values, q) * 1000) if values else math.nan  # noqa: E731
    return {
        "delivered_min": min(delivered),
        "delivered_median": float(np.median(delivered)),
        "latency_p50_ms": ms(latencies, 50),
        "latency_p95_ms": ms(latencies, 95),
        "p95_first_10s_ms": ms(first, 95),
        "p95_last_10s_ms": ms(last, 95),
        "reading": reading,
    }


def _row(what: str, size, n: int, r: dict) -> dict:
    row = {
        "what": what,
        "size": f"{size[1]}x{size[0]}",
        "streams": n,
        "fps out (min)": round(r["delivered_min"] * FPS, 1),
        "delivered": round(r["delivered_median"], 3),
        "p50 ms": round(r["latency_p50_ms"], 1),
        "p95 ms": round(r["latency_p95_ms"], 1),
        "p95 first 10 s ms": round(r["p95_first_10s_ms"], 1),
        "p95 last 10 s ms": round(r["p95_last_10s_ms"], 1),
        "dropped": f"{r['dropped']:.0%}",
        "node CPU ms/map": round(r["node_cpu_ms_per_map"], 2),
    }
    row.update({f"{stage} ms": round(r["stages_ms"].get(stage, math.nan), 2) for stage in STAGES})
    return row


def _floor_columns(rows: list[dict]) -> None:
    """Each node row's p95 above the relay's at the same size and count."""
    floors = {(r["size"], r["streams"]): r["p95 ms"] for r in rows if r["what"] == "relay (floor)"}
    for r in rows:
        floor = floors.get((r["size"], r["streams"]))
        r["p95 over floor ms"] = round(r["p95 ms"] - floor, 1) if floor is not None else math.nan


def _line(row: dict) -> str:
    return json.dumps(
        {
            k: row[k]
            for k in ("what", "size", "streams", "fps out (min)", "p50 ms", "p95 ms", "dropped", "node CPU ms/map")
        }
    )
