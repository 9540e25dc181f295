"""One live stream: trickle segments in, conditioning maps out, the latest frame first.

```
input channel ──segments──► [decode thread] demux + decode, skip past max_framerate, RGB at the stream's size
                                   │ offer: the newest frame replaces one still waiting (dropped, counted)
                                   ▼
                      [event loop] the capability's session (the same graph and rendering as /infer;
                                   frames of several streams batch together there), one frame at a time
                                   │ at most two maps wait for the encoder; while they do, frames keep dropping
                                   ▼
                     [encode thread] the map as video (capability.picture), H.264, one MPEG-TS muxer a segment
                                   │ bytes as they are muxed
                                   ▼
output channel ◄──segments── [event loop] one chunked POST per segment, the next one already connected
control channel ──► params, keep-alives          events channel ◄── status every few seconds, errors
```

Frames wait in exactly one place, the slot before inference, which holds one frame: when inference is
slower than the input, latency stays one inference plus the host stages instead of growing. An output
segment starts (with an IDR frame) where an input segment started, so output segments mirror input
GOPs; the input's pts goes out with its map.

A stream's faults are its own: undecodable segments are counted and skipped, a frame the engine fails
on is counted and reported as an event, and the stream ends (with an error event, one log line) when
its input ends (404 or closed: how go-livepeer stops an unpaid stream), when its output is gone, when
its input stops for ``idle_timeout_s``, or when the input is not H.264. Stopping joins its two threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
import av
import numpy as np

from ..capabilities.base import Capability, Rendered
from ..errors import DeadlineExceeded, InputError, NodeError, NotReady
from ..livepeer.trickle import CURRENT, ChannelError, ChannelGone, Publisher, SegmentWriter, Subscriber
from ..serving.session import CapabilitySession, Job, Outcome
from . import params, video
from .stats import StreamStats

log = logging.getLogger("vision_node.streams")

ENCODER_ROOM = 2  # maps that may wait for the encoder before inference waits (and frames drop instead)
_PTS_SLACK = 45  # 0.5 ms of a 90 kHz clock: pts rounding never counts as a frame too early
_NEW_SEGMENT, _END = object(), object()


@dataclass(frozen=True)
class Channels:
    ROLES: ClassVar = ("subscribe", "publish", "control", "events", "data")

    subscribe: str  # input video (the orchestrator's {id})
    publish: str  # output video ({id}-out)
    control: str | None = None  # params and keep-alives in
    events: str | None = None  # status and errors out
    data: str | None = None  # per-frame facts out (JSON lines)


@dataclass(frozen=True)
class Settings:
    encoder: str = "libx264"
    quality: int = 23  # x264's CRF
    status_interval_s: float = 5.0
    idle_timeout_s: float = 30.0
    frame_timeout_s: float = 10.0  # a frame's deadline in the session


@dataclass
class Frame:
    pixels: np.ndarray
    pts: int
    segment: int  # the input segment it came in
    demuxed: float  # time.monotonic() its packet left the demuxer
    decode_s: float
    offered: float = 0.0


@dataclass
class Map:
    frame: Frame
    outcome: Outcome
    options: dict
    queue_s: float  # the slot and the encoder's room, then the session's queue
    render_s: float = 0.0
    encode_s: float = 0.0
    encoded: float = 0.0  # time.monotonic() its bytes were muxed


class Stream:
    def __init__(
        self,
        stream_id: str,
        session: CapabilitySession,
        options: params.StreamOptions,
        channels: Channels,
        http: aiohttp.ClientSession,
        settings: Settings,
        counters: dict,
        on_end: Callable[[Stream], None],
        origin: str = "byoc",
    ):
        self.id, self.session, self.options, self.channels = stream_id, session, options, channels
        self.capability: Capability = session.capability
        self.http, self.settings, self.origin = http, settings, origin
        self.counters = counters  # prometheus children by kind ("in", "out", ...) and "latency"
        self._on_end = on_end
        self.stats = StreamStats()
        self.state = "starting"
        self.size: tuple[int, int] | None = options.size
        self.depth_range: list[float] | None = None  # depth's smoothing state: lives with the stream
        self.keepalives = 0
        self.ended: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: Frame | None = None
        self._frame_ready = asyncio.Event()
        self._decoding = asyncio.Semaphore(2)  # segments between the network and the decoder
        self._encoding = asyncio.Semaphore(ENCODER_ROOM)
        self._feeds: queue.SimpleQueue = queue.SimpleQueue()
        self._open_feeds: set[video.Feed] = set()
        self._maps: queue.SimpleQueue = queue.SimpleQueue()
        self._out: asyncio.Queue = asyncio.Queue()
        self._events: Publisher | None = None
        self._events_lock = asyncio.Lock()
        self._job: Job | None = None
        self._publishing: asyncio.Future | None = None
        self._tasks: list[asyncio.Future] = []
        self._threads: list[threading.Thread] = []
        self._halt = threading.Event()
        self._told: set[str] = set()  # warnings sent once per stream

    # ---------------------------------------------------------------- lifecycle (event loop)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.ended = self._loop.create_future()
        self._threads = [
            threading.Thread(target=self._decode_thread, name=f"decode-{self.id[:16]}", daemon=True),
            threading.Thread(target=self._encode_thread, name=f"encode-{self.id[:16]}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if self.channels.events:
            self._events = Publisher(self.http, self.channels.events, "application/json")
        self._publishing = asyncio.ensure_future(self._guard(self._publish()))
        jobs = [self._ingest(), self._infer(), self._watch(), *([self._control()] if self.channels.control else [])]
        self._tasks = [self._publishing, *(asyncio.ensure_future(self._guard(job)) for job in jobs)]
        self.state = "running"

    async def _guard(self, job) -> None:
        """A bug in one of the stream's tasks ends that stream, with its reason, and nothing else."""
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("stream %s: %s", self.id, err)
            self.end(f"internal error: {type(err).__name__}: {err}", error=True)

    def end(self, reason: str, error: bool = False) -> asyncio.Future:
        """Stop the stream (once; later calls return the same future)."""
        assert self.ended is not None, "end() before start()"
        if self.state not in ("stopping", "stopped"):
            self.state = "stopping"
            asyncio.ensure_future(self._shutdown(reason, error))
        return self.ended

    async def _shutdown(self, reason: str, error: bool) -> None:
        try:
            await self._wind_down()
            if error:
                self.stats.error(reason)
            final = {"type": "error" if error else "stream_stopped", "reason": reason, **self.status()}
            await self._event(final, timeout=2.0)
            if self._events is not None:
                await self._events.close()
        finally:  # whatever happened above, the stream is gone and whoever waits for its end hears of it
            self.state = "stopped"
            frames, seconds = self.stats.frames, time.monotonic() - self.stats.started
            counts = ", ".join(f"{frames[kind]} {kind}" for kind in ("in", "out", "dropped", "skipped", "failed"))
            level = logging.WARNING if error else logging.INFO
            log.log(
                level,
                "stream %s (%s) stopped: %s; frames: %s over %.1f s",
                self.id,
                self.capability.name,
                reason,
                counts,
                seconds,
            )
            self._on_end(self)
            assert self.ended is not None  # made by start(), before any end()
            if not self.ended.done():
                self.ended.set_result(reason)

    async def _wind_down(self) -> None:
        """Input first, then the threads (joined), then the output's last segment, then every task."""
        self._halt.set()
        publishing = self._publishing
        assert publishing is not None  # made by start(), before any end()
        for task in self._tasks:
            if task is not publishing:
                task.cancel()  # (each loop also looks at _halt: Python 3.11's wait_for can swallow a cancel)
        if self._job is not None:
            self.session.give_up(self._job)
        for feed in list(self._open_feeds):
            feed.stop()
        self._feeds.put(None)
        self._maps.put(None)  # the encoder finishes the maps it holds, then ends its segment
        while any(thread.is_alive() for thread in self._threads):  # joined without a thread of the loop's pool
            await asyncio.sleep(0.005)
        try:  # the last segment's end reaches the output channel
            await asyncio.wait_for(asyncio.shield(publishing), 5.0)
        except asyncio.TimeoutError:
            publishing.cancel()
        await _cancelled(self._tasks)

    def update(self, given) -> None:
        """New params (``/stream/params``, the control channel); InputError leaves the stream as it was."""
        options = params.parse(self.capability, self.session.served.bounds, given, self.options)
        if options.options.get("range") != self.options.options.get("range"):
            self.depth_range = None  # a range the client set: smoothing starts from it
        self.options = options
        if options.size is not None:
            self.size = options.size
        log.info("stream %s: params %s", self.id, json.dumps(options.public()))

    def status(self) -> dict:
        summary = self.stats.summary()
        return {
            "stream_id": self.id,
            "capability": self.capability.name,
            "state": self.state,
            "origin": self.origin,
            "size": list(self.size) if self.size else None,
            "params": self.options.public(),
            **summary,
            "control": {"keepalives": self.keepalives},
            # ai-runner's status vocabulary, which go-livepeer's gateway keeps as the stream's status
            "input_status": {"fps": summary["fps"]["in"], "last_input_time": _wall(self.stats.last_input)},
            "inference_status": {
                "fps": summary["fps"]["out"],
                "last_output_time": _wall(self.stats.last_output),
                "last_params": self.options.public(),
                "last_error": self.stats.last_error,
            },
        }

    # ---------------------------------------------------------------- input

    async def _ingest(self) -> None:
        subscriber = Subscriber(self.http, self.channels.subscribe, CURRENT)
        try:
            async for segment in subscriber:
                if self._halt.is_set():
                    break
                if segment.latest is not None and segment.seq < segment.latest - 1:
                    segment.close()  # a whole segment behind the live edge: catch up rather than lag
                    subscriber.skip_to(CURRENT)
                    continue
                await self._decoding.acquire()
                feed = video.Feed()
                self._open_feeds.add(feed)
                self._feeds.put((segment.seq, feed))
                try:
                    async for chunk in segment.chunks():
                        feed.put(chunk)
                finally:
                    feed.end()
            self.end("the input channel ended")
        except ChannelError as err:
            self.end(f"input: {err}", error=True)
        finally:
            await subscriber.close()

    def _decode_thread(self) -> None:
        decoder = video.Decoder()
        due: float | None = None  # the pts from which max_framerate lets the next frame through
        try:
            while (item := self._feeds.get()) is not None and not self._halt.is_set():
                seq, feed = item
                try:
                    for frame, demuxed in decoder.frames(feed):
                        pts = video.frame_pts(frame)
                        interval = 90000 / self.options.max_framerate
                        if due is not None and due - interval <= pts < due - _PTS_SLACK:
                            self._call(self._count, "skipped")
                            continue
                        # on schedule: the next is due an interval later; after a gap or a jump: from this frame
                        due = (due if due is not None and abs(pts - due) < interval else pts) + interval
                        self._frame(frame, pts, seq, demuxed)
                except video.InputStopped:
                    return
                except video.VideoError as err:
                    self._call(self.end, f"input: {err}", True)
                    return
                except (av.FFmpegError, ValueError, OSError) as err:  # a malformed or cut segment: skip it
                    self._call(self._failed, f"input segment {seq} is not readable MPEG-TS/H.264: {err}")
                finally:
                    self._call(self._decoding.release)
                    self._call(self._open_feeds.discard, feed)
        except Exception as err:  # a bug: this stream ends, with its reason; nothing else does
            log.exception("stream %s: the decoding thread failed", self.id)
            self._call(self.end, f"internal error while decoding: {type(err).__name__}: {err}", True)
        finally:
            decoder.close()

    def _frame(self, frame: av.VideoFrame, pts: int, seq: int, demuxed: float) -> None:
        size = self.size
        if self.options.size is None:  # the input's own size, fitted to the bounds
            size = params.fit(frame.height, frame.width, self.session.served.bounds)
            if size is None:
                why = "no size within the bounds keeps its aspect ratio; set width and height"
                self._call(self._failed, f"input {frame.width}x{frame.height}: {why}")
                return
            if size != (frame.height, frame.width):
                served = f"{size[1]}x{size[0]}"
                self._call(self._tell, "resized", f"input {frame.width}x{frame.height} is served at {served}")
            self.size = size
        assert size is not None  # the stream's own size (options.size), or the input's fitted above
        pixels = video.to_rgb(frame, *size)
        self._call(self._offer, Frame(pixels, pts, seq, demuxed, time.monotonic() - demuxed))

    def _offer(self, frame: Frame) -> None:
        now = time.monotonic()
        frame.offered = now
        self.stats.arrived(now)
        self.counters["in"].inc()
        if self._latest is not None:
            self._count("dropped")
        self._latest = frame
        self._frame_ready.set()

    # ---------------------------------------------------------------- inference

    async def _infer(self) -> None:
        while not self._halt.is_set():
            await self._frame_ready.wait()
            await self._encoding.acquire()
            frame, self._latest = self._latest, None
            self._frame_ready.clear()
            if frame is None:
                self._encoding.release()
                continue
            options = self.options.options
            waited = time.monotonic() - frame.offered
            try:
                deadline = time.monotonic() + self.settings.frame_timeout_s
                self._job = self.session.submit(frame.pixels, options, deadline, streamed=True)
                outcome = await self.session.result(self._job)
            except NotReady as err:
                self._encoding.release()
                self.end(f"the node stopped serving: {err.detail}")
                return
            except DeadlineExceeded:
                self._encoding.release()
                self._count("dropped")
                continue
            except NodeError as err:  # refused or failed frame: this frame only
                self._encoding.release()
                self._failed(f"inference: {err.detail}")
                continue
            finally:
                self._job = None
            self._maps.put(Map(frame, outcome, options, waited + outcome.queue_s))

    # ---------------------------------------------------------------- output

    def _render(self, item: Map) -> Rendered:
        """The map's result, rendered here (the encode thread: in frame order), where depth's smoothing state
        lives: each frame's range follows the last one's, as an HTTP client sends it back."""
        options = item.options
        smoothing = options.get("smooth") is not None
        if smoothing and self.depth_range is not None:
            options = {**options, "range": tuple(self.depth_range)}
        rendered = self.session.render(item.outcome, options)
        if smoothing:
            self.depth_range = rendered.meta["depth_range"]
        return rendered

    def _encode_thread(self) -> None:
        encoder: video.Encoder | None = None
        segment = None
        try:
            while (item := self._maps.get()) is not None:
                try:
                    started = time.perf_counter()
                    picture = self.capability.picture(self._render(item), item.options)
                    drawn = time.perf_counter()
                    height, width = picture.pixels.shape[:2]
                    if encoder is None or (encoder.height, encoder.width) != (height, width):
                        if encoder is not None:
                            encoder.close()
                        encoder = video.Encoder(
                            width,
                            height,
                            self.settings.encoder,
                            self._segment_starts,
                            self._bytes_out,
                            self.settings.quality,
                        )
                        segment = None
                    encoder.write(picture, item.frame.pts, new_segment=item.frame.segment != segment)
                    segment = item.frame.segment
                    item.render_s, item.encode_s = drawn - started, time.perf_counter() - drawn
                    item.encoded = time.monotonic()
                    self._call(self._out.put_nowait, item)
                except NodeError as err:  # rendering failed (the session logged it with its incident): this map only
                    self._call(self._failed, f"rendering: {err.detail}")
                except Exception as err:  # this map only; an encoder that cannot work fails each one, said in events
                    if not isinstance(err, av.FFmpegError | ValueError | OSError):
                        log.exception("stream %s: encoding failed", self.id)
                    self._call(self._failed, f"encoding: {type(err).__name__}: {err}")
                finally:
                    self._call(self._encoding.release)
        finally:
            if encoder is not None:
                encoder.close()  # the muxer's last bytes
            self._call(self._out.put_nowait, _END)

    def _segment_starts(self) -> None:
        self._call(self._out.put_nowait, _NEW_SEGMENT)

    def _bytes_out(self, data: bytes) -> None:
        self._call(self._out.put_nowait, data)

    async def _publish(self) -> None:
        publisher = Publisher(self.http, self.channels.publish, "video/MP2T")
        writer: SegmentWriter | None = None
        try:
            while (item := await self._out.get()) is not _END:
                if item is _NEW_SEGMENT:
                    if writer is not None:  # its answer comes when the server has it all: not waited for here
                        asyncio.ensure_future(writer.finish()).add_done_callback(self._segment_done)
                    writer = await publisher.segment()
                elif isinstance(item, bytes):
                    assert writer is not None  # the encoder starts a segment before its first bytes
                    writer.write(item)
                else:
                    self._sent(item)
            if writer is not None:
                await writer.finish()
        except ChannelError as err:
            self._output_failed(err)
        finally:
            await publisher.close()

    def _segment_done(self, finished: asyncio.Future) -> None:
        err = None if finished.cancelled() else finished.exception()
        if isinstance(err, ChannelError):
            self._output_failed(err)

    def _output_failed(self, err: ChannelError) -> None:
        if isinstance(err, ChannelGone):
            self.end("the output channel is gone")
        else:
            self.end(f"output: {err}", error=True)

    def _sent(self, item: Map) -> None:
        now = time.monotonic()
        outcome = item.outcome
        stages = {
            "decode": item.frame.decode_s,
            "queue": item.queue_s,
            "infer": outcome.infer_s,
            "render": item.render_s,  # render and picture, on the encode thread
            "encode": item.encode_s,
            "publish": now - item.encoded,
        }
        latency = now - item.frame.demuxed
        self.stats.sent(now, latency, stages, outcome.batch)
        self.counters["out"].inc()
        self.counters["latency"].observe(latency)

    # ---------------------------------------------------------------- control, events, watchdog

    async def _control(self) -> None:
        assert self.channels.control is not None  # run only for a stream with a control channel (start)
        subscriber = Subscriber(self.http, self.channels.control, CURRENT)
        try:
            async for segment in subscriber:
                if self._halt.is_set():
                    break
                text = await segment.read()
                try:
                    message = json.loads(text)
                except ValueError:
                    self._failed(f"control: not JSON: {text[:100]!r}", count=False)
                    continue
                if message == {"keep": "alive"}:
                    self.keepalives += 1
                    continue
                try:
                    self.update(message)
                except InputError as err:
                    self._failed(f"control: {err.detail}", count=False)
        except ChannelError as err:  # the input's end ends the stream; a control channel alone does not
            log.info("stream %s: control channel: %s", self.id, err)
        finally:
            await subscriber.close()

    async def _watch(self) -> None:
        next_status = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            if self.channels.events and now >= next_status:
                next_status = now + self.settings.status_interval_s
                await self._event({"type": "status", **self.status()})
            idle = now - (self.stats.last_input or self.stats.started)
            if idle > self.settings.idle_timeout_s:
                self.end(f"no input frame for {idle:.0f} s", error=True)
                return
            await asyncio.sleep(min(0.5, self.settings.status_interval_s))

    async def _event(self, event: dict, timeout: float = 5.0) -> None:
        """One JSON message on the events channel (go-livepeer's gateway reads ``type``; 30 s of silence kills)."""
        if self._events is None:
            return
        async with self._events_lock:
            try:
                await asyncio.wait_for(self._events.send(json.dumps(event).encode()), timeout)
            except (ChannelError, asyncio.TimeoutError) as err:
                log.info("stream %s: event not delivered: %s", self.id, err or "timed out")

    def _failed(self, message: str, count: bool = True) -> None:
        if count:
            self._count("failed")
        self.stats.error(message)
        log.warning("stream %s: %s", self.id, message)
        asyncio.ensure_future(self._event({"type": "error", "stream_id": self.id, "message": message}))

    def _tell(self, key: str, message: str) -> None:
        """A warning event, once per stream."""
        if key not in self._told:
            self._told.add(key)
            log.info("stream %s: %s", self.id, message)
            asyncio.ensure_future(self._event({"type": "warning", "stream_id": self.id, "message": message}))

    def _count(self, kind: str) -> None:
        self.stats.frames[kind] += 1
        self.counters[kind].inc()

    def _call(self, function, *args) -> None:
        """Run ``function`` on the event loop (from the stream's threads)."""
        assert self._loop is not None  # set by start(), before the threads start
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop closed: the process is ending
            pass


def _wall(monotonic: float | None) -> float | None:
    """A time.monotonic() as Unix time (what ai-runner's status reports)."""
    return None if monotonic is None else round(time.time() - (time.monotonic() - monotonic), 3)


async def _cancelled(tasks: list[asyncio.Future]) -> None:
    """Cancel until every task has ended: a cancel that Python 3.11's wait_for swallowed is sent again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
