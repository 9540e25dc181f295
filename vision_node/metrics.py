"""Prometheus metrics of one node (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

STAGES = ("read", "decode", "queue", "infer", "render", "encode", "total")
# Seconds: sub-millisecond GPU frames up to CPU fallbacks of several seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self._stage_children: dict[str, dict] = {}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self.latency = Histogram(
            "vision_node_stage_seconds",
            "Time per request stage, per capability (total = arrival to response body)",
            ["capability", "stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "vision_node_responses", "Responses by route and status", ["route", "status"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "vision_node_queue_depth", "Requests waiting per capability", ["capability"], registry=self.registry
        )
        self.in_flight = Gauge(
            "vision_node_in_flight", "Requests accepted and not finished", ["capability"], registry=self.registry
        )
        self.backend_failures = Counter(
            "vision_node_backend_failures",
            "Backend failures by capability and kind (frame: 500; transient: out of memory, 503; fatal: exit)",
            ["capability", "kind"],
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "vision_node_refused_connections",
            "Connections answered and closed before the request reached a route (408 slow, 431 headers too large)",
            ["status"],
            registry=self.registry,
        )
        self.live_runner_frames = Counter(
            "vision_node_live_runner_frames",
            "Frames that came through a Livepeer live runner's proxy (a Livepeer-Session-Id header)",
            ["capability"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "vision_node_streams", "Live streams running, per capability", ["capability"], registry=self.registry
        )
        self.stream_frames = Counter(
            "vision_node_stream_frames",
            "Live streams' frames per capability: in (decoded), out (published), dropped (a newer frame took its "
            "place, or its deadline passed), skipped (max_framerate), failed (unreadable, refused or failed)",
            ["capability", "kind"],
            registry=self.registry,
        )
        self.stream_latency = Histogram(
            "vision_node_stream_latency_seconds",
            "Live streams: a frame's packet leaving the demuxer to its map handed to the output channel",
            ["capability"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge("vision_node_ready", "1 when every capability is warm", registry=self.registry)
        self.memory = Gauge(
            "vision_node_backend_memory_bytes",
            "Memory the backends hold, by capability and kind",
            ["capability", "kind"],
            registry=self.registry,
        )

    def track(self, session) -> None:
        """Queue gauges read the session's counters when scraped: nothing to update per request."""
        self.queue_depth.labels(session.name).set_function(lambda: session.waiting)
        self.in_flight.labels(session.name).set_function(lambda: session.pending)

    def observe(self, capability: str, timings: dict[str, float]) -> None:
        children = self._stage_children.get(capability)
        if children is None:  # labels() takes a lock and builds a key: once per capability, not per request
            children = self._stage_children[capability] = {s: self.latency.labels(capability, s) for s in STAGES}
        for stage, seconds in timings.items():
            (children.get(stage) or self.latency.labels(capability, stage)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
