"""The live-stream harness itself: the clip's segments, publisher, reader and relay over the trickle server double,
and the orchestrator double's calls (benchmarks/live_clip.py, live_io.py, stream_orchestrator.py).

The orchestrator double is started against a small aiohttp app that records every request, standing in for a node.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import json
import statistics
import time

import aiohttp
import av
import pytest
from aiohttp import web

from benchmarks.live_clip import PTS_HZ, decode_frames, encode_segments, photo_clip
from benchmarks.live_io import Reader, latencies, publish, relay
from benchmarks.stream_orchestrator import StreamOrchestrator
from benchmarks.trickle_server import TrickleServer

FPS = 24
TIMEOUT = 10.0


def run(coro):
    try:
        return asyncio.run(asyncio.wait_for(coro, TIMEOUT))
    except BaseException:
        gc.collect()  # finalize leftovers now, not inside pytest's failure report (see tests/test_trickle_server.py)
        raise


async def through(segments, fps: float, relayed: bool = False, loop_clip: int = 1, keep_frames: bool = False):
    """Publish segments on a channel (through a relay to a second one if asked) and read them back."""
    with TrickleServer() as trickle:
        into = trickle.create_channel("s", "video/MP2T")
        out = trickle.create_channel("s-out", "video/MP2T") if relayed else into
        reader = Reader(out, keep_frames=keep_frames)
        tasks = [asyncio.ensure_future(reader.run())]
        if relayed:
            tasks.append(asyncio.ensure_future(relay(into, out)))
        sent = await publish(into, segments, fps, loop_clip=loop_clip)
        await asyncio.sleep(0.2)
        for name in ("s", "s-out"):
            trickle.close_channel(name)
        await asyncio.gather(*tasks)
    return sent, reader


@pytest.fixture(scope="module")
def clip():
    return encode_segments(photo_clip(2 * FPS, 128, 128), fps=FPS, gop=FPS)


@pytest.fixture(scope="module")
def round_trip(clip):
    return run(through(clip, FPS, keep_frames=True))


def test_round_trip_delivers_every_pts_decoded_exactly_in_order(clip, round_trip):
    sent, reader = round_trip
    reference = decode_frames(b"".join(s.data for s in clip))
    assert [a.pts for a in reader.frames] == [pts for pts, _ in reference] == sorted(sent)
    assert len(reference) == 2 * FPS
    assert all((a.frame == image).all() for a, (_, image) in zip(reader.frames, reference))
    assert all(x.time <= y.time for x, y in zip(reader.frames, reader.frames[1:]))
    assert (reader.segments, reader.bytes) == (len(clip), sum(len(s.data) for s in clip))


def test_publisher_paces_frames_at_their_rate(round_trip):
    sent, _ = round_trip
    times = [sent[pts] for pts in sorted(sent)]
    assert times[-1] - times[0] >= (len(times) - 1) / FPS
    assert times[-1] - times[0] < (len(times) - 1) / FPS + 0.5
    assert all(a.time >= sent[a.pts] for a in round_trip[1].frames)  # nothing decoded before it was sent


def test_relay_copies_every_pts_and_its_floor_is_under_half_a_frame(clip):
    sent, reader = run(through(clip[:1], FPS, relayed=True))
    assert [a.pts for a in reader.frames] == sorted(sent) and len(sent) == FPS
    floor = latencies(sent, reader.frames)
    # A reader that waits for the next frame (libavformat's H.264 parser, or a PES without its length) adds 1/fps.
    assert statistics.median(floor) < 0.5 / FPS, floor


def test_segments_are_standalone_keyframe_first_with_pts_as_given(clip):
    assert [len(segment.frames) for segment in clip] == [FPS, FPS]  # gop frames each
    for n, segment in enumerate(clip):
        data = segment.data
        pids = [(data[p + 1] & 0x1F) << 8 | data[p + 2] for p in range(0, len(data), 188)]
        assert pids.index(0) < pids.index(0x1000) < pids.index(0x100)  # PAT, PMT, then video (FFmpeg's PIDs)
        assert all(len(f.data) % 188 == 0 for f in segment.frames)
        with av.open(io.BytesIO(data), format="mpegts") as container:
            packets = [p for p in container.demux(video=0) if p.size]
        assert packets[0].is_keyframe and not any(p.is_keyframe for p in packets[1:])
        expected = [PTS_HZ + (n * FPS + i) * PTS_HZ // FPS for i in range(FPS)]
        assert [pts for pts, _ in decode_frames(data)] == [f.pts for f in segment.frames] == expected


def test_mpeg2video_clip_encodes_and_reads_back():
    segments = encode_segments(photo_clip(12, 48, 64), fps=FPS, gop=6, codec="mpeg2video")
    with av.open(io.BytesIO(segments[0].data), format="mpegts") as container:
        assert container.streams.video[0].codec_context.name == "mpeg2video"
    sent, reader = run(through(segments, 4 * FPS, keep_frames=True))
    reference = decode_frames(b"".join(s.data for s in segments))
    assert [a.pts for a in reader.frames] == [pts for pts, _ in reference] == sorted(sent) and len(sent) == 12
    assert all((a.frame == image).all() for a, (_, image) in zip(reader.frames, reference))


def test_loop_clip_continues_pts():
    segments = encode_segments(photo_clip(8, 48, 64), fps=FPS, gop=4)
    sent, reader = run(through(segments, 8 * FPS, loop_clip=3))
    step = PTS_HZ // FPS
    assert [a.pts for a in reader.frames] == sorted(sent) == [PTS_HZ + i * step for i in range(24)]


def test_publish_stops_when_the_channel_goes():
    segments = encode_segments(photo_clip(48, 48, 64), fps=FPS, gop=6)

    async def main():
        with TrickleServer() as trickle:
            url = trickle.create_channel("s", "video/MP2T")
            publishing = asyncio.ensure_future(publish(url, segments, FPS))
            await asyncio.sleep(0.5)
            trickle.close_channel("s")
            started = time.monotonic()
            sent = await publishing
            took = time.monotonic() - started
            nowhere = await publish(url + "-none", segments, FPS)
            return sent, took, nowhere, time.monotonic() - started - took

    sent, took, nowhere, took_nowhere = run(main())
    assert 6 <= len(sent) < 24 and took < 0.6  # stopped at the next segment, not after the 2 s clip
    assert len(nowhere) <= 1 and took_nowhere < 0.2  # the 404 ends it (frame 0 may leave before the 404 is back)


def test_reader_raises_on_bytes_that_are_not_mpeg_ts():
    async def main():
        with TrickleServer() as trickle:
            url = trickle.create_channel("s", "video/MP2T")
            reader = Reader(url)
            reading = asyncio.ensure_future(reader.run())
            async with aiohttp.ClientSession() as http:
                await (await http.post(f"{url}/0", data=b"\0" * 188)).read()
            while not reader.segments:
                await asyncio.sleep(0.01)
            trickle.close_channel("s")
            with pytest.raises(ValueError, match="MPEG-TS sync"):
                await reading
            return reader

    assert run(main()).bytes == 188


# --- the orchestrator double ---


class Node:
    """An aiohttp app standing in for a node: records every request, answers as told."""

    def __init__(self, status: dict[str, int] | None = None) -> None:
        self.status = status or {}
        self.requests: list[tuple[str, dict, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        status = self.status.get(request.path, 200)
        return web.Response(status=status, text="busy" if status > 399 else '{"status": "ok"}')

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/{route:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def calls(self, path: str) -> list[tuple[dict, bytes]]:
        return [(headers, body) for p, headers, body in self.requests if p == path]


def orchestrated(test, status=None, **options):
    """Run test(orch, node, trickle) with a StreamOrchestrator (token "tok") against a recording Node."""

    async def main():
        node = Node(status)
        with TrickleServer() as trickle:
            async with node as url:
                orch = StreamOrchestrator(trickle, url, token="tok", **options)
                try:
                    return await test(orch, node, trickle)
                finally:
                    await orch.close()

    return run(main())


def test_start_body_keys_headers_and_params_object():
    async def test(orch, node, trickle):
        params = {"preprocessor": "depth", "width": 512, "height": 512.0, "max_framerate": 24}
        started = await orch.start("abc", params)
        bare = await orch.start("xyz", None, ingress=False, egress=False, data=True)
        return started, bare, sorted(trickle.channels()), node.calls("/stream/start")

    started, bare, channels, calls = orchestrated(test)
    (headers, raw), (_, bare_raw) = calls
    body, bare_body = json.loads(raw), json.loads(bare_raw)
    assert started.status == 200 and started.body == '{"status": "ok"}'
    assert set(body) == {"gateway_request_id", "control_url", "events_url", "subscribe_url", "publish_url", "params"}
    assert body["gateway_request_id"] == "abc"
    assert body["params"] == {"preprocessor": "depth", "width": 512, "height": 512, "max_framerate": 24}
    assert b'"height":512,' in raw and raw.startswith(b'{"control_url":')  # Go: float64 512 prints 512; sorted keys
    assert [body[k].rsplit("/", 1)[1] for k in ("subscribe_url", "publish_url", "control_url", "events_url")] == [
        "abc",
        "abc-out",
        "abc-control",
        "abc-events",
    ]
    assert (started.subscribe_url, started.publish_url, started.data_url) == (
        body["subscribe_url"],
        body["publish_url"],
        None,
    )
    assert headers["X-Stream-Id"] == "abc" and headers["Authorization"] == "Bearer tok"
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "Go-http-client/1.1"
    assert set(bare_body) == {"gateway_request_id", "control_url", "events_url", "data_url", "params"}
    assert bare_body["params"] is None and bare_body["data_url"].endswith("/xyz-data")
    assert channels == ["abc", "abc-control", "abc-events", "abc-out", "xyz-control", "xyz-data", "xyz-events"]


def test_update_posts_flat_params_as_json():
    async def test(orch, node, trickle):
        await orch.start("abc", {"preprocessor": "depth"})
        return await orch.update("abc", {"preprocessor": "pose", "max_framerate": 12}), node.calls("/stream/params")

    (status, _), [(headers, raw)] = orchestrated(test)
    assert status == 200 and json.loads(raw) == {"preprocessor": "pose", "max_framerate": 12}
    assert headers["Content-Type"] == "application/json" and headers["X-Stream-Id"] == "abc"
    assert headers["Authorization"] == "Bearer tok"


def test_stop_sends_plain_text_body_and_closes_every_channel():
    async def test(orch, node, trickle):
        await orch.start("abc", {}, data=True)
        before = sorted(trickle.channels())
        result = await orch.stop("abc", b"timeout waiting for events")
        return result, before, trickle.channels(), node.calls("/stream/stop")

    (status, _), before, after, [(headers, raw)] = orchestrated(test)
    assert status == 200 and raw == b"timeout waiting for events"
    assert "Content-Type" not in headers and headers["X-Stream-Id"] == "abc"
    assert headers["Authorization"] == "Bearer tok"
    assert before == ["abc", "abc-control", "abc-data", "abc-events", "abc-out"] and after == []


def test_vanish_closes_every_channel_without_calling_stop():
    async def test(orch, node, trickle):
        await orch.start("abc", {})
        await orch.vanish("abc")
        async with aiohttp.ClientSession() as http, http.get(f"{trickle.url}/abc/0") as resp:
            return trickle.channels(), resp.status, [p for p, _, _ in node.requests]

    channels, status, paths = orchestrated(test)
    assert channels == [] and status == 404 and paths == ["/stream/start"]


def test_start_error_closes_the_channels_and_starts_no_loop():
    async def test(orch, node, trickle):
        result = await orch.start("abc", {})
        await asyncio.sleep(0.3)  # several keep-alive periods: a loop would have published on control
        return result, trickle.channels()

    result, channels = orchestrated(test, status={"/stream/start": 503}, keepalive_s=0.05)
    assert (result.status, result.body, channels) == (503, "busy", [])


def test_keepalives_every_period_and_control_messages_arrive_on_control():
    async def test(orch, node, trickle):
        started, began, got = await orch.start("abc", {}), time.monotonic(), []

        async def read():  # the node's side: every message on control, from seq 0
            async with aiohttp.ClientSession() as http:
                for seq in itertools.count():
                    message = json.loads(await (await http.get(f"{started.control_url}/{seq}")).read())
                    got.append((time.monotonic() - began, message))

        reading = asyncio.ensure_future(read())
        while len(got) < 2:
            await asyncio.sleep(0.01)
        await orch.control("abc", {"preprocessor": "pose"})
        while got[-1][1] == {"keep": "alive"}:
            await asyncio.sleep(0.01)
        reading.cancel()
        return got

    got = orchestrated(test, keepalive_s=0.1)
    assert [m for _, m in got[:2]] == [{"keep": "alive"}] * 2 and got[1][0] >= 0.2
    assert got[-1][1] == {"preprocessor": "pose"} and all(m == {"keep": "alive"} for _, m in got[:-1])


def test_events_are_recorded_unwrapped_and_a_gap_trips_the_watchdog():
    async def test(orch, node, trickle):
        started = await orch.start("abc", {})
        async with aiohttp.ClientSession() as http:
            seq = 0
            # Go's subscriber starts at the next write (-1): send heartbeats until one is seen, as a node would.
            while not orch.events("abc"):
                await (await http.post(f"{started.events_url}/{seq}", data=b'{"type":"heartbeat"}')).read()
                seq += 1
                await asyncio.sleep(0.05)
            for body in (
                b'{"event":{"type":"status","fps":24},"queue_event_type":"ai_stream_status"}',
                b"not json",
                b'{"type":"bare"}',
            ):
                await (await http.post(f"{started.events_url}/{seq}", data=body)).read()
                seq += 1
            await asyncio.sleep(0.2)
            alive = orch.watchdog_tripped("abc")
            await asyncio.sleep(0.6)  # silence: more than event_gap_s
            return orch.events("abc"), alive, orch.watchdog_tripped("abc")

    events, alive, tripped = orchestrated(test, event_gap_s=0.4)
    assert [e for _, e in events][-2:] == [{"type": "status", "fps": 24}, {"type": "bare"}]
    assert {e["type"] for _, e in events[:-2]} == {"heartbeat"}
    assert not alive and tripped
