"""benchmarks.cores without wrk or py-spy: what it reads from them, from /proc and /metrics, and the stand-in's
engines directory and thread names. The figures are the benchmark's job, not the tests'."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest

from benchmarks import cores, standin
from vision_node.serving import engines

# What Debian's wrk 4.1 printed with cores.LUA (a 2 s run), its own summary first.
WRK_STDOUT = """Running 2s test @ http://127.0.0.1:8711/infer/depth
  1 threads and 4 connections
  368 requests in 2.02s, 12.13MB read
Requests/sec:    182.62
CORES-JSON {"requests": 368, "duration_us": 2015113, "non2xx": 8, "connect": 0, "read": 1, "write": 0, \
"timeout": 2, "p50_us": 21158, "p99_us": 37534, "mean_us": 21739.0, "max_us": 43305}
"""


def test_wrk_summary_gives_2xx_frames_per_second_and_milliseconds():
    r = cores.parse_wrk(WRK_STDOUT)
    assert r["requests"] == 368 and r["non2xx"] == 8 and r["socket errors"] == 3
    assert r["fps"] == pytest.approx(360 / 2.015113)  # non-2xx are not frames
    assert r["p50 ms"] == pytest.approx(21.158) and r["p99 ms"] == pytest.approx(37.534)
    with pytest.raises(RuntimeError, match="no summary"):
        cores.parse_wrk("Running 2s test\n")


def test_the_lua_script_renders_with_the_body_path_and_the_summary_line():
    script = cores.LUA % {"body": '"/tmp/frame.jpg"', "mark": cores.MARK}
    assert 'io.open("/tmp/frame.jpg", "rb")' in script and "CORES-JSON {" in script
    assert "latency:percentile(99)" in script and "%d" in script  # wrk's Lua formats, not Python's


METRICS_BEFORE = """# HELP vision_node_stage_seconds Time per request stage
vision_node_stage_seconds_count{capability="depth",stage="total"} 100.0
vision_node_stage_seconds_sum{capability="depth",stage="total"} 1.0
vision_node_stage_seconds_count{capability="depth",stage="infer"} 100.0
vision_node_stage_seconds_sum{capability="depth",stage="infer"} 0.2
vision_node_responses_total{route="/infer/{capability}/{output}",status="200"} 100.0
vision_node_responses_total{route="/metrics",status="200"} 3.0
"""
METRICS_AFTER = (
    METRICS_BEFORE.replace('stage="total"} 100.0', 'stage="total"} 150.0')
    .replace('stage="total"} 1.0', 'stage="total"} 1.5')
    .replace('stage="infer"} 100.0', 'stage="infer"} 150.0')
    .replace('stage="infer"} 0.2', 'stage="infer"} 0.35')
)


def test_frames_served_and_stage_means_come_from_the_nodes_counters():
    before, after = cores.parse_metrics(METRICS_BEFORE), cores.parse_metrics(METRICS_AFTER)
    assert before["responses"] == {"200": 100.0}  # /infer routes only
    assert cores.served(before, after, "depth") == 50
    assert cores.served(before, after, "pose") is None  # no counter: the caller falls back to wrk's count
    means = cores.stage_means(before, after, "depth")
    assert means["total"] == pytest.approx(10.0) and means["infer"] == pytest.approx(3.0)


def test_cpu_split_by_thread_group_and_what_exited_threads_took():
    pid = 100
    before = {
        "process": 1000,
        "threads": {
            100: ("python", 500),
            101: ("infer-depth", 100),
            102: ("AnyIO worker th", 300),
            103: ("uvloop_0", 0),
        },
    }
    after = {
        "process": 1600,
        "threads": {
            100: ("python", 600),
            101: ("infer-depth", 150),
            102: ("AnyIO worker th", 500),
            104: ("AnyIO worker th", 100),
        },
    }
    tick = cores.os.sysconf("SC_CLK_TCK")
    split = cores.cpu_split(before, after, pid)
    assert split["event loop"] == pytest.approx(100 / tick)
    assert split["infer workers"] == pytest.approx(50 / tick)
    assert split["AnyIO pool"] == pytest.approx(300 / tick)  # a thread born in the run counts from zero
    assert split["total"] == pytest.approx(600 / tick)
    assert split["exited threads"] == pytest.approx(150 / tick)  # 600 - 450: what no living thread accounts for


PYSPY_RAW = """\
thread (100): MainThread;<module> (benchmarks/standin.py:100);Runner.run (asyncio/runners.py:118) 30
thread (101): infer-depth;Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);\
CapabilitySession._work (vision_node/session.py:328);Depth.render (vision_node/capabilities/depth.py:90);\
Depth._normalise (vision_node/capabilities/depth.py:113) 40
thread (101): infer-depth;Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);\
CapabilitySession._work (vision_node/session.py:328);Depth.render (vision_node/capabilities/depth.py:90);\
Depth._normalise (vision_node/capabilities/depth.py:109) 10
thread (102): AnyIO worker thread;Thread._bootstrap (threading.py:1002);\
WorkerThread.run (anyio/_backends/_asyncio.py:1133) 20
"""


def test_gil_samples_per_frame_by_thread_and_by_function():
    stacks = cores.parse_pyspy_raw(PYSPY_RAW)
    assert [s.count for s in stacks] == [30, 40, 10, 20] and stacks[0].thread == "thread (100): MainThread"
    g = cores.gil_breakdown(stacks, rate=1000, frames=50, pid=100)
    assert g["samples"] == 100 and g["ms per frame"] == pytest.approx(2.0)  # 100 ms held over 50 frames
    assert g["error ms per frame"] == pytest.approx(math.sqrt(100) / 50)
    assert g["groups ms per frame"] == pytest.approx({"event loop": 0.6, "infer workers": 1.0, "AnyIO pool": 0.4})
    top = g["self"][0]
    assert top["function"] == "Depth._normalise (vision_node/capabilities/depth.py)" and top["top line"] == "113"
    assert top["ms per frame"] == pytest.approx(1.0) and top["share %"] == pytest.approx(50)
    inclusive = {r["function"]: r["ms per frame"] for r in g["inclusive"]}
    assert inclusive["Depth.render (vision_node/capabilities/depth.py)"] == pytest.approx(1.0)
    assert not any(f.startswith(("Thread.", "WorkerThread")) for f in inclusive)  # the node's own frames only


def test_the_standin_engines_directory_passes_the_nodes_own_checks(tmp_path):
    """Placeholders of the sizes and digests the copied manifest names: engines.load accepts them, bounds kept."""
    folder = cores.standin_engines(cores.COMMITTED_MANIFEST, tmp_path / "engines")
    served = engines.load(folder, onnxruntime=True)
    assert set(served) == {"depth", "segmentation", "pose"}
    assert served["depth"].bounds.max_hw == (1080, 1920)
    assert all(p.stat().st_size < 200 for p in folder.glob("*.onnx"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names from /proc")
def test_the_standin_names_os_threads_after_python_threads():
    standin.name_os_threads()
    seen = {}

    def look():
        seen["comm"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    try:
        t = threading.Thread(target=look, name="infer-segmentation")
        t.start()
        t.join()
    finally:
        threading.setprofile(None)
    assert seen["comm"] == "infer-segmentat"  # 15 characters, as the kernel keeps them
    assert cores.group_of(seen["comm"], main=False) == "infer workers"
