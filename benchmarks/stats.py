"""Latency statistics: percentiles, and the stability rule that decides when a measurement is done."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

PERCENTILES = (50, 90, 95, 99)
MIN_SAMPLES = 3  # even past the time budget: fewer make no distribution


def summarise(seconds) -> dict[str, float]:
    """n, mean, min, p50..p99 and max in milliseconds; percentiles by linear interpolation (numpy's default)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if ms.size == 0:
        raise ValueError("no samples")
    summary = {"n": int(ms.size), "mean": float(ms.mean()), "min": float(ms.min())}
    summary.update({f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES})
    summary["max"] = float(ms.max())
    return summary


def is_stable(window_medians: list[float], windows: int = 3, tolerance: float = 0.1) -> bool:
    """perf_analyzer's rule: the last ``windows`` window medians all lie within ±tolerance of their mean."""
    if len(window_medians) < windows:
        return False
    last = np.asarray(window_medians[-windows:], dtype=np.float64)
    centre = last.mean()
    return bool(centre > 0 and np.all(np.abs(last - centre) <= tolerance * centre))


def measure(
    run: Callable[[], float | None],
    *,
    warmup: int = 5,
    window: int = 20,
    max_seconds: float = 60.0,
    iterations: int | None = None,
    tolerance: float = 0.1,
) -> tuple[list[float], bool | None]:
    """Call ``run`` (returns its own latency in seconds, or None to be timed here) until stable.

    With ``iterations`` it runs exactly that many (stability not judged: None); otherwise window
    after window until the stability rule holds or ``max_seconds`` pass. Returns (samples, stable).
    """

    def once() -> float:
        start = time.perf_counter()
        own = run()
        return own if own is not None else time.perf_counter() - start

    started = time.perf_counter()
    warm = [once() for _ in range(warmup)]
    if iterations is not None:
        return [once() for _ in range(iterations)], None
    deadline = started + max_seconds
    # A window is ``window`` calls, or fewer for slow calls, so that three windows fit in half the budget.
    per_call = max(float(np.median(warm)) if warm else once(), 1e-6)
    window = int(min(window, max(3, max_seconds / 6 / per_call)))
    samples, medians = [], []
    while True:
        batch = []
        while len(batch) < window and not (len(samples) + len(batch) >= MIN_SAMPLES and time.perf_counter() > deadline):
            batch.append(once())
        samples += batch
        medians.append(float(np.median(batch)))
        if len(batch) == window and is_stable(medians, tolerance=tolerance):
            return samples, True
        if time.perf_counter() > deadline:
            return samples, False
