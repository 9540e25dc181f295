"""The benchmark tool: its statistics, its report formats, and a short real run against a node it starts.

Nothing here asserts a timing: the figures are the benchmark's job, not the tests'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from benchmarks import echo, load, report
from benchmarks.stats import is_stable, measure, summarise
from tests.nodes import frame, raw_type

ROOT = Path(__file__).resolve().parents[1]


def test_summary_percentiles_in_milliseconds():
    s = summarise(np.arange(1, 101) / 1000)  # 1..100 ms
    assert s["n"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    with pytest.raises(ValueError):
        summarise([])


def test_stability_rule_needs_three_windows_within_tolerance():
    assert not is_stable([10.0, 10.0])  # too few windows
    assert is_stable([50.0, 10.0, 10.5, 9.8])  # only the last three count
    assert not is_stable([10.0, 10.0, 12.5])  # 12.5 is > 10 % above their mean
    assert is_stable([10.0, 10.0, 11.0], tolerance=0.1)


def test_measure_stops_when_stable_and_counts_exactly_when_asked():
    calls = []
    samples, stable = measure(lambda: calls.append(1) or 0.001, warmup=2, window=5)
    assert stable and len(samples) == 15 and len(calls) == 17  # three equal windows after two warm-ups
    drifting = iter(range(1, 10_000))
    samples, stable = measure(lambda: next(drifting) * 1e-3, warmup=0, window=2, max_seconds=0.0)
    assert not stable and len(samples) == 2  # never stable: stops at the time limit
    samples, stable = measure(lambda: 0.002, warmup=0, iterations=7)
    assert samples == [0.002] * 7 and stable is None  # a fixed count is not judged


def test_closed_and_open_loop_count_statuses_and_node_stages(tiny_build):
    """A real node process with a queue of one; the load clients talk to it over loopback."""
    import tempfile

    from benchmarks import nodeproc

    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(tiny_build[0], Path(tmp) / "log", queue_size=1)
        try:
            nodeproc.wait_ready(node)
            url = f"http://127.0.0.1:{node.port}"
            f = frame(96, 128)
            closed = load.closed_loop(url, "/infer/segmentation/raw", f.tobytes(), raw_type(f), 4, 1.0)
            assert closed["requests"] == sum(closed["statuses"].values()) and closed["ok"] > 0
            assert set(closed["statuses"]) <= {
                200,
                503,
            }  # a queue of 1: served or refused, nothing else
            assert set(closed["server_p50_ms"]) == set(load.STAGES)
            opened = load.open_loop(url, "/infer/segmentation/raw", f.tobytes(), raw_type(f), 10, 1.0)
            assert opened["requests"] == 10 and opened["client"]["n"] == opened["ok"]
            bad = load.closed_loop(url, "/infer/segmentation", b"x", "image/png", 1, 0.3)
            assert bad["ok"] == 0 and set(bad["statuses"]) == {400}
        finally:
            node.stop()


def test_table_and_markdown_hold_every_row_and_the_provenance():
    rows = [{"scenario": "raw", "p50 ms": 1.234}, {"scenario": "jpeg", "p50 ms": 10.0}]
    text = report.table(rows)
    assert "1.23" in text and "10.00" in text and text.splitlines()[0].startswith("scenario")
    prov = report.provenance()
    assert prov["command"].startswith("python -m benchmarks") and "python" in prov["versions"]
    md = report.markdown("Title", rows, prov, ["a note"])
    assert "| scenario | p50 ms |" in md and "| jpeg | 10.00 |" in md and "- a note" in md and prov["machine"] in md


def test_engine_command_reports_graph_and_transformers_baseline(tiny_build, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "engine",
            "--engines",
            str(tiny_build[0]),
            "--capabilities",
            "depth",
            "--sizes",
            "96x128",
            "--batches",
            "1,2",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--json",
            f"{tmp_path}/e.json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    graphs = [r for r in rows if r["backend"].startswith("onnxruntime")]
    baselines = [r for r in rows if r["backend"].startswith("transformers")]
    assert [r["frames"] for r in graphs] == [r["frames"] for r in baselines] == ["1x96x128", "2x96x128"]
    assert all(r["n"] == 2 and r["baseline / graph p50"] > 0 for r in graphs)


def test_overhead_and_coldstart_run_against_a_node_they_start(tiny_build, tmp_path):
    engines = str(tiny_build[0])
    run = [sys.executable, "-m", "benchmarks"]
    common = ["--engines", engines, "--json", str(tmp_path / "o.json"), "--markdown", str(tmp_path / "o.md")]
    done = subprocess.run(
        [*run, "overhead", *common, "--requests", "3", "--warmup", "1", "--size", "96x128"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "o.json").read_text())
    assert {r["scenario"] for r in result["rows"]} == {"raw in, raw out", "JPEG in, PNG out"}
    assert all(r["overhead p50 ms"] > 0 and r["echo floor p50 ms"] > 0 for r in result["rows"])
    assert "Node overhead" in (tmp_path / "o.md").read_text()

    done = subprocess.run(
        [*run, "coldstart", "--engines", engines, "--runs", "1", "--size", "96x128", "--json", f"{tmp_path}/c.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert len(runs) == 1 and set(runs[0]["first_inference_s"]) == {"depth", "segmentation", "pose"}
    assert runs[0]["ready_s"] < min(runs[0]["first_inference_s"].values())


def test_engine_rows_on_fake_tensorrt_carry_the_gpu_stage_split(tiny_build, tmp_path, monkeypatch):
    """With FAKE TensorRT/pycuda (tests/fake_gpu.py): the rows and columns an operator gets on a GPU."""
    from benchmarks import engine
    from tests.fake_gpu import FakeCuda, FakeTensorRT, engines_with_fake_plans

    cuda = FakeCuda()
    from vision_node.runtime import tensorrt

    monkeypatch.setattr(tensorrt, "load_tensorrt", lambda flavour=None: FakeTensorRT(cuda))
    monkeypatch.setattr(tensorrt, "load_pycuda", lambda: (cuda, cuda.Device(0).retain_primary_context()))
    engines_with_fake_plans(tiny_build[0], tmp_path / "engines")
    rows = engine.graph_rows(
        tmp_path / "engines",
        "depth",
        [(96, 128)],
        [1],
        lambda _: None,
        ("onnxruntime", "tensorrt"),
        warmup=0,
        iterations=2,
    )
    assert [r["backend"] for r in rows] == ["onnxruntime (CPUExecutionProvider)", "tensorrt (cuda)"]
    assert "compute p50 ms" not in rows[0] and {"copy_in p50 ms", "compute p50 ms", "copy_out p50 ms"} <= set(rows[1])


def test_overload_slow_clients_and_soak_commands_report_their_figures(tiny_build, tmp_path):
    """Short runs of the hardening benchmarks (the long ones are in docs/measurements.md): each prints its figure."""
    run = [sys.executable, "-m", "benchmarks"]
    engines = ["--engines", str(tiny_build[0])]

    def bench(*argv):
        out = tmp_path / f"{argv[0]}.json"
        done = subprocess.run(
            [*run, *argv, *engines, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(out.read_text()), done.stdout

    result, _ = bench("overload", "--multiples", "1,4", "--duration", "3", "--capacity-seconds", "2", "--size", "96x96")
    assert result["capacity_rps"] > 0 and [lv["load"] for lv in result["levels"]] == ["1x", "4x"]
    four = result["levels"][1]
    assert four["503"] > 0 and four["other"] == 0  # 4x capacity: refusals, nothing else

    result, stdout = bench("slow-clients", "--sockets", "20", "--duration", "3", "--receive-timeout", "1")
    assert result["p99_ratio"] > 0 and "p99 beside slow clients / mean baseline p99" in stdout
    assert set(result["slow_socket_answers"]) <= {"408", "None"} and result["slow_socket_answers"]

    result, stdout = bench("soak", "--requests", "400", "--samples", "4")
    assert result["five_xx"] == 0 and result["alive"] and "growth" in stdout
    assert sum(result["statuses"]["good"].values()) + sum(result["statuses"]["malformed"].values()) == 400


def test_probes_reports_latency_and_node_cpu_per_health_probe(tiny_build, tmp_path):
    out = tmp_path / "probes.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "probes",
            "--engines",
            str(tiny_build[0]),
            "--requests",
            "50",
            "--warmup",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["probe"] for r in rows] == ["GET /ready", "GET /health"]
    assert all(r["requests"] == 50 and r["p50 ms"] > 0 and r["node CPU ms / probe"] >= 0 for r in rows)


def test_flicker_and_combined_report_their_figures(tiny_build, tmp_path):
    def bench(*argv):
        out = tmp_path / f"{argv[0]}.json"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", *argv, "--engines", str(tiny_build[0]), "--json", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(out.read_text())

    result = bench("flicker", "--frames", "4", "--plot", str(tmp_path / "flicker.png"))
    rows = {(r["clip"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(c, m) for c in ("still", "pan") for m in ("per-frame", "fixed", "smooth 0.9")}
    assert all(r["flicker mean"] >= 0 and r["render ms p50"] > 0 for r in rows.values())
    assert rows[("still", "fixed")]["range flicker"] == 0 < rows[("still", "per-frame")]["range flicker"]
    assert len(result["series"]["still/per-frame"]) == 3 and (tmp_path / "flicker.png").stat().st_size > 10_000
    result = bench(
        "combined", "--requests", "3", "--warmup", "1", "--size", "96x128", "--markdown", str(tmp_path / "combined.md")
    )
    assert (tmp_path / "combined.png").is_file() and "![" in (tmp_path / "combined.md").read_text()
    rows = {r["scenario"]: r for r in result["rows"]}
    one = rows["one request (/infer/depth+pose+segmentation)"]
    assert one["frames"] == 3 and one["KiB moved per frame"] < rows["three in series"]["KiB moved per frame"]


def test_flicker_undoes_the_pans_shift_and_counts_only_change():
    from benchmarks.flicker import flicker

    scene = np.arange(40, dtype=np.uint8)[None].repeat(3, axis=0) * 5
    panned = [scene[:, t : t + 20] for t in range(4)]  # the window moves right: content moves left 1 px a frame
    assert flicker(panned, shift=1) == [0.0, 0.0, 0.0]
    assert flicker(panned, shift=0) == [5.0, 5.0, 5.0]
    brighter = [scene[:, :20], scene[:, :20] + 2]
    assert flicker(brighter, shift=0) == [2.0]


def test_measure_fits_slow_calls_into_its_budget_with_a_few_samples_at_least():
    import time

    from benchmarks.stats import measure

    started = time.perf_counter()
    samples, _ = measure(lambda: time.sleep(0.2), warmup=1, max_seconds=1.0)
    took = time.perf_counter() - started
    assert len(samples) >= 3 and took < 2.0  # not 3 windows of 20 calls: 12 s


def test_http_with_rates_runs_only_the_rates_asked_for(tiny_build, tmp_path):
    out = tmp_path / "http.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "http",
            "--engines",
            str(tiny_build[0]),
            "--rate",
            "5",
            "--duration",
            "1",
            "--size",
            "96x96",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [level["rate_rps"] for level in json.loads(out.read_text())["levels"]] == [5.0]
    assert "closed loop" not in done.stderr  # no concurrency sweep nobody asked for


def test_every_kind_of_report_table_gets_its_plot(tmp_path):
    from benchmarks import plots

    latency = [
        {"capability": "depth", "scenario": "raw", "p50 ms": 3.0, "p99 ms": 6.0},
        {"capability": "pose", "scenario": "raw", "p50 ms": 30.0, "p99 ms": 90.0},
    ]
    sweep = [
        {"max batch": b, "load": load, "ok /s": 10.0 * i, "accepted p50 ms": 5.0 * i, "accepted p99 ms": 9.0 * i}
        for b in (1, 4)
        for i, load in enumerate(("0.5x", "1x", "2x"), 1)
    ]
    memory = [{"requests": n, "seconds": n / 100, "node RSS MiB": 100 + n / 1000} for n in (0, 500, 1000)]
    for name, rows in (("latency", latency), ("sweep", sweep), ("memory", memory)):
        png = tmp_path / f"{name}.png"
        assert plots.plot(rows, png, name) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not plots.plot([{"clip": "still", "flicker mean": 2.0}], tmp_path / "none.png", "none")
    report = tmp_path / "r.md"
    report.write_text(
        "# A report\n\nCommand: `x`\n\n| capability | p50 ms | p99 ms |\n| --- | --- | --- |\n| depth | 1.0 | 2.0 |\n"
    )
    assert plots.replot(report) == tmp_path / "r.png"
    plots.replot(report)  # twice: one link
    assert report.read_text().count("![A report](r.png)") == 1


def test_gpu_check_without_a_gpu_stops_at_once_saying_so(tmp_path):
    from benchmarks import gpucheck

    if gpucheck.no_gpu_reason() is None:
        pytest.skip("this machine has an NVIDIA GPU: the check would run")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpucheck", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no NVIDIA driver" in done.stderr and "Nothing was checked" in done.stderr
    assert not (tmp_path / "out").exists()  # stopped before installing or writing anything


def test_frame_cost_measures_every_stage_and_encoder_against_a_node_it_starts(tiny_build, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "frame-cost",
            "--engines",
            str(tiny_build[0]),
            "--sizes",
            "96x128",
            "--capabilities",
            "depth,segmentation",
            "--requests",
            "2",
            "--repeats",
            "2",
            "--json",
            str(tmp_path / "f.json"),
            "--markdown",
            str(tmp_path / "f.md"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    outputs = {(r["capability"], r["output"], r["in"]) for r in rows}
    assert ("depth", "raw8", "jpeg") in outputs and ("segmentation", "palette", "raw") in outputs
    assert all(r["host p50 ms"] > 0 and r["out KiB"] > 0 for r in rows)
    raw_rows = [r for r in rows if r["in"] == "raw"]
    assert raw_rows and all(r["echo floor p50 ms"] > 0 for r in raw_rows)
    assert "Frame cost outside the network" in (tmp_path / "f.md").read_text()
    encoders = json.loads((tmp_path / "f-encoders.json").read_text())["rows"]
    assert {r["map"] for r in encoders} == {"demo depth 96x128", "smooth 96x128"}  # below 720p: the largest size
    assert all(r["p50 ms"] > 0 and r["KiB"] > 0 for r in encoders)


def test_overhead_ab_reads_the_node_against_the_echo_the_waiting_echo_and_the_bare_app_with_its_model(
    tiny_build, tmp_path
):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.overhead_ab",
            "--engines",
            str(tiny_build[0]),
            "--capability",
            "depth",
            "--size",
            "96x128",
            "--rounds",
            "5",
            "--block",
            "2",
            "--runs",
            "2",
            "--json",
            str(tmp_path / "ab.json"),
            "--markdown",
            str(tmp_path / "ab.md"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = dict(line.strip().split(": ") for line in done.stdout.splitlines()[1:] if ": " in line)
    targets = ("node", "echo", "echo+hop", "echo+sleep", "bare+model")
    assert {f"{t} p50 ms" for t in targets} <= set(figures)
    assert all(float(figures[f"{t} p50 ms"]) > 0 for t in targets)
    result = json.loads((tmp_path / "ab.json").read_text())["results"]
    assert result["wait ms"] > 0  # the node's own inference, which the waiting echo sleeps as long
    assert result["response bytes"] == 96 * 128 * 4  # float32 depth, and the bare app answered as many bytes
    assert result["graph"].endswith(".ort.onnx")  # the bare app runs the file the node loads
    assert len(result["runs"]) == 2  # each with its own node and echo
    for name in ("echo", "echo+sleep", "bare+model"):
        each = [run[f"node over {name} p50 ms"] for run in result["runs"]]
        assert each == [run["p50"]["node"] - run["p50"][name] for run in result["runs"]]
        assert result[f"node over {name} p50 ms"] == pytest.approx(sum(each) / 2)  # the median of two
    table = (tmp_path / "ab.md").read_text()
    assert "node over it, p50" in table
    assert f"| bare+model | {result['p50']['bare+model']:.2f} |" in table and "each run" in table


def test_the_waiting_echo_sleeps_as_long_as_asked_and_says_how_long():
    with TestClient(echo.app) as client:
        answer = client.post("/echo-wait?n=5&ms=30", content=b"x" * 100)
        assert answer.status_code == 200 and answer.content == bytes(5)
        assert 30 <= float(answer.headers["X-Wait-ms"]) < 1000
        assert client.post("/echo-hop?n=3", content=b"").content == bytes(3)
