"""What an orchestrator's health polling costs the node: ``/ready`` and ``/health`` over HTTP.

go-livepeer polls a static live runner's ``health_url`` every 5 s (3 s timeout); a BYOC
supervisor polls ``/health``. Each probe is timed at the client, and the node process's CPU time
(``/proc/<pid>/stat``: user + system) is read before and after, so the cost per probe and the
share of one core at the orchestrator's rate come from the same run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from . import nodeproc, report, stats
from .report import progress

POLL_INTERVAL_S = 5.0  # go-livepeer's health poll


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run(args) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node):.2f} s")
            for path in args.paths:
                for _ in range(args.warmup):
                    nodeproc.get(node.port, path)
                cpu_before, seconds = _cpu_seconds(node.proc.pid), []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    status, _ = nodeproc.get(node.port, path)
                    seconds.append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"{path} answered {status}")
                cpu_ms = (_cpu_seconds(node.proc.pid) - cpu_before) * 1000 / args.requests
                summary = stats.summarise(seconds)
                rows.append(
                    {
                        "probe": f"GET {path}",
                        "requests": args.requests,
                        **{f"{p} ms": summary[p] for p in ("p50", "p99", "max")},
                        "node CPU ms / probe": cpu_ms,
                        "one core at 1 probe / 5 s, %": cpu_ms / (POLL_INTERVAL_S * 1000) * 100,
                    }
                )
                progress(f"{path}: p50 {summary['p50']:.2f} ms, node CPU {cpu_ms:.3f} ms per probe")
        finally:
            node.stop()
    notes = [
        "one probe at a time on a fresh connection, as a poller does; client latency includes connecting",
        "node CPU: the node process's user + system time over the timed probes (/proc), divided by their number "
        "(kernel clock ticks: 10 ms resolution over the whole run)",
        f"share of one core: that cost at go-livepeer's health poll, one probe every {POLL_INTERVAL_S:g} s",
    ]
    report.write(
        {"provenance": report.provenance({"engines": str(args.engines)}), "rows": rows},
        "Health probes: latency and node CPU per probe",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0
