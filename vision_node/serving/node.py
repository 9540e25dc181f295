"""The node at run time: what it serves, the capability sessions, their backends, its health.

The lifespan checks the manifest and every artefact's hash before the socket accepts
anything; the backends then load and warm up in the background while ``/health`` says
LOADING, and only then is the node ready.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from .. import __version__, device_memory, media
from ..capabilities import CAPABILITY_CLASSES
from ..capabilities.base import Capability
from ..config import Config
from ..errors import NotFound, NotReady, StartupError
from ..livepeer.byoc import LIVE_SUFFIX, Registrar
from ..livepeer.live_runner import LiveRunners
from ..media import content_type
from ..metrics import Metrics
from ..runtime.tensorrt import GpuRuntime
from ..streams.manager import Streams
from . import engines, preflight
from .backends import Backends, Opener
from .session import CapabilitySession

log = logging.getLogger("vision_node")


class Node:
    """The node's state at run time: served capabilities, their sessions, health."""

    def __init__(
        self,
        config: Config,
        open_backend: Opener | None = None,
        served: dict[str, engines.ServedCapability] | None = None,
        gpu: GpuRuntime | None = None,
    ):
        self.config = config
        self.served = served  # checked by preflight already, or None: the lifespan reads the manifest
        self.metrics = Metrics()
        self.backends = Backends(config, gpu)
        self.open_backend = open_backend or self.backends.opener
        self.sessions: dict[str, CapabilitySession] = {}
        self.error: str | None = None
        self.warm = False  # set once, after every session and the codecs are warm
        self.draining = False  # SIGTERM: not ready, unregistered, still finishing (and taking) requests
        self.on_fatal: Callable[[], None] = lambda: None  # the CLI makes this stop the process
        self.registrar: Registrar | None = None
        self.live_runners: LiveRunners | None = None
        self.openapi: dict | None = None  # vision_node.http.openapi.document, made on first request
        self.streams = Streams(config, self.metrics)
        self.device_memory = device_memory.of({})  # what the served capabilities need on a GPU (the builder's figures)

    @property
    def ready(self) -> bool:
        return self.warm and not self.error and not self.draining

    @property
    def status(self) -> str:
        """The ai-runner health vocabulary: LOADING until warm, then IDLE or OK (busy); ERROR after a fatal fault.

        Draining keeps IDLE/OK (the process still finishes its work); ``/ready`` is what turns 503.
        """
        if self.error:
            return "ERROR"
        if not self.warm:
            return "LOADING"
        return "OK" if any(s.pending for s in self.sessions.values()) else "IDLE"

    @property
    def capabilities(self) -> dict[str, Capability]:
        """What each served capability takes and gives (its contract: outputs, options, media types)."""
        return {name: session.capability for name, session in self.sessions.items()}

    def session(self, name: str) -> CapabilitySession:
        """The capability's session; while draining it still takes requests until the listener closes."""
        session = self.sessions.get(name)
        if session is None:
            raise NotFound(f"no capability {name!r}; this node serves: {', '.join(self.sessions) or 'nothing yet'}")
        if not self.warm or self.error:
            raise NotReady(f"{name}: the node is {self.status.lower()}" + (f": {self.error}" if self.error else ""))
        return session

    def fail(self, reason: str) -> None:
        """A fault the node cannot recover from (callers log it): not ready from now on, and the process stops.

        Safe to call from any thread."""
        if self.error:
            return
        self.error = reason
        self.metrics.ready.set(0)
        self.on_fatal()

    async def drain(self) -> None:
        """SIGTERM's first step: ``/ready`` turns 503 and the orchestrator is told we are leaving."""
        self.draining = True
        self.streams.closing = True  # no new stream; those running go on until the node stops
        self.metrics.ready.set(0)
        await asyncio.gather(*(r.stop() for r in (self.registrar, self.live_runners) if r is not None))

    @property
    def runner_status(self) -> str:
        """A live runner's ``status``: only ``ready`` is discoverable."""
        if self.error:
            return "error"
        if self.draining:
            return "draining"
        return "ready" if self.warm else "warming"

    @asynccontextmanager
    async def lifespan(self, app):
        served = self.served
        if served is None:  # not checked by preflight (tests, the stream processor): check here
            try:
                served = await asyncio.to_thread(
                    engines.load, self.config.engines, self.config.capabilities, self.config.backend == "onnxruntime"
                )
                preflight.check_combinations(self.config, served)
            except StartupError as err:
                log.error("start-up failed: %s", err)
                raise
        for warning in self.config.registration_warnings():
            log.warning("%s", warning)
        self.device_memory = device_memory.of({name: [g.memory for g in e.graphs] for name, e in served.items()})
        log.info("%s", self.device_memory.summary())
        for name, entry in served.items():
            capability = CAPABILITY_CLASSES[name](entry.options)
            session = CapabilitySession(
                entry,
                capability,
                self.open_backend(entry),
                self.config.queue_size,
                max_failures=self.config.max_consecutive_failures,
                on_fatal=self.fail,
                max_batch=self.config.max_batch,
                batch_window_s=self.config.batch_window_s,
                on_failure=functools.partial(self._count_failure, name),
                png_level=self.config.png_compression,
            )
            self.sessions[name] = session
            self.metrics.track(session)
            self.metrics.streams.labels(name).set_function(functools.partial(self.streams.active, name))
            if entry.demo:
                log.warning("%s: DEMO weights (seeded random, not a trained model): its maps mean nothing", name)
        warm_up = asyncio.create_task(self._warm_up())
        watch = asyncio.create_task(self._watch_for_hangs())
        try:
            yield {"node": self}
        finally:
            watch.cancel()
            await warm_up
            await self.drain()  # unregister (once): the orchestrator stops routing here
            await self.streams.close()  # each stream ends (an event, its threads joined) before the engines go
            if self.error and self.warm:
                log.warning("not closing the backends: after a fatal fault only the process exit frees them safely")
            else:
                await asyncio.to_thread(self._close)

    def _count_failure(self, capability: str, kind: str) -> None:
        """A backend failure of ``kind`` (runtime.faults) on the capability's worker thread, for the metrics."""
        self.metrics.backend_failures.labels(capability, kind).inc()

    async def _watch_for_hangs(self) -> None:
        """A frame that never returns is a hung device (no exception will come): fail the node."""
        limit = self.config.hang_timeout_s
        while not self.error:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for session in self.sessions.values():
                since = session.running_since
                if since is not None and now - since > limit:
                    reason = f"{session.name}: an inference has not returned for {now - since:.1f} s: the device hangs"
                    log.error("%s", reason)
                    self.fail(reason)
                    return

    async def _warm_up(self) -> None:
        try:
            seconds = await asyncio.gather(*(asyncio.to_thread(s.open) for s in self.sessions.values()))
            await asyncio.to_thread(media.warm_up)
        except Exception as err:  # StartupError names the file; anything else also gets its traceback
            reason = str(err) if isinstance(err, StartupError) else f"{type(err).__name__}: {err}"
            log.error("start-up failed: %s", reason, exc_info=not isinstance(err, StartupError))
            self.fail(reason)
            return
        for session, took in zip(self.sessions.values(), seconds):
            for graph, backend in session.backends.items():
                log.info(
                    "%s: %s ready on %s (%s, %s weights) in %.2f s",
                    session.name,
                    graph.onnxruntime_file.name if backend.name == "onnxruntime" else graph.path.name,
                    backend.device,
                    backend.name,
                    session.served.weights,
                    took,
                )
        for session in self.sessions.values():
            for kind, size in session.memory().items():
                self.metrics.memory.labels(session.name, kind).set(size)
        self.metrics.memory.labels("node", "shared_scratch").set(self.backends.shared_scratch_bytes)
        age = process_age()
        log.info("ready: %s%s", ", ".join(self.sessions), f" ({age:.2f} s after process start)" if age else "")
        self.warm = True
        self.metrics.ready.set(1)
        if self.draining:
            return
        # Only once warm: a registered node must answer.
        offered = [*self.sessions, *self.config.combinations]  # a combination is a capability of its own
        if self.config.registers_byoc:
            live = [name + LIVE_SUFFIX for name in self.sessions] if self.config.stream_capacity else []
            self.registrar = Registrar(self.config, offered + live, self.device_memory.told())
            self.registrar.start()
        if self.config.registers_live_runners:
            self.live_runners = LiveRunners(
                self.config, offered, lambda: self.runner_status, self.backends.gpu_facts, self.device_memory.told()
            )
            self.live_runners.start()

    def _close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.backends.close()

    async def observe(self, timings: tuple[tuple[str, dict[str, float]], ...], live_runner: bool) -> None:
        """An answered request's stages, per capability, into the metrics (after the answer has left).
        A coroutine so that Starlette's background task runs it on the loop: a function would cost a thread hop."""
        for name, stages in timings:
            self.metrics.observe(name, stages)
            if live_runner:
                self.metrics.live_runner_frames.labels(name).inc()

    def describe(self) -> dict:
        """``/capabilities``: the node, its limits and each capability it serves, with its backend and routes."""
        config = self.config
        served = {}
        for name, session in self.sessions.items():
            cap = session.capability
            backends = list(session.backends.values())
            served[name] = {
                **engines.describe(session.served),
                "warm": session.warm,
                "backend": {
                    "name": backends[0].name if backends else config.backend,
                    "device": backends[0].device if backends else None,
                    "precision": backends[0].precision if backends else None,
                    "memory_bytes": session.memory(),
                },
                "device_memory": need.as_dict() if (need := self.device_memory.capabilities.get(name)) else None,
                "route": f"/infer/{name}",
                "outputs": list(cap.outputs),
                "options": dict(cap.defaults),
                "stream": {
                    "url": f"/live/{name}",  # go-livepeer appends /stream/start, /stream/params, /stream/stop
                    "capacity": self.streams.capacity,
                    "active": self.streams.active(name),
                    "outputs": list(cap.stream_outputs),
                },
            }
        return {
            "node": {
                "version": __version__,
                "status": self.status,
                "backend": config.backend,
                "shared_scratch_bytes": self.backends.shared_scratch_bytes,
                "device_memory": self.device_memory.as_dict(),
                "token_required": bool(config.token),  # /infer needs Authorization: Bearer <token>
            },
            "limits": {
                "max_body_bytes": config.max_body_bytes,
                "queue_size": config.queue_size,
                "request_timeout_s": config.request_timeout_s,
                "inputs": list(content_type.ACCEPTED),
            },
            "capabilities": served,
        }


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the start-up log line."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
