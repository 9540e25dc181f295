"""A PNG beside every report, drawn from its table (matplotlib, the bench extra).

What a table holds decides the picture:

- a sweep (a ``load`` column): latency percentiles and throughput against the load, one line per
  configuration (e.g. ``max batch``);
- latency percentiles (``p50 ms``, ``HTTP p99 ms``, ``p95 s`` ...): per row, the percentiles side
  by side, so each row's distribution reads at a glance (log scale when rows differ by 10x);
- memory along a run (``requests`` and ``node RSS MiB``): a line.

``python -m benchmarks plot REPORT.md`` draws a committed report again from its Markdown table.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

_PERCENTILE = re.compile(r"^(?P<family>.*?)\b(?P<stat>p50|p90|p95|p99|max)\s+(?P<unit>ms|s)$")


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


_NOT_NAMES = {"stable", "statuses"}  # text columns that describe a measurement, not what was measured


def _label(row: dict, columns: list[str]) -> str:
    parts = [
        str(row[c])
        for c in columns
        if c not in _NOT_NAMES and _number(row[c]) is None and str(row[c]) not in ("", "nan")
    ]
    label = " · ".join(parts) or "row"
    return label if len(label) <= 72 else label[:71] + "…"


def _percentile_columns(columns: list[str], prefer: str = "") -> list[str]:
    """The percentile columns of one family (the first found, or the one that contains ``prefer``)."""
    found = [(m.group("family").strip(), c) for c in columns if (m := _PERCENTILE.match(c))]
    if not found:
        return []
    families = [f for f, _ in found]
    family = next((f for f in families if prefer and prefer in f), families[0])
    return [c for f, c in found if f == family]


def plot(rows: list[dict], path: str | Path, title: str) -> bool:
    """Draw ``rows`` to ``path``; False (nothing written) when the table has nothing to draw."""
    if not rows:
        return False
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0])
    if "load" in columns:
        fig = _sweep(plt, rows, columns)
    elif _percentile_columns(columns):
        fig = _percentiles(plt, rows, columns)
    elif {"requests", "node RSS MiB"} <= set(columns):
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.plot([_number(r["requests"]) for r in rows], [_number(r["node RSS MiB"]) for r in rows], marker=".")
        ax.set_xlabel("requests")
        ax.set_ylabel("node RSS MiB")
        ax.grid(alpha=0.3)
    else:
        return False
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _percentiles(plt, rows: list[dict], columns: list[str]):
    stats = _percentile_columns(columns)
    unit = stats[0].rsplit(" ", 1)[1]
    labels = [_label(r, columns) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.42 * len(rows) * max(1, len(stats) / 3)))
    height = 0.8 / len(stats)
    for i, stat in enumerate(stats):
        values = [_number(r[stat]) or 0.0 for r in rows]
        ax.barh([y + i * height for y in range(len(rows))], values, height=height, label=stat.split(" ")[-2])
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(rows))], labels, fontsize=8)
    ax.invert_yaxis()
    values = [v for r in rows for s in stats if (v := _number(r[s]))]
    if values and max(values) / max(min(values), 1e-9) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _sweep(plt, rows: list[dict], columns: list[str]):
    stats = [c for c in _percentile_columns(columns, prefer="accepted") if " p50 " in f" {c} " or " p99 " in f" {c} "]
    rate = next((c for c in ("ok/s", "ok /s") if c in columns), None)
    group = next((c for c in ("max batch",) if c in columns), None)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    twin = ax.twinx() if rate else None
    for key in dict.fromkeys(r[group] for r in rows) if group else [None]:
        mine = [r for r in rows if group is None or r[group] == key]
        x = [str(r["load"]) for r in mine]
        suffix = f" ({group} {key})" if group else ""
        for stat in stats:
            ax.plot(x, [_number(r[stat]) for r in mine], marker="o", label=stat + suffix)
        if twin is not None:
            twin.plot(x, [_number(r[rate]) for r in mine], linestyle="--", marker=".", label=rate + suffix)
    ax.set_xlabel("load")
    ax.set_ylabel("latency (" + (stats[0].rsplit(" ", 1)[1] if stats else "ms") + ")")
    ax.grid(alpha=0.3)
    lines, names = ax.get_legend_handles_labels()
    if twin is not None:
        twin.set_ylabel(rate)
        more = twin.get_legend_handles_labels()
        lines, names = lines + more[0], names + more[1]
    ax.legend(lines, names, fontsize=7, loc="upper left")
    return fig


def markdown_rows(text: str) -> tuple[str, list[dict]]:
    """(title, rows) of a report's Markdown: its ``#`` title and its first table."""
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "report")
    table = [line for line in text.splitlines() if line.startswith("|")]
    if len(table) < 3:
        return title, []
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(head):
            rows.append(dict(zip(head, cells)))
    return title, rows


def replot(markdown: Path) -> Path | None:
    """Draw a committed report again from its Markdown; the PNG lands beside it and the report links it."""
    text = markdown.read_text()
    title, rows = markdown_rows(text)
    png = markdown.with_suffix(".png")
    if not plot(rows, png, title):
        return None
    link = f"![{title}]({png.name})"
    if link not in text:
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("|")) - 1
        lines[at:at] = ["", link]
        markdown.write_text("\n".join(lines) + "\n")
    return png
