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

from benchmarks import report
from benchmarks.stats import summarise

ROOT = Path(__file__).resolve().parents[1]


def test_summary_percentiles_in_milliseconds():
    s = summarise(np.arange(1, 101) / 1000)  # 1..100 ms
    assert s["n"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    with pytest.raises(ValueError):
        summarise([])


def test_table_and_markdown_hold_every_row_and_the_provenance():
    rows = [{"scenario": "raw", "p50 ms": 1.234}, {"scenario": "jpeg", "p50 ms": 10.0}]
    text = report.table(rows)
    assert "1.23" in text and "10.00" in text and text.splitlines()[0].startswith("scenario")
    prov = report.provenance()
    assert prov["command"].startswith("python -m benchmarks") and "python" in prov["versions"]
    md = report.markdown("Title", rows, prov, ["a note"])
    assert "| scenario | p50 ms |" in md and "| jpeg | 10.00 |" in md and "- a note" in md and prov["machine"] in md


def test_overhead_and_coldstart_run_against_a_node_they_start(tiny_build, tmp_path):
    engines = str(tiny_build[0])
    run = [sys.executable, "-m", "benchmarks"]
    common = ["--engines", engines, "--json", str(tmp_path / "o.json"), "--markdown", str(tmp_path / "o.md")]
    done = subprocess.run(
        [*run, "overhead", *common, "--requests", "3", "--warmup", "1", "--size", "96x128"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "o.json").read_text())
    assert {r["scenario"] for r in result["rows"]} == {"raw in, raw out", "JPEG in, PNG out"}
    assert all(r["overhead p50 ms"] > 0 and r["echo floor p50 ms"] > 0 for r in result["rows"])
    assert "Node overhead" in (tmp_path / "o.md").read_text()

    done = subprocess.run(
        [*run, "coldstart", "--engines", engines, "--runs", "1", "--size", "96x128", "--json", f"{tmp_path}/c.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert len(runs) == 1 and set(runs[0]["first_inference_s"]) == {"depth", "segmentation", "pose"}
    assert runs[0]["ready_s"] < min(runs[0]["first_inference_s"].values())
