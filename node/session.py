"""One capability at run time: its backends, a bounded queue and one worker thread.

Frames for a capability run one at a time on its worker thread, never on the event loop.
At most ``queue_size`` requests wait behind the running one; the next is refused at once
(503, retryable). A request whose deadline passes while it waits is dropped before it runs.
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
from .errors import DeadlineExceeded, EngineError, Overloaded, StartupError

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
    def __init__(self, served: ServedCapability, capability, open_backend: Callable[[Graph], object], queue_size: int):
        self.served = served
        self.capability = capability
        self.open_backend = open_backend
        self.queue_size = queue_size
        self.backends: dict[Graph, object] = {}
        self.pending = 0  # accepted, not finished (changed on the event loop only)
        self.running = False
        self.warm = False
        self._stack = ExitStack()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def waiting(self) -> int:
        return self.pending - int(self.running)

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
        self.running = True
        try:
            outputs = self.backends[graph].infer({FRAME_INPUT: job.frame[None]})
            inferred = time.perf_counter()
            rendered = self.capability.render(outputs, job.options, (h, w))
        except Exception as err:
            log.exception("%s: inference failed on a %dx%d frame", self.name, w, h)
            raise EngineError(f"{self.name}: the backend failed on this frame: {err}") from err
        finally:
            self.running = False
        return Outcome(rendered, graph, started - job.submitted, inferred - started, time.perf_counter() - inferred)
