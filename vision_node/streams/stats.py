"""What a stream reports: frame counts, rates and latency over the last few seconds, time per stage."""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

WINDOW_S = 10.0  # rates and percentiles over this (the window pytrickle's and ai-runner's fps use)
STAGES = ("decode", "queue", "infer", "render", "encode", "publish")


class Window:
    """(time, value) of the last WINDOW_S seconds."""

    def __init__(self, seconds: float = WINDOW_S, limit: int = 4096):
        self.seconds = seconds
        self._items: deque[tuple[float, float]] = deque(maxlen=limit)

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        self._items.append((time.monotonic() if now is None else now, value))

    def recent(self, now: float) -> list[float]:
        while self._items and self._items[0][0] < now - self.seconds:
            self._items.popleft()
        return [v for _, v in self._items]

    def rate(self, since: float, now: float | None = None) -> float:
        """Events a second over the window (or since ``since``, when that is shorter)."""
        now = time.monotonic() if now is None else now
        span = min(self.seconds, now - since)
        return len(self.recent(now)) / span if span > 0 else 0.0

    def percentiles(self, *qs: float, now: float | None = None) -> list[float | None]:
        values = self.recent(time.monotonic() if now is None else now)
        if not values:
            return [None] * len(qs)
        return [float(v) for v in np.percentile(values, qs)]


class StreamStats:
    """Counters and windows of one stream; written on the event loop only."""

    def __init__(self):
        self.started = time.monotonic()
        # in, out, dropped (a newer frame took its place), skipped (max_framerate), failed
        self.frames: Counter[str] = Counter()
        self.frames_in, self.frames_out = Window(), Window()
        self.latency = Window()  # seconds from the frame's packet demuxed to its map handed to the publisher
        self.batch = Window()  # frames in the engine call each map came from (streams of a capability batch)
        self.stages = {stage: Window() for stage in STAGES}
        self.errors = 0
        self.last_error: str | None = None
        self.last_input: float | None = None
        self.last_output: float | None = None

    def arrived(self, now: float) -> None:
        self.frames["in"] += 1
        self.frames_in.add(now=now)
        self.last_input = now

    def sent(self, now: float, latency: float, stages: dict[str, float], batch: int = 1) -> None:
        self.frames["out"] += 1
        self.batch.add(batch, now)
        self.frames_out.add(now=now)
        self.latency.add(latency, now)
        for stage, seconds in stages.items():
            self.stages[stage].add(seconds, now)
        self.last_output = now

    def error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def summary(self) -> dict:
        now = time.monotonic()
        p50, p95 = self.latency.percentiles(50, 95, now=now)
        return {
            "fps": {
                "in": round(self.frames_in.rate(self.started, now), 2),
                "out": round(self.frames_out.rate(self.started, now), 2),
            },
            "latency_ms": {"p50": _ms(p50), "p95": _ms(p95)},
            "frames": {k: self.frames[k] for k in ("in", "out", "dropped", "skipped", "failed")},
            "stages_ms_p50": {stage: _ms(w.percentiles(50, now=now)[0]) for stage, w in self.stages.items()},
            "batch_max": int(max(self.batch.recent(now), default=1)),  # frames in one engine call, at most
            "errors": self.errors,
            "last_error": self.last_error,
            "seconds": round(now - self.started, 1),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
