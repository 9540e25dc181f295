"""Memory given back and workers freed: one node process per capability, ordinary frames, then big ones.

For each capability: the p50 of ordinary frames (the node's own inference time and the client's
round trip), the node's RSS before the big frames, its peak while each runs (sampled every 10 ms
from /proc) and after it, and, when a big frame answers 504, how soon after it the next ordinary
frame is answered and how long that frame waited for the worker (its queue time).

    python -m benchmarks.memory_return --engines /tmp/eng/demo --capabilities segmentation \
        --ordinary 512x512,720x1280 --big 2160x3840 [--keep-arena-pixels N] [--request-timeout-s S]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from vision_node import samples

from . import nodeproc

OUTPUT = {"depth": "raw", "segmentation": "raw", "pose": "json"}  # the cheapest encoding of each


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def post(port: int, capability: str, h: int, w: int, timeout: float = 600) -> tuple[int, dict, float]:
    """(status, X-Metadata, seconds) of one raw frame."""
    f = samples.frame(h, w)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request(
            "POST",
            f"/infer/{capability}/{OUTPUT[capability]}",
            f.tobytes(),
            {"content-type": f"application/octet-stream; width={w}; height={h}"},
        )
        response = conn.getresponse()
        response.read()
        meta = json.loads(response.getheader("x-metadata") or "{}")
        return response.status, meta, time.perf_counter() - start
    finally:
        conn.close()


def peak_rss_during(pid: int, work):
    """``work()``'s result and the highest RSS (MiB) sampled every 10 ms while it ran."""
    peak, done = [rss_mib(pid)], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak.append(rss_mib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return work(), max(peak)
    finally:
        done.set()
        sampler.join()


def size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def measure(node: nodeproc.NodeProcess, capability: str, ordinary, big, reps: int) -> dict:
    pid, port = node.proc.pid, node.port
    out: dict = {"capability": capability, "rss_ready_mib": round(rss_mib(pid))}
    for h, w in ordinary:  # warm: the arena grows to these frames once
        post(port, capability, h, w)
    for h, w in ordinary:
        runs = [post(port, capability, h, w) for _ in range(reps)]
        ok = [(meta, seconds) for status, meta, seconds in runs if status == 200]
        out[f"{h}x{w}"] = {
            "answered_200": f"{len(ok)}/{reps}",
            "infer_p50_ms": round(statistics.median(m["timings_ms"]["infer"] for m, _ in ok), 1) if ok else None,
            "round_trip_p50_ms": round(1000 * statistics.median(s for _, s in ok), 1) if ok else None,
        }
    out["rss_before_mib"] = round(rss_mib(pid))
    for h, w in big:

        def big_frame(h=h, w=w) -> dict:
            status, _, seconds = post(port, capability, h, w)
            answered = time.perf_counter()
            record = {"status": status, "seconds": round(seconds, 2)}
            if status == 504:  # the next ordinary frame: how soon, and how long it waited for the worker
                next_status, meta, _ = post(port, capability, *ordinary[0])
                record["next"] = {
                    "status": next_status,
                    "answered_after_504_ms": round(1000 * (time.perf_counter() - answered)),
                    "queue_ms": meta.get("timings_ms", {}).get("queue"),
                }
            time.sleep(0.5)  # and what the node does once the frame is over
            return record

        record, peak = peak_rss_during(pid, big_frame)
        record.update(rss_peak_mib=round(peak), rss_after_mib=round(rss_mib(pid)))
        for h2, w2 in ordinary:
            post(port, capability, h2, w2)
        record["rss_after_ordinary_mib"] = round(rss_mib(pid))
        out[f"big {h}x{w}"] = record
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_return", description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--capabilities", default="depth,segmentation,pose")
    parser.add_argument("--ordinary", default="512x512,720x1280", help="HxW,... frames of the usual kind")
    parser.add_argument("--big", default="2160x3840", help="HxW,... the expensive frames")
    parser.add_argument("--reps", type=int, default=5, help="ordinary frames timed per size")
    parser.add_argument("--keep-arena-pixels", type=int, default=None, help="the node's setting (default: its own)")
    parser.add_argument("--request-timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    ordinary = [size(s) for s in args.ordinary.split(",")]
    big = [size(s) for s in args.big.split(",") if s]
    settings = {"request_timeout_s": args.request_timeout_s, "hang_timeout_s": 3600}
    if args.keep_arena_pixels is not None:
        settings["keep_arena_pixels"] = args.keep_arena_pixels
    for capability in args.capabilities.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            node = nodeproc.spawn(args.engines, Path(tmp) / "node.log", capabilities=capability, **settings)
            try:
                nodeproc.wait_ready(node, timeout=300)
                result = measure(node, capability, ordinary, big, args.reps)
            finally:
                node.stop()
        print(json.dumps({"settings": settings, **result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
