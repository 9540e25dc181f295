"""Summary statistics of latency samples (seconds in, milliseconds out)."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarise(seconds) -> dict[str, float]:
    """n, mean, min, p50..p99 and max in milliseconds; percentiles by linear interpolation (numpy's default)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if ms.size == 0:
        raise ValueError("no samples")
    summary = {"n": int(ms.size), "mean": float(ms.mean()), "min": float(ms.min())}
    summary.update({f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES})
    summary["max"] = float(ms.max())
    return summary
