"""Cold start: process start -> /ready 200 -> first successful inference, over several starts."""

from __future__ import annotations

import http.client
import tempfile
import time
from pathlib import Path

from vision_node import samples

from . import nodeproc, report
from .overhead import bodies, post
from .report import progress
from .stats import summarise


def run(args) -> int:
    runs = []
    frame = samples.frame(*args.size)
    body, content_type, _ = bodies(frame)["raw in, raw out"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            node = nodeproc.spawn(args.engines, Path(tmp) / f"node-{i}.log")
            try:
                ready_s = nodeproc.wait_ready(node)
                first = {}
                conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
                for capability in nodeproc.capabilities(node.port):
                    post(conn, f"/infer/{capability}", body, content_type)
                    first[capability] = time.perf_counter() - node.spawned
                conn.close()
            finally:
                node.stop()
            runs.append({"ready_s": ready_s, "first_inference_s": first})
            progress(
                f"start {i + 1}/{args.runs}: ready {ready_s:.2f} s, "
                + ", ".join(f"first {c} {s:.2f} s" for c, s in first.items())
            )
    ready = summarise([r["ready_s"] for r in runs])
    rows = [{"measure": "start -> /ready 200", **{k: ready[k] / 1000 for k in ("min", "p50", "p95", "max")}}]
    for capability in runs[0]["first_inference_s"]:
        s = summarise([r["first_inference_s"][capability] for r in runs])
        rows.append(
            {"measure": f"start -> first {capability}", **{k: s[k] / 1000 for k in ("min", "p50", "p95", "max")}}
        )
    rows = [{"measure": r["measure"], **{f"{k} s": v for k, v in r.items() if k != "measure"}} for r in rows]
    notes = [
        f"{args.runs} starts of `vision-node serve` (fresh process each; the OS file cache is warm after the first)",
        "ready = first 200 from /ready (every graph loaded, hashed and warm); first inference: one raw "
        f"{args.size[0]}x{args.size[1]} frame per capability, in turn, right after ready",
    ]
    prov = report.provenance({"engines": str(args.engines)})
    report.write({"provenance": prov, "runs": runs, "rows": rows}, "Cold start", rows, notes, args.json, args.markdown)
    return 0
