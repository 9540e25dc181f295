"""One capability at run time: its backends, a bounded queue and one worker thread.

Frames for a capability run one at a time on its worker thread, never on the event loop.
At most ``queue_size`` requests wait behind the running one; the next is refused at once
(503, retryable). A request whose deadline passes while it waits is dropped before it runs.
A backend failure is classified (``runtime.faults``): out of memory fails only its request
(503); a broken device, or ``max_failures`` failures in a row, is reported through ``on_fatal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from . import samples
from .contract import FRAME_INPUT
from .engines import Graph, ServedCapability
from .errors import BackendFailed, BackendOutOfMemory, DeadlineExceeded, EngineError, Overloaded, StartupError
from .runtime import faults

log = logging.getLogger("node")


@dataclass
class Job:
    frame: np.ndarray
    options: dict
    deadline: float  # time.monotonic()
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False


@dataclass
class Outcome:
    rendered: object
    graph: Graph
    queue_s: float
    infer_s: float
    render_s: float


class CapabilitySession:
    def __init__(
        self,
        served: ServedCapability,
        capability,
        open_backend: Callable[[Graph], object],
        queue_size: int,
        max_failures: int = 3,
        on_fatal: Callable[[str], None] = lambda reason: None,
    ):
        self.served = served
        self.capability = capability
        self.open_backend = open_backend
        self.queue_size = queue_size
        self.max_failures = max_failures
        self.on_fatal = on_fatal  # called from the worker thread
        self.backends: dict[Graph, object] = {}
        self.pending = 0  # accepted, not finished (changed on the event loop only)
        self.running_since: float | None = None  # time.monotonic() when the running frame started
        self.failures = 0  # backend failures in a row (worker thread only)
        self.warm = False
        self._stack = ExitStack()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def waiting(self) -> int:
        return self.pending - int(self.running_since is not None)

    def open(self) -> float:
        """Load every graph and run a warm-up frame through each (blocking); returns the seconds it took."""
        start = time.perf_counter()
        for graph in self.served.graphs:
            backend = self._stack.enter_context(self.open_backend(graph))
            self.backends[graph] = backend
            # The smallest frame the bounds allow: the model runs at its full resolution either way,
            # while resizing and upsampling stay cheap, which shortens start-up on a CPU.
            h, w = self.served.bounds.min_hw
            try:
                outputs = backend.infer({FRAME_INPUT: samples.frames(h, w)})
            except Exception as err:
                raise StartupError(f"{graph.path}: warm-up inference failed: {err}") from err
            bad = [name for name, v in outputs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
            if bad:
                raise StartupError(f"{graph.path}: warm-up produced NaN/Inf in {', '.join(bad)}")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{self.name}")
        self.warm = True
        return time.perf_counter() - start

    def close(self) -> None:
        self.warm = False
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # the running frame finishes before its buffers go
            self._executor = None
        self._stack.close()
        self.backends = {}

    async def run(self, frame: np.ndarray, options: dict, deadline: float) -> Outcome:
        if self.pending > self.queue_size:
            raise Overloaded(f"{self.name}: {self.waiting} requests already waiting (queue size {self.queue_size})")
        job = Job(frame, options, deadline)
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._work, job)
        future.add_done_callback(self._finished)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            job.abandoned = True
            raise DeadlineExceeded(f"{self.name}: no result within the request deadline") from None
        if outcome is None:  # dropped by the worker: its deadline had passed
            raise DeadlineExceeded(f"{self.name}: the deadline passed while the request waited")
        return outcome

    def _finished(self, future) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved here too, so an abandoned job's error is not reported twice

    def _work(self, job: Job) -> Outcome | None:
        started = time.perf_counter()
        if job.abandoned or time.monotonic() >= job.deadline:
            return None
        h, w = job.frame.shape[:2]
        graph = self.served.graph_for(h, w)
        self.running_since = time.monotonic()
        try:
            outputs = self.backends[graph].infer({FRAME_INPUT: job.frame[None]})
        except Exception as err:
            raise self._backend_failed(err, f"a {w}x{h} frame") from err
        finally:
            self.running_since = None
        self.failures = 0
        inferred = time.perf_counter()
        try:
            rendered = self.capability.render(outputs, job.options, (h, w))
        except Exception as err:  # our rendering, not the device: this request only
            log.exception("%s: rendering failed on a %dx%d frame", self.name, w, h)
            raise EngineError(f"{self.name}: rendering failed on this frame: {err}") from err
        return Outcome(rendered, graph, started - job.submitted, inferred - started, time.perf_counter() - inferred)

    def _backend_failed(self, err: Exception, what: str) -> Exception:
        """The error for this request; a broken device is also reported to the node."""
        kind = faults.classify(err)
        if kind == faults.TRANSIENT:
            log.warning("%s: out of memory on %s (only this request fails): %s", self.name, what, err)
            return BackendOutOfMemory(f"{self.name}: the backend ran out of memory on this frame; retry")
        self.failures += 1
        if kind == faults.FATAL or self.failures >= self.max_failures:
            why = "a broken device" if kind == faults.FATAL else f"{self.failures} failures in a row"
            reason = f"{self.name}: {why}: {type(err).__name__}: {err}"
            log.error("%s", reason, exc_info=err)
            self.on_fatal(reason)
            return BackendFailed(f"{self.name}: the backend failed and the node is restarting: {err}")
        log.exception("%s: the backend failed on %s", self.name, what, exc_info=err)
        return EngineError(f"{self.name}: the backend failed on this frame: {err}")
