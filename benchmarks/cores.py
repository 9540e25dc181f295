"""``python -m benchmarks cores``: how the node's host path scales with CPU cores, and the GIL-held time per request.

The node serves the STAND-IN engine (``benchmarks.standin``: ``--standin-ms`` per frame, 2 ms by default, with the
GIL released, as TensorRT's ``execute_async_v3`` + synchronise do), so everything measured is the host path a GPU
node runs around its network: HTTP, JPEG decode, queue hand-offs, render, encode. The stand-in's maps are a
gradient (depth), stripes (segmentation) and no person (pose), which encode smaller and faster than a real
model's maps: the encode figures here are a floor, ``frame-cost`` has the demo weights' real maps.

The sweep. One node process per ``--cores`` count, pinned with ``taskset -c`` to the first k CPUs this process may
use; the load generator is ``wrk`` (C, epoll: a few percent of a core at these rates) with a Lua script that POSTs
one 720p JPEG q90 photograph (scikit-image's astronaut, as ``frame-cost``) and prints its summary as JSON from
``done()``; wrk (and py-spy) run on the CPUs left over, and share the node's CPUs when none are left (the
2-core run on a 2-core machine, the 16-core run on a 16-core one: the report says so). For every case
(capability/output) and concurrency (closed loop, keep-alive connections): frames/s (2xx responses / duration),
latency p50/p99 from wrk's histogram, non-2xx and socket errors, and the node's CPU time per frame from
``/proc/<pid>/task/<tid>/stat`` (utime + stime over the run, divided by the frames the node served, from its own
``/metrics`` counters so in-flight requests at the end are counted once), split by thread: the event loop (the
main thread), the capability workers (``infer-<name>``: the stand-in's wait and the hand-back), the AnyIO
pool (``run_in_threadpool``: JPEG decode, encode), asyncio's default executor, and threads that exited during
the run. The stand-in names each OS thread after its Python thread so /proc can tell them apart.

The GIL-held time per request is measured with py-spy (``record --gil --idle --nonblocking -r 1000 --format raw
--threads``) attached to the node during a closed-loop run of its own (``--profile-cases``, ``--profile-cores``,
``--profile-concurrency``): with ``--gil`` py-spy keeps, in each sample, only the thread whose thread state holds
the GIL (on 3.11, ``_PyRuntime.gilstate.tstate_current``, NULL while the GIL is free), so samples / rate is the
time the GIL was held, and that / frames served is the GIL-held time per request. Why this method:

- it measures the GIL itself, not CPU time: numpy, zlib, libjpeg-turbo and Pillow release the GIL in part of
  their work, so thread CPU time (also reported) overstates the serial part, and being descheduled while
  holding the GIL (it happens on one core) is GIL time that no CPU counter shows;
- ``--nonblocking``: the default mode stops the process for every sample and undercounts by half or more at
  1000 Hz (measured: 0.22 s for 0.89 s held); non-blocking sampling reads a torn stack now and then (py-spy's
  "Errors", reported) but its count is right. Every run CALIBRATES it first: a process whose thread holds the
  GIL in a pure-Python loop for a known time (3 ms in 10), sampled the same way; the ratio is in the report;
- it also says WHERE the time goes: the stacks, grouped by thread and by function (self: the innermost
  Python frame, where a C call made from Python counts; inclusive: the node's own functions on the stack).

It gives the MEAN per request (the samples cannot be told apart by request), with its sampling error
(sqrt(samples)); a p50 would need the node instrumented, which this benchmark does not do. Needs ptrace
(root, or CAP_SYS_PTRACE, or kernel.yama.ptrace_scope 0); without py-spy or ptrace the sweep and the CPU
split still run and the report says the GIL was not measured.

From these, per case: the best frames/s at each core count and its factor over one core; the ceiling
``cores / host CPU per frame`` (the node's CPU time per frame at one core, all threads); the capability
worker's ceiling ``1 / infer`` (one worker thread per capability runs the network, one frame at a time with
``--max-batch 1``; render runs with encode in the pool), from X-Metadata's p50 of sequential requests; and the
GIL's ceiling ``1 / GIL-held per request``, which no number of cores lifts.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import nodeproc, report
from .report import progress

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_MANIFEST = Path(__file__).with_name("standin_manifest.json")
# Each capability's default output and its JPEG one (segmentation has none: palette and classes are PNG).
DEFAULT_CASES = ("depth/controlnet", "depth/jpeg", "segmentation/palette", "pose/json", "pose/jpeg")
PROFILED_CASES = ("depth/controlnet", "depth/jpeg", "segmentation/palette")
INSTALL_WRK = (
    "wrk is not installed: Debian/Ubuntu `sudo apt-get install -y wrk` (as root: `apt-get install -y "
    "wrk`), macOS `brew install wrk`; or pass --wrk PATH"
)
INSTALL_PYSPY = "py-spy is not installed: `pip install py-spy` (or pass --py-spy PATH)"
GROUPS = ("event loop", "infer workers", "AnyIO pool", "asyncio executor", "other threads", "exited threads")
MARK = "CORES-JSON "

# wrk's script: the body read once, then one JSON line with the summary (latencies in microseconds).
LUA = """wrk.method = "POST"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%(mark)s{"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%.1f, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


# ------------------------------------------------------------------------------------------------ parsing


def parse_wrk(stdout: str) -> dict:
    """The summary ``done()`` printed: requests, duration s, non-2xx, socket errors, p50/p99/mean/max ms."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary line:\n{stdout[-2000:]}")
    raw = json.loads(line[len(MARK) :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "non2xx": raw["non2xx"],
        "socket errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "fps": (raw["requests"] - raw["non2xx"]) / seconds if seconds > 0 else 0.0,
        **{f"{k} ms": raw[f"{k}_us"] / 1000 for k in ("p50", "p99", "mean", "max")},
    }


_METRIC = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>.*)\}\s+(?P<value>\S+)$")


def parse_metrics(text: str) -> dict:
    """From the node's /metrics: frames served per capability (stage total count), per-stage sums and counts,
    and /infer responses by status. Missing names give empty dicts (the node's metrics may change)."""
    out = {"stage_sum": {}, "stage_count": {}, "responses": Counter()}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        name, value = m["name"], float(m["value"])
        if name in ("vision_node_stage_seconds_sum", "vision_node_stage_seconds_count"):
            key = (labels.get("capability"), labels.get("stage"))
            out["stage_sum" if name.endswith("_sum") else "stage_count"][key] = value
        elif name == "vision_node_responses_total" and "infer" in labels.get("route", ""):
            out["responses"][labels.get("status", "?")] += value
    return out


def served(before: dict, after: dict, capability: str) -> int | None:
    """Frames the node finished between two /metrics reads (None when it has no such counter)."""
    key = (capability, "total")
    if key not in after["stage_count"]:
        return None
    return int(after["stage_count"][key] - before["stage_count"].get(key, 0))


def stage_means(before: dict, after: dict, capability: str) -> dict[str, float]:
    """Mean ms per stage over the run, from the node's histograms (under load, unlike X-Metadata's probe)."""
    means = {}
    for (cap, stage), count in after["stage_count"].items():
        n = count - before["stage_count"].get((cap, stage), 0)
        if cap == capability and n > 0:
            means[stage] = (after["stage_sum"][(cap, stage)] - before["stage_sum"].get((cap, stage), 0)) / n * 1000
    return means


def group_of(name: str, main: bool) -> str:
    """A thread's group, from its OS name (the stand-in sets it from the Python name, 15 characters)."""
    if main:
        return "event loop"
    if name.startswith("infer-"):
        return "infer workers"
    if name.startswith("AnyIO worker"):
        return "AnyIO pool"
    if name.startswith(("asyncio_", "uvloop_", "ThreadPoolExecu")):
        return "asyncio executor"
    return "other threads"


def _ticks(stat: str) -> int:
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_snapshot(pid: int) -> dict:
    """The process's CPU ticks (all threads, living and exited) and each living thread's (name, ticks)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[int(task.name)] = ((task / "comm").read_text().strip(), _ticks((task / "stat").read_text()))
        except (OSError, ValueError, IndexError):
            continue  # it exited between the listing and the read
    return {"process": _ticks(Path(f"/proc/{pid}/stat").read_text()), "threads": threads}


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has spent busy (not idle, not waiting for I/O) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # up to steal; guests are in user


def own_seconds() -> float:
    """CPU seconds of this process and its finished children (wrk, py-spy, the calibration)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def cpu_split(before: dict, after: dict, pid: int) -> dict[str, float]:
    """CPU seconds per thread group between two snapshots; 'exited threads' is the process's total minus the
    living threads' (threads that ended within the run, and what the living ones spent before an exit)."""
    tick = os.sysconf("SC_CLK_TCK")
    split = dict.fromkeys(GROUPS, 0.0)
    for tid, (name, ticks) in after["threads"].items():
        start = before["threads"].get(tid, (name, 0))[1]
        split[group_of(name, tid == pid)] += (ticks - start) / tick
    total = (after["process"] - before["process"]) / tick
    split["exited threads"] = max(0.0, total - sum(split.values()))
    split["total"] = total
    return split


@dataclass
class Stack:
    thread: str  # "thread (tid): name" as py-spy --threads writes it
    frames: list[str]  # outermost first, "function (file:line)"
    count: int


def parse_pyspy_raw(text: str) -> list[Stack]:
    """py-spy's ``--format raw`` (collapsed stacks ``a;b;c COUNT``), with ``--threads``' label as the first frame."""
    stacks = []
    for line in text.splitlines():
        if not line.strip():
            continue
        folded, _, count = line.rpartition(" ")
        frames = folded.split(";")
        thread = frames[0] if frames[0].startswith("thread (") else ""
        stacks.append(Stack(thread, frames[1:] if thread else frames, int(count)))
    return stacks


_THREAD = re.compile(r"thread \((?P<tid>\w+)\)(?::\s*(?P<name>.*))?")
_LINE = re.compile(r":\d+\)$")
# Frames every stack of a thread kind shares: no information about what costs.
ROOTS = (
    "Thread._bootstrap ",
    "Thread._bootstrap_inner ",
    "Thread.run ",
    "_run_module_as_main ",
    "_run_code ",
    "<module> ",
    "main (benchmarks/standin",
    "serve (vision_node/cli",
    "Server.run ",
    "asyncio_run ",
    "Runner.run ",
    "WorkerThread.run ",
    "_worker (concurrent",
)


def _function(frame: str) -> str:
    return _LINE.sub(")", frame)


def gil_breakdown(stacks: list[Stack], rate: float, frames: int, pid: int, top: int = 12) -> dict:
    """GIL-held ms per frame in all, by thread group, by innermost function (self) and by the node's functions on
    the stack (inclusive); each with its share of the GIL samples."""
    samples = sum(s.count for s in stacks)
    per = 1000 / rate / frames if frames else math.nan

    def ranked(counter: Counter) -> list[dict]:
        return [
            {"function": k, "ms per frame": v * per, "share %": 100 * v / samples} for k, v in counter.most_common(top)
        ]

    groups, own, inclusive, lines = Counter(), Counter(), Counter(), {}
    for s in stacks:
        m = _THREAD.match(s.thread)
        tid = int(m["tid"], 16) if m and m["tid"].startswith("0x") else int(m["tid"]) if m else -1
        groups[group_of((m["name"] or "") if m else "", tid == pid)] += s.count
        if s.frames:
            leaf = _function(s.frames[-1])
            own[leaf] += s.count
            lines.setdefault(leaf, Counter())[s.frames[-1]] += s.count
        for name in {_function(f) for f in s.frames if "vision_node/" in f and not f.startswith(ROOTS)}:
            inclusive[name] += s.count
    self_rows = ranked(own)
    for row in self_rows:  # the line most of a function's samples sit on: a C call made there, usually
        row["top line"] = lines[row["function"]].most_common(1)[0][0].rsplit(":", 1)[-1].rstrip(")")
    return {
        "samples": samples,
        "ms per frame": samples * per,
        "error ms per frame": math.sqrt(samples) * per,
        "groups ms per frame": {g: groups[g] * per for g in GROUPS if groups[g]},
        "self": self_rows,
        "inclusive": ranked(inclusive),
    }


# ------------------------------------------------------------------------------------------------ the tools


def find_wrk(path: str | None, debs: Path | None, scratch: Path) -> tuple[list[str], dict]:
    """wrk's command and environment: ``path``, or wrk on PATH, or Debian's wrk unpacked from the .deb files
    in ``debs`` (what ``gpu-check --download`` carries to a machine without network). SystemExit saying how
    to install it otherwise."""
    found = path or shutil.which("wrk")
    if found:
        return [found], dict(os.environ)
    packages = sorted(debs.glob("*.deb")) if debs and debs.is_dir() else []
    if packages and shutil.which("dpkg-deb"):
        root = scratch / "wrk-deb"
        for deb in packages:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        binary = root / "usr/bin/wrk"
        if binary.is_file():
            libs = [str(p) for p in root.glob("usr/lib/*-linux-gnu")]
            env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])}
            return [str(binary)], env
    raise SystemExit(f"cores: {INSTALL_WRK}")


def find_pyspy(path: str | None) -> str | None:
    if path:
        return path
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def cpu_plan(cores: list[int]) -> tuple[list[int], list[int]]:
    """The CPUs this process may use, and the core counts that fit in them."""
    allowed = sorted(os.sched_getaffinity(0))
    fitting = [k for k in cores if 1 <= k <= len(allowed)]
    for k in cores:
        if k not in fitting:
            progress(f"cores: skipping {k} cores: this process may use {len(allowed)} CPU(s)")
    return allowed, fitting


def _taskset(cpus: list[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def standin_engines(source: Path, folder: Path) -> Path:
    """An engines directory for the stand-in: ``source``'s manifest (a manifest.json or a folder holding one) with
    every graph it lists replaced by a small placeholder of the size and SHA-256 the copy names. The stand-in
    reads the capabilities, sizing, outputs and bounds, never the graphs; the node still checks every file it
    would load, and hashing a 400 MB pose graph at each start is not what is measured here."""
    path = source / "manifest.json" if source.is_dir() else source
    manifest = json.loads(path.read_text())
    folder.mkdir(parents=True, exist_ok=True)

    def placeholder(entry: dict) -> None:
        data = f"stand-in placeholder for {entry['path']} ({entry.get('sha256', '')})\n".encode()
        (folder / entry["path"]).write_bytes(data)
        entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()

    def every_file(record: dict) -> None:  # the graph, its fp16 twin, their TensorRT variants, the optimised copy
        if "path" in record and "sha256" in record:
            placeholder(record)
        for value in record.values():
            if isinstance(value, dict):
                every_file(value)

    for entry in manifest["capabilities"].values():
        for graph in entry["graphs"]:
            every_file(graph)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def photograph_jpeg(h: int, w: int) -> bytes:
    """frame-cost's photograph (scikit-image's astronaut, resized), JPEG q90 as Pillow writes it."""
    from PIL import Image

    from .framecost import photograph

    out = io.BytesIO()
    Image.fromarray(photograph(h, w)).save(out, format="JPEG", quality=90)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------ the node


class Node:
    """The stand-in node pinned to ``cpus``."""

    def __init__(self, args, engines: Path, cpus: list[int], capabilities: list[str], log: Path):
        self.port = nodeproc.free_port()
        env = {
            **os.environ,
            "VISION_NODE_ENGINES": str(engines),
            "VISION_NODE_PORT": str(self.port),
            "VISION_NODE_QUEUE_SIZE": str(args.queue_size or max(args.concurrency)),
            "VISION_NODE_MAX_BATCH": str(args.max_batch),
            "VISION_NODE_CAPABILITIES": ",".join(capabilities),
            "VISION_NODE_LOG_LEVEL": "warning",
            "VISION_NODE_STREAM_CAPACITY": "0",
        }
        command = [*_taskset(cpus), sys.executable, "-m", "benchmarks.standin", "--standin-ms", str(args.standin_ms)]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=out, cwd=ROOT)
        self.pid = self.proc.pid  # taskset execs the Python: the same pid
        nodeproc.wait_ready(nodeproc.NodeProcess(self.proc, self.port, log, time.perf_counter()))

    def metrics(self) -> dict:
        status, body = nodeproc.get(self.port, "/metrics")
        return parse_metrics(body.decode()) if status == 200 else parse_metrics("")

    def probe(self, path: str, body: bytes, n: int) -> dict[str, float]:
        """X-Metadata's stages, p50 ms over ``n`` sequential requests (after one untimed)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        timings = []
        try:
            for i in range(n + 1):
                conn.request("POST", path, body, {"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
                if i:
                    timings.append(json.loads(response.getheader("X-Metadata"))["timings_ms"])
        finally:
            conn.close()
        return {k: float(np.median([t.get(k, np.nan) for t in timings])) for k in timings[0]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Load:
    """wrk against one URL, on the CPUs the node does not have (or unpinned when it has them all)."""

    def __init__(self, wrk: list[str], env: dict, cpus: list[int], script: Path):
        self.wrk, self.env, self.cpus, self.script = wrk, env, cpus, script

    def run(self, url: str, connections: int, seconds: int) -> dict:
        threads = max(1, min(connections, len(self.cpus) or 2, 4))
        command = [
            *_taskset(self.cpus),
            *self.wrk,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(self.script),
            url,
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:]}")
        return parse_wrk(done.stdout)


def measured_run(
    node: Node, load: Load, url: str, capability: str, connections: int, seconds: int, during=None
) -> dict:
    """One closed-loop run: wrk's figures, the frames the node served, its CPU split and stage means; ``during``:
    a context manager around the run (py-spy), entered after the first snapshot and left before the second."""
    metrics_before = node.metrics()
    cpu_before = cpu_snapshot(node.pid)
    machine_before, own_before, started = machine_busy(), own_seconds(), time.perf_counter()
    if during is not None:
        during.__enter__()
    try:
        result = load.run(url, connections, seconds)
        time.sleep(0.3)  # the requests in flight when wrk stopped finish (they are counted as served)
    finally:
        if during is not None:
            during.__exit__(None, None, None)
    cpu_after = cpu_snapshot(node.pid)
    machine, own, wall = machine_busy() - machine_before, own_seconds() - own_before, time.perf_counter() - started
    metrics_after = node.metrics()
    frames = served(metrics_before, metrics_after, capability)
    result["served"] = frames if frames is not None else result["requests"]
    result["cpu s"] = cpu_split(cpu_before, cpu_after, node.pid)
    # Other work on the machine meanwhile (other processes), in cores: what makes a row not comparable.
    result["other work cores"] = max(0.0, machine - result["cpu s"]["total"] - own) / wall
    result["stage means ms"] = stage_means(metrics_before, metrics_after, capability)
    return result


class PySpy:
    """py-spy recording the GIL holder's stacks while the ``with`` block runs (stopped with SIGINT)."""

    def __init__(self, pyspy: str, pid: int, rate: int, out: Path, cpus: list[int]):
        self.command = [
            *_taskset(cpus),
            pyspy,
            "record",
            "--gil",
            "--idle",
            "--nonblocking",
            "--threads",
            "-r",
            str(rate),
            "--format",
            "raw",
            "-o",
            str(out),
            "-p",
            str(pid),
        ]
        self.out, self.log = out, ""

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.perf_counter()
        lines = []
        for line in self.proc.stdout:  # it says so once attached
            lines.append(line)
            if "Sampling process" in line:
                break
        else:
            self.proc.wait()
            raise RuntimeError("py-spy could not attach: " + "".join(lines)[-1500:])
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.proc.send_signal(signal.SIGINT)
        self.log = self.proc.stdout.read()
        self.proc.wait(30)
        return False

    def errors(self) -> int:
        m = re.search(r"Errors: (\d+)", self.log)
        return int(m.group(1)) if m else 0

    def behind(self) -> bool:
        return "behind" in self.log.lower()


CALIBRATION = """
import sys, threading, time
held = 0.0
def busy():  # holds the GIL 3 ms in every 10 (a pure-Python loop), sleeps the rest
    global held
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.003:
            pass
        held += time.perf_counter() - t
        time.sleep(0.007)
def idle():
    threading.Event().wait()
for f in (busy, idle, idle):
    threading.Thread(target=f, daemon=True).start()
for _ in sys.stdin:
    print(held, flush=True)
"""


def calibrate(pyspy: str, rate: int, seconds: float, cpus: list[int], pyspy_cpus: list[int], scratch: Path) -> dict:
    """py-spy's GIL-held estimate against a thread that knows how long it held the GIL."""
    proc = subprocess.Popen(
        [*_taskset(cpus), sys.executable, "-c", CALIBRATION], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def held() -> float:
        proc.stdin.write("\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    try:
        time.sleep(0.3)
        spy = PySpy(pyspy, proc.pid, rate, scratch / "calibration.txt", pyspy_cpus)
        with spy:
            start = held()
            time.sleep(seconds)
            true = held() - start
        estimate = sum(s.count for s in parse_pyspy_raw(spy.out.read_text())) / rate
    finally:
        proc.kill()
        proc.wait()
    return {
        "held s": true,
        "py-spy s": estimate,
        "ratio": estimate / true if true else math.nan,
        "errors": spy.errors(),
        "behind": spy.behind(),
    }


# ------------------------------------------------------------------------------------------------ the run


def add_arguments(p) -> None:
    lst = lambda kind: lambda text: [kind(v) for v in text.split(",") if v]  # noqa: E731
    p.add_argument(
        "--engines",
        type=Path,
        default=Path("engines/real"),
        help="engines directory whose manifest names the capabilities, graphs and bounds (its graphs are "
        "not read; default: engines/real, else the copy in benchmarks/standin_manifest.json)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown (and a PNG beside it)")
    p.add_argument(
        "--standin-ms", type=float, default=2.0, help="the stand-in network's time, GIL released (default: 2)"
    )
    p.add_argument(
        "--cases",
        type=lst(str),
        default=list(DEFAULT_CASES),
        metavar="CAP/OUTPUT,...",
        help="capability/output pairs (default: each capability's default output and jpeg; segmentation has no jpeg)",
    )
    p.add_argument(
        "--cores",
        type=lst(int),
        default=[1, 2],
        metavar="K,...",
        help="the node pinned to the first K CPUs, one node per K (default: 1,2; a 16-core machine: 1,2,4,8,16)",
    )
    p.add_argument(
        "--concurrency",
        type=lst(int),
        default=[1, 2, 4, 8, 16, 32],
        metavar="N,...",
        help="closed-loop connections (default: 1,2,4,8,16,32)",
    )
    p.add_argument("--duration", type=int, default=3, help="seconds per level, whole (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of untimed load per case and node (default: 1)")
    p.add_argument("--size", default="720x1280", metavar="HxW", help="the JPEG frame's size (default: 720x1280)")
    p.add_argument(
        "--queue-size",
        type=int,
        default=0,
        help="the node's queue size (default: the largest concurrency, so that nothing is refused)",
    )
    p.add_argument("--max-batch", type=int, default=1, help="the node's --max-batch (default: 1, as serve)")
    p.add_argument(
        "--probe-requests",
        type=int,
        default=15,
        help="sequential requests per case for X-Metadata's stages (default: 15)",
    )
    p.add_argument(
        "--profile-cases",
        type=lst(str),
        default=list(PROFILED_CASES),
        metavar="CAP/OUTPUT,...",
        help="cases whose GIL-held time py-spy measures (default: depth/controlnet,depth/jpeg,segmentation/palette)",
    )
    p.add_argument(
        "--profile-cores",
        type=lst(int),
        default=[1],
        metavar="K,...",
        help="core counts of the GIL profile (default: 1)",
    )
    p.add_argument(
        "--profile-concurrency",
        type=lst(int),
        default=[1, 8],
        metavar="N,...",
        help="connections of the GIL profile (default: 1,8)",
    )
    p.add_argument("--profile-seconds", type=int, default=4, help="seconds per profiled run (default: 4)")
    p.add_argument("--rate", type=int, default=1000, help="py-spy's samples per second (default: 1000)")
    p.add_argument("--no-profile", action="store_true", help="no py-spy: the sweep and the CPU split only")
    p.add_argument("--wrk", help="the wrk binary (default: wrk on PATH)")
    p.add_argument(
        "--wrk-debs",
        type=Path,
        help="where wrk is not installed: a folder with Debian's wrk and libluajit .deb files to unpack",
    )
    p.add_argument("--py-spy", dest="pyspy", help="the py-spy binary (default: py-spy on PATH or beside the Python)")


def _cases(texts: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for text in texts:
        capability, _, output = text.partition("/")
        if not output:
            raise SystemExit(f"cores: a case is CAPABILITY/OUTPUT, got {text!r}")
        pairs.append((capability, output))
    return pairs


def run(args) -> int:
    cases, profiled = _cases(args.cases), _cases(args.profile_cases)
    h, w = (int(v) for v in args.size.lower().split("x"))
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    progress(f"cores: load average {' '.join(loadavg)} (1, 5, 15 min)")
    allowed, core_counts = cpu_plan(args.cores)
    _, profile_cores = cpu_plan(args.profile_cores) if not args.no_profile else (allowed, [])
    source = args.engines if (args.engines / "manifest.json").is_file() or args.engines.is_file() else None
    if source is None:
        progress(f"cores: no manifest in {args.engines}: using {COMMITTED_MANIFEST.name} (engines/real's)")
        source = COMMITTED_MANIFEST
    notes, runs, profiles = [], [], []
    calibration = None
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        wrk, wrk_env = find_wrk(args.wrk, args.wrk_debs, scratch)
        pyspy = None if args.no_profile else find_pyspy(args.pyspy)
        if not args.no_profile and pyspy is None:
            progress(f"cores: {INSTALL_PYSPY}; the GIL is not measured")
            notes.append(f"GIL NOT MEASURED: {INSTALL_PYSPY}")
            profile_cores = []
        engines = standin_engines(source, scratch / "engines")
        body_path = scratch / "frame.jpg"
        body = photograph_jpeg(h, w)
        body_path.write_bytes(body)
        script = scratch / "post.lua"
        script.write_text(LUA % {"body": json.dumps(str(body_path)), "mark": MARK})
        capabilities = sorted({c for c, _ in cases + profiled})
        for k in core_counts:
            node_cpus, rest = allowed[:k], allowed[k:]
            load = Load(wrk, wrk_env, rest, script)
            node = Node(args, engines, node_cpus, capabilities, scratch / f"node-{k}.log")
            progress(f"cores: node on CPU {node_cpus}, wrk on {rest or 'all CPUs (shared with the node)'}")
            try:
                if not runs:  # every case answers before any is measured: a wrong one fails now, not at the end
                    for capability, output in dict.fromkeys(cases + profiled):
                        try:
                            node.probe(f"/infer/{capability}/{output}", body, 1)
                        except RuntimeError as err:
                            raise SystemExit(f"cores: {capability}/{output}: {err}") from None
                for capability, output in cases:
                    path = f"/infer/{capability}/{output}"
                    url = f"http://127.0.0.1:{node.port}{path}"
                    load.run(url, max(args.concurrency), args.warmup)
                    stages = node.probe(path, body, args.probe_requests)
                    for c in args.concurrency:
                        r = measured_run(node, load, url, capability, c, args.duration)
                        r.update(
                            capability=capability, output=output, cores=k, concurrency=c, stages=stages, shared=not rest
                        )
                        runs.append(r)
                        progress(_line(r))
            finally:
                node.stop()
        if pyspy and profile_cores:
            try:
                k = profile_cores[0]
                calibration = calibrate(pyspy, args.rate, 3.0, allowed[:k], allowed[k:], scratch)
                progress(f"cores: py-spy calibration: {calibration}")
            except (RuntimeError, OSError) as err:
                progress(f"cores: py-spy cannot sample here ({err}); the GIL is not measured")
                notes.append(
                    f"GIL NOT MEASURED: py-spy could not attach ({str(err)[:200]}): it needs ptrace (root, "
                    "CAP_SYS_PTRACE or kernel.yama.ptrace_scope 0)"
                )
                profile_cores = []
        try:
            profile(
                args,
                pyspy,
                profile_cores,
                profiled,
                capabilities,
                allowed,
                engines,
                wrk,
                wrk_env,
                script,
                scratch,
                profiles,
            )
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:  # the sweep's figures still stand
            progress(f"cores: the GIL profile failed: {err}")
            notes.append(f"GIL PROFILE FAILED: {str(err)[:300]}")
    rows = [_row(r) for r in runs]
    scaling = scaling_rows(runs, profiles)
    gil_rows = [_gil_row(p) for p in profiles]
    notes += _notes(args, allowed, core_counts, loadavg, source, calibration, runs)
    prov = report.provenance(
        {
            "standin_ms": args.standin_ms,
            "frame": f"{h}x{w}",
            "jpeg_bytes": len(body),
            "manifest": str(source),
            "loadavg_before": " ".join(loadavg),
            "node_cpus": {k: allowed[:k] for k in core_counts},
        }
    )
    title = f"Host path against CPU cores (stand-in engine {args.standin_ms:g} ms, {h}x{w} JPEG in)"
    data = {
        "provenance": prov,
        "runs": runs,
        "rows": rows,
        "scaling": scaling,
        "gil": gil_rows,
        "profiles": profiles,
        "calibration": calibration,
    }
    report.write(data, title, rows, notes, args.json, None)
    sections = _sections(scaling, gil_rows, profiles, calibration)
    print("\n" + sections)
    if args.markdown:
        png = Path(args.markdown).with_suffix(".png")
        drawn = plot(runs, png, title)
        text = report.markdown(title, rows, prov, notes, png.name if drawn else None)
        head, _, tail = text.partition("Provenance:\n")
        Path(args.markdown).write_text(head + sections + "\nProvenance:\n" + tail)
        progress(f"wrote {args.markdown}" + (f" and {png}" if drawn else ""))
    return 0


def profile(
    args,
    pyspy,
    profile_cores,
    profiled,
    capabilities,
    allowed,
    engines,
    wrk,
    wrk_env,
    script,
    scratch,
    profiles: list[dict],
) -> None:
    """py-spy on the node during closed-loop runs of the profiled cases; each run appended to ``profiles``."""
    for k in profile_cores:
        node_cpus, rest = allowed[:k], allowed[k:]
        load = Load(wrk, wrk_env, rest, script)
        node = Node(args, engines, node_cpus, capabilities, scratch / f"node-profile-{k}.log")
        try:
            for capability, output in profiled:
                path = f"/infer/{capability}/{output}"
                url = f"http://127.0.0.1:{node.port}{path}"
                load.run(url, max(args.profile_concurrency), args.warmup)
                for c in args.profile_concurrency:
                    spy = PySpy(pyspy, node.pid, args.rate, scratch / f"gil-{capability}-{output}-{k}-{c}.txt", rest)
                    r = measured_run(node, load, url, capability, c, args.profile_seconds, during=spy)
                    stacks = parse_pyspy_raw(spy.out.read_text())
                    r.update(
                        capability=capability,
                        output=output,
                        cores=k,
                        concurrency=c,
                        shared=not rest,
                        window_s=spy.seconds,
                        rate=args.rate,
                        pyspy_errors=spy.errors(),
                        pyspy_behind=spy.behind(),
                        gil=gil_breakdown(stacks, args.rate, r["served"], node.pid),
                    )
                    profiles.append(r)
                    progress(f"{_line(r)}  GIL {r['gil']['ms per frame']:.2f} ms/frame")
        finally:
            node.stop()


def _line(r: dict) -> str:
    return (
        f"{r['capability']}/{r['output']} {r['cores']} core(s) x{r['concurrency']}: {r['fps']:.0f} fps, "
        f"p50 {r['p50 ms']:.1f} ms, p99 {r['p99 ms']:.1f} ms, non-2xx {r['non2xx']}, "
        f"CPU {1000 * r['cpu s']['total'] / max(r['served'], 1):.2f} ms/frame"
    )


def _per_frame(r: dict, group: str) -> float:
    return 1000 * r["cpu s"][group] / r["served"] if r["served"] else math.nan


def _worker_ms(r: dict) -> float:
    """The capability worker's time per frame under load: the infer mean (the node's histograms). The worker runs
    the network only; render runs with encode in the pool."""
    return r["stage means ms"].get("infer", math.nan)


def _row(r: dict) -> dict:
    cpu = _per_frame(r, "total")
    return {
        "capability": r["capability"],
        "output": r["output"],
        "cores": r["cores"],
        "concurrency": r["concurrency"],
        "frames/s": r["fps"],
        "p50 ms": r["p50 ms"],
        "p99 ms": r["p99 ms"],
        "non-2xx": r["non2xx"],
        "socket errors": r["socket errors"],
        "node CPU ms/frame": cpu,
        "loop ms/frame": _per_frame(r, "event loop"),
        "infer ms/frame": _per_frame(r, "infer workers"),
        "pool ms/frame": _per_frame(r, "AnyIO pool"),
        "other ms/frame": _per_frame(r, "asyncio executor")
        + _per_frame(r, "other threads")
        + _per_frame(r, "exited threads"),
        "node CPU %": r["fps"] * cpu / 10 / r["cores"],
        "worker ms (infer)": _worker_ms(r),
        "worker busy %": r["fps"] * _worker_ms(r) / 10,
        "other work, cores": r["other work cores"],
    }


def scaling_rows(runs: list[dict], profiles: list[dict]) -> list[dict]:
    """Per case and core count: the best frames/s, its factor over one core, and the ceilings beside it."""
    rows = []
    for case in dict.fromkeys((r["capability"], r["output"]) for r in runs):
        mine = [r for r in runs if (r["capability"], r["output"]) == case]
        best = {
            k: max((r for r in mine if r["cores"] == k), key=lambda r: r["fps"])
            for k in sorted({r["cores"] for r in mine})
        }
        one = best.get(1)
        cpu_one = _per_frame(one, "total") if one else math.nan
        stages = mine[0]["stages"]
        worker = stages.get("infer", math.nan)
        host = sum(stages.get(s, 0.0) for s in ("read", "decode", "render", "encode"))
        # The GIL under load: the profile at the fewest cores and the most connections.
        theirs = sorted(
            (p for p in profiles if (p["capability"], p["output"]) == case),
            key=lambda p: (p["cores"], -p["concurrency"]),
        )
        gil = [theirs[0]["gil"]["ms per frame"]] if theirs else []
        for k, r in best.items():
            rows.append(
                {
                    "capability": case[0],
                    "output": case[1],
                    "cores": k,
                    "best concurrency": r["concurrency"],
                    "frames/s": r["fps"],
                    "p99 ms": r["p99 ms"],
                    "x over 1 core": r["fps"] / one["fps"] if one else math.nan,
                    "worker busy %": r["fps"] * _worker_ms(r) / 10,
                    "node CPU ms/frame": _per_frame(r, "total"),
                    "cores / CPU ms at 1 core, fps": k * 1000 / cpu_one,
                    "measured / that %": 100 * r["fps"] / (k * 1000 / cpu_one),
                    "X-Metadata host ms": host,
                    "worker ceiling fps": 1000 / worker,
                    "GIL ceiling fps": 1000 / gil[0] if gil else math.nan,
                }
            )
    return rows


def _gil_row(p: dict) -> dict:
    g = p["gil"]
    row = {
        "capability": p["capability"],
        "output": p["output"],
        "cores": p["cores"],
        "concurrency": p["concurrency"],
        "frames": p["served"],
        "frames/s": p["fps"],
        "GIL ms/frame (mean)": g["ms per frame"],
        "±": g["error ms per frame"],
        "GIL busy %": 100 * g["samples"] / p["rate"] / p["window_s"],
        "node CPU ms/frame": _per_frame(p, "total"),
        "py-spy errors": p["pyspy_errors"],
    }
    named = ("event loop", "infer workers", "AnyIO pool")
    for group in named:
        row[f"GIL {group}"] = g["groups ms per frame"].get(group, 0.0)
    row["GIL other"] = max(0.0, g["ms per frame"] - sum(row[f"GIL {x}"] for x in named))
    return row


def _md(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    return (
        "\n".join(
            [
                "| " + " | ".join(cols) + " |",
                "|" + "|".join(" --- " for _ in cols) + "|",
                *("| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows),
            ]
        )
        + "\n"
    )


def _sections(scaling: list[dict], gil_rows: list[dict], profiles: list[dict], calibration: dict | None) -> str:
    out = [
        "## Scaling over one core, at each core count's best concurrency",
        "",
        _md(scaling),
        "- cores / CPU ms at 1 core: the frames/s the cores would give if the node's CPU time per frame at one "
        "core (all threads) were all there were; worker ceiling: 1 / infer p50, the capability "
        "worker's serial work (X-Metadata, one request at a time); GIL ceiling: 1 / GIL-held ms per frame "
        "(py-spy, under load: the profile at the fewest cores and the most connections); "
        "X-Metadata host ms: read + decode + render + encode p50",
        "",
    ]
    out += ["## GIL-held time per request (py-spy --gil, mean per frame served)", "", _md(gil_rows)]
    if calibration:
        out += [
            f"- py-spy calibration: a thread that held the GIL {calibration['held s']:.3f} s was sampled as "
            f"{calibration['py-spy s']:.3f} s (x{calibration['ratio']:.2f}; {calibration['errors']} errors"
            f"{', BEHIND' if calibration['behind'] else ''})",
            "- ±: the sampling error, sqrt(samples) / rate / frames; GIL busy %: the share of the window some "
            "thread held the GIL (near 100 %: the GIL is the bottleneck); py-spy errors: samples whose stack "
            "could not be read (non-blocking reads race the threads), not counted: the GIL-held time is at most "
            "that many samples more",
            "",
        ]
    for p in profiles:
        g = p["gil"]
        out += [
            f"### Where it goes: {p['capability']}/{p['output']}, {p['cores']} core(s), {p['concurrency']} "
            f"connection(s): {g['ms per frame']:.2f} ms/frame, {g['samples']} samples, "
            f"{p['pyspy_errors']} py-spy errors",
            "",
            "Innermost Python frame (a C call counts where Python made it; top line: the line most samples sit on):",
            "",
            _md(g["self"]),
            "The node's functions on the stack (inclusive):",
            "",
            _md(g["inclusive"]),
        ]
    return "\n".join(out)


def _notes(args, allowed, core_counts, loadavg, source, calibration, runs) -> list[str]:
    notes = [
        f"STAND-IN ENGINE ({args.standin_ms:g} ms a frame, GIL released): the host path only; its maps are a "
        "gradient, stripes and no person, which encode faster than a model's (frame-cost has the real maps)",
        f"the node pinned with taskset to the first K of CPUs {allowed}; wrk ({args.duration} s per level, "
        f"closed loop, keep-alive) and py-spy on the CPUs left",
        f"node: --queue-size {args.queue_size or max(args.concurrency)}, --max-batch {args.max_batch}; "
        f"graphs from {source.name if source == COMMITTED_MANIFEST else source} (placeholders: never read)",
        "frames/s: 2xx responses / wrk's duration; p50/p99: wrk's histogram; CPU ms/frame: /proc utime+stime of "
        "the node's threads over the run / frames the node served (its /metrics); loop: the event loop (main "
        "thread), infer: the capability workers, pool: the AnyIO threads (decode, encode), other: asyncio's "
        "executor, other and exited threads; node CPU %: frames/s x CPU per frame, of the node's cores",
        "worker ms: the infer mean under load (the node's /metrics histograms): one worker thread per "
        "capability runs the network, so with --max-batch 1 worker busy % = frames/s x worker ms near 100 % means the "
        "worker is the bottleneck, whatever the cores",
        f"load average before the run: {' '.join(loadavg)} (1, 5, 15 min); other work, cores: the machine's busy "
        "CPU time (/proc/stat) less the node's, wrk's, py-spy's and this harness's, over each run",
    ]
    busy = [r for r in runs if r["other work cores"] > 0.1]
    if busy:
        worst = max(r["other work cores"] for r in busy)
        notes.append(
            f"BUSY MACHINE: other processes used more than 0.1 of a core during {len(busy)} of {len(runs)} "
            f"rows (up to {worst:.2f} cores: the 'other work, cores' column): those rows are not for "
            "comparison"
        )
    if float(loadavg[0]) > 0.35 * (os.cpu_count() or 1):
        notes.append(
            f"BUSY MACHINE: the 1-minute load average was {loadavg[0]} on {os.cpu_count()} CPUs before the "
            "run: other work shared the CPUs, so these figures are not for comparison"
        )
    if any(r["shared"] for r in runs):
        shared = sorted({r["cores"] for r in runs if r["shared"]})
        notes.append(
            f"at {', '.join(map(str, shared))} core(s) the node had every CPU: wrk shared them with it, "
            "and its CPU is in those rows' latency and throughput"
        )
    if not core_counts:
        notes.append("NO CORE COUNT FITTED this machine")
    return notes


def plot(runs: list[dict], png: Path, title: str) -> bool:
    """Frames/s and p99 against concurrency, a line per case and core count."""
    if not runs:
        return False
    try:
        import matplotlib  # the bench extra
    except ImportError as err:
        progress(f"no plot ({err}): pip install -e '.[bench]'")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, tail) = plt.subplots(1, 2, figsize=(12, 4.6))
    cases = list(dict.fromkeys((r["capability"], r["output"]) for r in runs))
    counts = sorted({r["cores"] for r in runs})
    styles = ["-", "--", ":", "-.", (0, (1, 4))]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, case in enumerate(cases):
        for j, k in enumerate(counts):
            line = sorted(
                (r for r in runs if (r["capability"], r["output"]) == case and r["cores"] == k),
                key=lambda r: r["concurrency"],
            )
            if not line:
                continue
            x = [r["concurrency"] for r in line]
            kw = {
                "color": colours[i % len(colours)],
                "linestyle": styles[j % len(styles)],
                "marker": "o",
                "markersize": 3,
            }
            rate.plot(x, [r["fps"] for r in line], label=f"{case[0]}/{case[1]}, {k} core(s)", **kw)
            tail.plot(x, [r["p99 ms"] for r in line], **kw)
    rate.set(xlabel="connections (closed loop)", ylabel="frames/s (2xx)", xscale="log", ylim=(0, None))
    tail.set(xlabel="connections (closed loop)", ylabel="latency p99 (ms)", xscale="log", yscale="log")
    for ax in (rate, tail):
        ax.grid(alpha=0.3)
    rate.legend(fontsize=6, ncol=2)
    fig.suptitle(title + "; line style: cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cores``: the same without importing every other benchmark (pose-persons needs onnx)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cores", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
