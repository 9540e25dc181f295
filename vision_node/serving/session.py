"""One capability at run time: its backends, a bounded queue and one worker thread.

Frames for a capability run on its worker thread, never on the event loop. At most
``queue_size`` requests wait behind the running one; the next is refused at once (503,
retryable). A request whose deadline passes while it waits is dropped before it runs.
With ``max_batch`` > 1, the worker runs same-sized frames that are already waiting as one
batch (waiting up to ``batch_window_s`` for more), the way Triton's dynamic batcher does.
A backend failure is classified (``runtime.faults``): out of memory fails only its requests
(503); a broken device, or ``max_failures`` failures in a row, is reported through ``on_fatal``.
When every request a running frame serves has passed its deadline, the frame is stopped through
its ``StopToken`` (where the backend can: ONNX Runtime yes, TensorRT no), so the worker moves on
to the next frame instead of finishing one nobody waits for; that is no failure.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
from anyio import to_thread

from .. import samples
from ..capabilities.base import Capability, Encoded, Rendered
from ..contract import FRAME_INPUT
from ..errors import (
    BackendFailed,
    BackendOutOfMemory,
    DeadlineExceeded,
    EngineError,
    FrameRejected,
    InputError,
    NotReady,
    Overloaded,
    StartupError,
    incident,
)
from ..media.frames import JpegFrame
from ..runtime import faults
from ..runtime.base import Backend, StopToken
from .engines import Graph, ServedCapability

log = logging.getLogger("vision_node")

# Capabilities load in parallel but warm up one at a time: ONNX Runtime's threads spin between operators,
# so three warm-ups at once on 2 cores mostly fought (the demo build was ready in 3.03 s so, 2.64 s this
# way; benchmarks coldstart). Loading (reading, parsing, allocating) still overlaps.
_WARM_UP = threading.Lock()


@dataclass(eq=False)  # identity: a job is found in the queue by itself, never by comparing frames
class Job:
    frame: np.ndarray | JpegFrame  # a JpegFrame only where every backend decodes JPEG on the GPU (decodes_jpeg)
    options: dict
    deadline: float  # time.monotonic()
    future: asyncio.Future  # on the request's event loop
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False
    streamed: bool = False  # a live stream's frame: admitted with its stream, not by the request queue

    def resolve(self, outcome=None, error: Exception | None = None) -> None:
        """Hand the result to the request's event loop (from the worker thread)."""
        self.future.get_loop().call_soon_threadsafe(_settle, self.future, outcome, error)


def _settle(future: asyncio.Future, outcome, error) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(outcome)


@dataclass
class Running:
    """The worker's frame: the jobs it serves and the token that stops it."""

    jobs: list[Job]
    stop: StopToken


@dataclass
class Outcome:
    """A frame's inference: the graph's outputs (batch of one) in arrays the request owns, so that rendering
    runs after the worker has moved on (``render``: on the thread that encodes), never on the worker."""

    outputs: dict[str, np.ndarray]
    frame_hw: tuple[int, int]
    graph: Graph
    queue_s: float
    infer_s: float
    batch: int = 1


@dataclass(frozen=True)
class Part:
    """One capability's answer to a request: the body, its X-Metadata, and seconds by stage (for the metrics)."""

    encoded: Encoded
    meta: dict
    timings: dict[str, float]


class CapabilitySession:
    def __init__(
        self,
        served: ServedCapability,
        capability: Capability,
        open_backend: Callable[[Graph], Backend],
        queue_size: int,
        max_failures: int = 3,
        on_fatal: Callable[[str], None] = lambda reason: None,
        max_batch: int = 1,
        batch_window_s: float = 0.0,
        on_failure: Callable[[str], None] = lambda kind: None,
        png_level: int = 1,
    ):
        self.served = served
        self.capability = capability
        self.open_backend = open_backend
        self.queue_size = queue_size
        self.max_failures = max_failures
        self.on_fatal = on_fatal  # called from the worker thread
        self.on_failure = on_failure  # every backend failure's kind (runtime.faults), for the metrics
        self.backends: dict[Graph, Backend] = {}
        self._outputs: dict[Backend, frozenset[str]] = {}  # each backend's graph's output names
        self.pending = 0  # accepted, not finished (changed on the event loop only)
        self.streamed = 0  # of which live streams' frames (each stream has at most one here)
        self.running_since: float | None = None  # time.monotonic() when the running frame started
        self.failures = 0  # backend failures in a row (worker thread only)
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.png_level = png_level  # zlib's scale (media.png)
        self.warm = False
        # Every graph's backend decodes JPEG on the GPU (--gpu-decode): known once the backends are open, so
        # a request's JPEG is then left encoded (media.frames.JpegFrame) for the worker to hand over.
        self.decodes_jpeg = False
        self._stack = ExitStack()
        self._jobs: deque[Job] = deque()
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running: Running | None = None
        self._running_lock = threading.Lock()  # orders giving up (event loop) against starting a frame (worker)
        self._closing = False
        # X-Metadata's part that follows from the graph and the frame size alone: built once per size
        self.graph_meta = functools.lru_cache(maxsize=256)(self._graph_meta)

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
            self._outputs[backend] = frozenset(out["name"] for out in graph.outputs)
            # The smallest frame the bounds allow: the model still runs at its nominal resolution (a
            # keep-aspect graph sizes a square frame to it), while resizing and upsampling stay cheap.
            h, w = self.served.bounds.min_hw
            parameters = {
                name: np.full(1, value, np.float32) for name, value in self.capability.warm_up_parameters.items()
            }
            try:
                with _WARM_UP:
                    outputs = backend.infer({FRAME_INPUT: samples.frames(h, w), **parameters})
            except Exception as err:
                raise StartupError(f"{graph.path}: warm-up inference failed: {err}") from err
            bad = [name for name, v in outputs.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
            if bad:
                raise StartupError(f"{graph.path}: warm-up produced NaN/Inf in {', '.join(bad)}")
        # What every graph's backend can take (a TensorRT engine's profile, ONNX Runtime's buffers).
        self.max_batch = min(self.max_batch, *(b.max_batch for b in self.backends.values()))
        self.decodes_jpeg = all(b.gpu_decoder is not None for b in self.backends.values())
        self._worker = threading.Thread(target=self._serve, name=f"infer-{self.name}", daemon=True)
        self._worker.start()
        self.warm = True
        return time.perf_counter() - start

    def _graph_meta(self, graph: Graph, height: int, width: int) -> dict:
        backend = self.backends[graph]
        return {
            "capability": self.name,
            "model": "+".join(m["name"] for m in self.served.models),
            "weights": self.served.weights,
            "demo": self.served.demo,
            "backend": backend.name,
            "device": backend.device,
            "precision": backend.precision,
            "graph_resolution": graph.model_size(height, width),  # what the model ran at (a list in JSON)
            "resolution_mode": graph.sizing.mode,
            **graph.budget_meta(height, width),
        }

    def memory(self) -> dict[str, int]:
        """Bytes the session's backends hold, summed by kind."""
        total: dict[str, int] = {}
        for backend in self.backends.values():
            for kind, size in backend.memory().items():
                total[kind] = total.get(kind, 0) + size
        return total

    def close(self) -> None:
        self.warm = False
        self.graph_meta.cache_clear()
        if self._worker is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._worker.join()  # the running frame finishes before its buffers go
            self._worker = None
        for job in self._jobs:
            job.resolve(error=NotReady(f"{self.name}: the node is shutting down"))
        self._jobs.clear()
        self._stack.close()
        self.backends = {}
        self._outputs = {}

    async def run(self, frame: np.ndarray, options: dict, deadline: float) -> Outcome:
        """One frame's outcome, unencoded (tests, and callers that render themselves)."""
        self.check_room()
        return await self.result(self.submit(frame, options, deadline))

    async def answer(self, job: Job, before: dict[str, float], arrived: float) -> Part:
        """The job's result, encoded and described: this capability's whole answer to its request.

        ``before``: the request's stages before the job (read, decode), in seconds; ``arrived``: its
        ``time.perf_counter()`` on arrival."""
        outcome = await self.result(job)
        options = job.options
        if options["output"] == "raw":  # no work to move off the loop: the bytes are the graph's own array
            rendered, encoded, render_s, encode_s = self._finish(outcome, options)
        else:
            rendered, encoded, render_s, encode_s = await to_thread.run_sync(self._finish, outcome, options)
        timings = {
            **before,
            "queue": outcome.queue_s,
            "infer": outcome.infer_s,
            "render": render_s,
            "encode": encode_s,
            "total": time.perf_counter() - arrived,
        }
        frame_hw = (int(job.frame.shape[0]), int(job.frame.shape[1]))
        meta = {
            **self.graph_meta(outcome.graph, *frame_hw),
            "batch": outcome.batch,
            "frame": list(frame_hw),
            "output": options["output"],
            **rendered.meta,
            **encoded.meta,
            "timings_ms": {stage: round(seconds * 1000, 3) for stage, seconds in timings.items()},
        }
        return Part(encoded, meta, timings)

    def check_room(self) -> None:
        """Raise Overloaded (503) when one more request would not fit; the event loop's thread only.

        Live streams' frames do not count: a stream was admitted whole when it started."""
        if self.pending - self.streamed > self.queue_size:
            raise Overloaded(f"{self.name}: {self.waiting} requests already waiting (queue size {self.queue_size})")

    def submit(self, frame: np.ndarray | JpegFrame, options: dict, deadline: float, streamed: bool = False) -> Job:
        """Queue a frame (no await: several sessions can take one request together, or none of them).

        The caller has made room (``check_room``) for a request's frame; a stream's was admitted with its
        stream. A frame outside the bounds is refused here (422), whoever sends it: no backend is handed
        one, and none is counted as a backend failure."""
        try:
            self.served.bounds.check(frame.shape[0], frame.shape[1])
        except ValueError as err:
            raise FrameRejected(f"{self.name}: {err}") from None
        job = Job(frame, options, deadline, asyncio.get_running_loop().create_future(), streamed=streamed)
        self.pending += 1
        self.streamed += streamed
        job.future.add_done_callback(functools.partial(self._finished, job))
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()
        return job

    def _finish(self, outcome: Outcome, options: dict) -> tuple[Rendered, Encoded, float, float]:
        """Render and encode (one thread hop for both); their seconds."""
        started = time.perf_counter()
        rendered = self.render(outcome, options)
        rendered_at = time.perf_counter()
        encoded = self.capability.encode(rendered, options, self.png_level)
        return rendered, encoded, rendered_at - started, time.perf_counter() - rendered_at

    def render(self, outcome: Outcome, options: dict) -> Rendered:
        """The frame's result as the request asked (any thread); a failure is this request's only (500)."""
        try:
            return self.capability.render(outcome.outputs, options, outcome.frame_hw)
        except Exception:  # our rendering, not the device
            case = incident()
            h, w = outcome.frame_hw
            log.exception("%s: rendering failed on a %dx%d frame (incident %s)", self.name, w, h, case)
            raise EngineError(f"{self.name}: rendering failed on this frame (incident {case})") from None

    async def result(self, job: Job) -> Outcome:
        deadline = job.deadline
        try:
            outcome = await asyncio.wait_for(asyncio.shield(job.future), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            self.give_up(job)
            raise DeadlineExceeded(f"{self.name}: no result within the request deadline") from None
        if outcome is None:  # dropped by the worker: its deadline had passed
            raise DeadlineExceeded(f"{self.name}: the deadline passed while the request waited")
        return outcome

    def give_up(self, job: Job) -> None:
        """Its request stops waiting; its frame is stopped too if none of the frame's jobs still waits."""
        with self._running_lock:
            job.abandoned = True
            running = self._running
            if running is not None and job in running.jobs and all(j.abandoned for j in running.jobs):
                running.stop.stop()

    def _finished(self, job: Job, future) -> None:
        self.pending -= 1
        self.streamed -= job.streamed
        if not future.cancelled():
            future.exception()  # retrieved here too, so an abandoned job's error is not reported twice

    # -- the worker thread

    def _serve(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._jobs and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        return
                    batch = self._take()
                if batch:
                    self._work(batch)
        except Exception as err:  # a bug here would leave every request waiting for its deadline
            log.exception("%s: the worker thread stopped", self.name)
            self.on_fatal(f"{self.name}: the worker thread stopped: {type(err).__name__}: {err}")

    def _take(self) -> list[Job]:
        """The next job and, up to ``max_batch``, waiting jobs of the same frame size. Call with ``_wake`` held."""
        while self._jobs:
            first = self._jobs.popleft()
            if first.abandoned or time.monotonic() >= first.deadline:
                first.resolve(None)  # its deadline passed while it waited: not run
                continue
            break
        else:
            return []
        if isinstance(first.frame, JpegFrame):
            return [first]  # decoded on the GPU into the engine's input: one frame at a time
        batch = [first]
        until = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            same = next(
                (
                    j
                    for j in self._jobs
                    if j.frame.shape == first.frame.shape and not j.abandoned and not isinstance(j.frame, JpegFrame)
                ),
                None,
            )
            if same is not None:
                self._jobs.remove(same)
                batch.append(same)
                continue
            left = until - time.monotonic()
            if left <= 0 or self._closing:
                break
            self._wake.wait(left)
        return batch

    def _work(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        h, w = batch[0].frame.shape[:2]
        graph = self.served.graph_for(h, w)
        stop = StopToken()
        with self._running_lock:
            self._running = Running(batch, stop)
            if all(job.abandoned for job in batch):  # given up since _take: the run stops at once
                stop.stop()
        self.running_since = time.monotonic()
        try:
            outputs = self._infer(self.backends[graph], batch, stop)
        except InputError as err:  # a JPEG the GPU left to the CPU turned out corrupt: this request's fault
            batch[0].resolve(error=err)
            return
        except Exception as err:
            error = self._backend_failed(err, f"{len(batch)} {w}x{h} frame(s)")
            for job in batch:
                job.resolve(error=error)
            return
        finally:
            with self._running_lock:
                self._running = None
            self.running_since = None
        self.failures = 0
        infer_s = time.perf_counter() - started
        for i, job in enumerate(batch):
            mine = {name: value[i : i + 1] for name, value in outputs.items()}
            job.resolve(Outcome(mine, (h, w), graph, started - job.submitted, infer_s, len(batch)))

    def _infer(self, backend: Backend, batch: list[Job], stop: StopToken) -> dict[str, np.ndarray]:
        # The graph's per-frame parameters are request options of the same name (pose: person_threshold).
        parameters = {
            name: np.array([job.options[name] for job in batch], np.float32)
            for name in self.capability.frame_parameters
        }
        # Every output into arrays the requests own: rendering happens after the backend has run the next frame.
        owned = self._outputs[backend]
        frame = batch[0].frame
        if isinstance(frame, JpegFrame):  # TensorRT only, which cannot stop a frame anyway
            h, w, _ = frame.shape
            decoder = backend.gpu_decoder
            assert decoder is not None  # JPEG frames come only where every backend has one (decodes_jpeg)
            outputs = backend.infer_jpeg(frame.data, h, w, decoder, parameters, owned)
            if outputs is not None:
                return outputs
            frame = frame.decode()  # the GPU decoder could not: libjpeg-turbo, as without --gpu-decode
        if len(batch) == 1:
            frames = frame[None]
        else:  # frames of one size, never JPEG bytes: _take runs a JpegFrame alone
            pixels = [job.frame for job in batch if isinstance(job.frame, np.ndarray)]
            assert len(pixels) == len(batch)
            frames = np.stack(pixels)
        return backend.infer({FRAME_INPUT: frames, **parameters}, stop=stop, owned=owned)

    def _backend_failed(self, err: Exception, what: str) -> Exception:
        """The error for this request; a broken device is also reported to the node."""
        kind = faults.classify(err)
        if kind == faults.STOPPED:  # asked for by give_up: says nothing about the backend
            log.info("%s: stopped %s: every request it served had passed its deadline", self.name, what)
            return DeadlineExceeded(f"{self.name}: stopped: no result within the request deadline")
        self.on_failure(kind)
        if kind == faults.TRANSIENT:
            log.warning("%s: out of memory on %s (only this request fails): %s", self.name, what, err)
            return BackendOutOfMemory(f"{self.name}: the backend ran out of memory on this frame; retry")
        self.failures += 1
        if kind == faults.FATAL or self.failures >= self.max_failures:
            why = "a broken device" if kind == faults.FATAL else f"{self.failures} failures in a row"
            case = incident()
            reason = f"{self.name}: {why}: {type(err).__name__}: {err}"
            log.error("%s (incident %s)", reason, case, exc_info=err)
            self.on_fatal(reason)
            return BackendFailed(f"{self.name}: the backend failed and the node is restarting (incident {case})")
        case = incident()
        log.error("%s: the backend failed on %s (incident %s)", self.name, what, case, exc_info=err)
        return EngineError(f"{self.name}: the backend failed on this frame (incident {case})")
