"""Publisher, reader and relay of trickle video channels, for the end-to-end tests and the latency benchmark.

- ``publish``: POSTs MPEG-TS segments as go-livepeer's gateway does (one chunked POST per segment, the next one
  preconnected), each frame's bytes at that frame's time, and returns when each pts went out;
- ``Reader``: subscribes a channel segment after segment and decodes the bytes as they arrive, recording when
  each pts came out of the decoder (and the frame);
- ``relay``: copies a channel to another as its bytes arrive, the harness's own floor with no node in between;
- ``latencies``: out arrival minus in sending, per pts, on the one monotonic clock.

aiohttp is used directly, so the harness does not share a trickle client with the node it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import av
import numpy as np

from .live_clip import PTS_HZ, TS, Segment, pes_time, shift_pts

MP2T = "video/MP2T"
CODECS = {0x01: "mpeg1video", 0x02: "mpeg2video", 0x1B: "h264", 0x24: "hevc"}  # PMT stream_type -> decoder


@dataclass
class Arrival:
    pts: int
    time: float  # time.monotonic() when the decoder gave the frame
    frame: np.ndarray | None = None  # RGB uint8, if the Reader keeps frames


def session() -> aiohttp.ClientSession:
    # No overall timeout: a GET waits for its segment's first byte, a POST lasts a whole GOP.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))


async def subscribe(http: aiohttp.ClientSession, url: str, seq: int = 0) -> AsyncIterator[aiohttp.ClientResponse]:
    """Each segment's response from ``seq`` on, as the Go and pytrickle subscribers read a channel.

    The next GET is sent as soon as a segment's headers arrive (their preconnect), 470 jumps to
    ``Lp-Trickle-Latest``, and the channel ends on 404 or ``Lp-Trickle-Closed``.
    """
    pending = asyncio.ensure_future(http.get(f"{url}/{seq}"))
    try:
        while True:
            resp = await pending
            pending = None
            if resp.status == 470:
                resp.release()
                seq = int(resp.headers["Lp-Trickle-Latest"])
            elif resp.status == 404 or resp.headers.get("Lp-Trickle-Closed"):
                resp.release()
                return
            else:
                resp.raise_for_status()
                seq = int(resp.headers.get("Lp-Trickle-Seq", seq)) + 1  # -1/-2 resolve to a real seq
            pending = asyncio.ensure_future(http.get(f"{url}/{seq}"))
            if resp.status == 200:
                async with resp:
                    yield resp
    finally:
        if pending is not None:
            pending.cancel()
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                pending.result().release()


async def publish(
    channel_url: str, segments: list[Segment], fps: float, start_seq: int = 0, loop_clip: int = 1
) -> dict[int, float]:
    """POST segment n to ``{channel_url}/{start_seq + n}``, frame i's bytes at t0 + i/fps (t0: frame 0 sent).

    ``loop_clip`` repeats the clip with pts continuing. Returns {pts: time.monotonic() when the frame's last
    byte was handed to the socket}; stops early (returning what was sent) when the channel answers 404 or closed.
    """
    pts = [f.pts for segment in segments for f in segment.frames]
    period = pts[-1] - pts[0] + (pts[1] - pts[0] if len(pts) > 1 else round(PTS_HZ / fps))  # the clip's own step
    plan = [(segment, k * period) for k in range(loop_clip) for segment in segments]
    sent: dict[int, float] = {}
    async with session() as http:
        posts = [_Post(http, f"{channel_url}/{start_seq}", sent)]
        try:
            t0, i = None, 0
            for n, (segment, shift) in enumerate(plan):
                post = posts[-1]
                if n + 1 < len(plan):  # preconnect the next segment's POST, as the Go and pytrickle publishers do
                    posts.append(_Post(http, f"{channel_url}/{start_seq + n + 1}", sent))
                for frame in segment.frames:
                    if t0 is not None:
                        await asyncio.sleep(t0 + i / fps - time.monotonic())
                    if post.task.done():
                        break  # answered early: the channel is gone
                    data = shift_pts(frame.data, shift) if shift else frame.data
                    post.queue.put_nowait((data, frame.pts + shift))
                    if t0 is None:  # the clock starts once frame 0 is out, after the connection's set-up
                        await asyncio.wait([post.wrote, post.task], return_when=asyncio.FIRST_COMPLETED)
                        t0 = time.monotonic()
                    i += 1
                post.queue.put_nowait(None)
                if not await post.task:
                    break  # 404 or closed
        finally:
            for post in posts:
                post.task.cancel()  # the preconnected POST left unused when the channel went (or on an error)
    return sent


class _Post:
    """One chunked POST whose body is fed frame by frame through a queue."""

    def __init__(self, http: aiohttp.ClientSession, url: str, sent: dict[int, float]) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.wrote = asyncio.get_running_loop().create_future()  # done once a first chunk is written
        self.task = asyncio.ensure_future(self._post(http, url, sent))

    async def _post(self, http, url, sent) -> bool:
        """True once the segment is written; False if the channel is gone (404 or closed)."""

        async def body():
            while (item := await self.queue.get()) is not None:
                yield item[0]
                sent[item[1]] = time.monotonic()  # resumed once aiohttp has written the chunk to the transport
                if not self.wrote.done():
                    self.wrote.set_result(None)

        async with http.post(url, data=body(), headers={"Content-Type": MP2T}) as resp:
            await resp.read()
            if resp.status == 404 or resp.headers.get("Lp-Trickle-Closed"):
                return False
            resp.raise_for_status()
            return True


class Reader:
    """Subscribes a video channel and decodes it as it arrives; ``frames`` holds what came out, in order.

    Demuxing is done here rather than by libavformat: its H.264 parser holds every frame until the next one
    starts (one frame interval, 42 ms at 24 fps, on top of the PES wait below), while this reader hands the
    decoder each PES as soon as it is complete (its length is known), the next one starts, or its segment ends.
    The decoder runs in a thread, one thread and low_delay, so it adds no frame of delay either.
    """

    def __init__(self, channel_url: str, start_seq: int = 0, keep_frames: bool = False) -> None:
        self.url, self.start_seq, self.keep_frames = channel_url, start_seq, keep_frames
        self.frames: list[Arrival] = []
        self.segments = 0
        self.bytes = 0
        self.error: BaseException | None = None  # what stopped the decoder thread, raised by run()
        self._task: asyncio.Task | None = None
        self._stopped = False

    async def run(self) -> None:
        """Until the channel ends (404 or Lp-Trickle-Closed) or ``stop()``; every frame is decoded on return.

        Raises what the decoder thread met (bytes that are not MPEG-TS, a decoding error)."""
        self._task = asyncio.current_task()
        if self._stopped:
            return
        chunks: queue.SimpleQueue = queue.SimpleQueue()  # bytes; b"" = a segment's end; None = the end
        thread = threading.Thread(target=self._decode, args=(chunks,), name="reader-decode", daemon=True)
        thread.start()
        try:
            async with session() as http, contextlib.aclosing(subscribe(http, self.url, self.start_seq)) as segs:
                async for resp in segs:
                    size = self.bytes
                    async for chunk in resp.content.iter_any():
                        chunks.put(chunk)
                        self.bytes += len(chunk)
                    chunks.put(b"")
                    self.segments += self.bytes > size  # an empty 200 is a dropped segment
        except asyncio.CancelledError:
            if not self._stopped:
                raise
        finally:
            chunks.put(None)
            await asyncio.to_thread(thread.join)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    def _decode(self, chunks: queue.SimpleQueue) -> None:
        demux, decoder = _TsVideo(), None
        try:
            while True:
                chunk = chunks.get()
                for pts, payload in demux.feed(chunk) if chunk else demux.flush():
                    if decoder is None:
                        decoder = av.CodecContext.create(CODECS[demux.stream_type], "r")
                        decoder.thread_count = 1
                        decoder.flags |= av.codec.context.Flags.low_delay
                    packet = av.Packet(payload)
                    packet.pts = pts
                    self._arrive(decoder.decode(packet))
                if chunk is None:
                    if decoder is not None:
                        self._arrive(decoder.decode(None))
                    return
        except Exception as exc:
            self.error = exc

    def _arrive(self, frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            image = frame.to_ndarray(format="rgb24") if self.keep_frames else None
            self.frames.append(Arrival(frame.pts, time.monotonic(), image))


class _TsVideo:
    """The smallest MPEG-TS demuxer for one video stream: PAT, PMT, then that stream's PES packets."""

    def __init__(self) -> None:
        self.rest = b""
        self.pmt_pid = self.pid = self.stream_type = None
        self.pts, self.pes, self.size = None, bytearray(), None  # the PES being collected and its payload size
        self.open = False  # a PES start was seen (a reader joining mid-stream skips the rest of one)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        data, out = self.rest + data, []
        whole = len(data) - len(data) % TS
        self.rest = data[whole:]
        for p in range(0, whole, TS):
            if data[p] != 0x47:
                raise ValueError(f"lost MPEG-TS sync at byte {p} of a chunk")
            pid, start, afc = (data[p + 1] & 0x1F) << 8 | data[p + 2], data[p + 1] & 0x40, data[p + 3] >> 4 & 3
            if not afc & 1:
                continue  # no payload
            payload = data[p + 4 + (1 + data[p + 4] if afc & 2 else 0) : p + TS]
            if pid == 0 and start:
                pat = _section(payload)
                self.pmt_pid = (pat[10] & 0x1F) << 8 | pat[11]  # the first program's PMT
            elif pid == self.pmt_pid and start and self.pid is None:
                self._pmt(_section(payload))
            elif pid == self.pid and (start or self.open):
                if start:
                    out += self.flush()
                    self.open = True
                    length, header = payload[4] << 8 | payload[5], 9 + payload[8]
                    self.pts = pes_time(payload, 9) if payload[7] & 0x80 else None
                    self.size = length - (header - 6) if length else None  # 0: unbounded, ends at the next one
                    payload = payload[header:]
                self.pes += payload
                if self.size is not None and len(self.pes) >= self.size:
                    out += self.flush()
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        """The PES being collected, if any (at the next PES, when its length is reached, or a segment's end)."""
        pes, self.pes, self.size, self.open = bytes(self.pes), bytearray(), None, False
        return [(self.pts, pes)] if pes else []

    def _pmt(self, section: bytes) -> None:
        at, end = 12 + ((section[10] & 0x0F) << 8 | section[11]), 3 + ((section[1] & 0x0F) << 8 | section[2]) - 4
        while at + 5 <= end:
            if section[at] in CODECS:
                self.stream_type, self.pid = section[at], (section[at + 1] & 0x1F) << 8 | section[at + 2]
                return
            at += 5 + ((section[at + 3] & 0x0F) << 8 | section[at + 4])


def _section(payload: bytes) -> bytes:
    return payload[1 + payload[0] :]  # skip the pointer field


async def relay(in_url: str, out_url: str, start_seq: int = 0) -> None:
    """Copy every segment of ``in_url`` to the same seq of ``out_url`` as its bytes arrive, until either ends."""
    async with session() as http, contextlib.aclosing(subscribe(http, in_url, start_seq)) as segs:
        async for resp in segs:
            seq = resp.headers["Lp-Trickle-Seq"]
            headers = {"Content-Type": resp.headers.get("Content-Type", MP2T)}
            async with http.post(f"{out_url}/{seq}", data=resp.content.iter_any(), headers=headers) as out:
                await out.read()
                if out.status == 404 or out.headers.get("Lp-Trickle-Closed"):
                    return
                out.raise_for_status()


def latencies(sent: dict[int, float], frames: list[Arrival]) -> list[float]:
    """Seconds from a pts's last input byte sent to its decoded output, for every pts found on both sides."""
    return [a.time - sent[a.pts] for a in frames if a.pts in sent]
