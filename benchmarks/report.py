"""Reports: progress on stderr while a run goes, then a terminal table, Markdown for docs/measurements.md, JSON for
machines; provenance in every one."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import machine

PACKAGES = ("onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "starlette", "uvicorn", "httptools", "uvloop")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def provenance(extra: dict | None = None) -> dict:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "gpu": machine.gpu(),
        "versions": versions,
        **(extra or {}),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [columns] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells
    )


def markdown(title: str, rows: list[dict], prov: dict, notes: list[str], image: str | None = None) -> str:
    columns = list(rows[0])
    lines = [f"# {title}", "", f"Command: `{prov['command']}`", ""]
    if image:
        lines += [f"![{title}]({image})", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    lines += ["Provenance:", "", "```json", json.dumps(prov, indent=2), "```", ""]
    return "\n".join(lines)


def write(report: dict, text_title: str, rows: list[dict], notes: list[str], json_path=None, markdown_path=None):
    print(f"\n{text_title}\n")
    print(table(rows))
    for n in notes:
        print(f"  - {n}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {json_path}")
    if markdown_path:
        image = _plot(rows, Path(markdown_path).with_suffix(".png"), text_title)
        with open(markdown_path, "w") as f:
            f.write(markdown(text_title, rows, report["provenance"], notes, image))
        print(f"wrote {markdown_path}")


def _plot(rows: list[dict], png: Path, title: str) -> str | None:
    """The PNG beside the Markdown (its name, for the link), or None when there is nothing to draw."""
    from . import plots

    try:
        drawn = plots.plot(rows, png, title)
    except ImportError as err:
        print(f"no plot ({err}): pip install -e '.[bench]'")
        return None
    if drawn:
        print(f"wrote {png}")
    return png.name if drawn else None
