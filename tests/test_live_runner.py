"""Livepeer live runners, through a test double of go-livepeer's live-runner side (tests/live_runner_double.py).

Real node processes register themselves (dynamic) or are described for the operator (static),
are reached only through the double's proxy, are forgotten and come back, and leave nothing
registered when they stop. Each timing the closing note quotes is printed here (``-s`` shows it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.live_runner_double import LiveRunnerDouble, Refused
from tests.nodes import ROOT, frame, free_port, parts, raw_type, start_node, stop, wait_for_http
from tests.orchestrator_double import OrchestratorDouble
from vision_node.config import Config
from vision_node.livepeer.live_runner import go_duration, runner_entry

SECRET = "orch-secret"


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


def runner_node(engines, log, double, *argv, module="vision_node", **env):
    port = free_port()
    settings = dict(
        VISION_NODE_PORT=port,
        VISION_NODE_ORCHESTRATOR_URL=double.url,
        VISION_NODE_ORCHESTRATOR_SECRET=SECRET,
        VISION_NODE_NODE_URL=f"http://127.0.0.1:{port}",
        VISION_NODE_REGISTER_AS="live-runner",
    )
    return start_node(engines, log, *argv, module=module, **{**settings, **env})


def by_app(double) -> dict[str, str]:
    return {r["fields"]["app"]: i for i, r in double.discoverable().items()}


def infer_through(url: str, f, **headers) -> httpx.Response:
    return httpx.post(url, content=f.tobytes(), headers={"Content-Type": raw_type(f), **headers}, timeout=30)


@pytest.fixture(scope="module")
def single_shot(tiny_build, tmp_path_factory):
    """(double, node process, node URL, log, seconds from /ready to discoverable)."""
    log = tmp_path_factory.mktemp("runner") / "node.log"
    with LiveRunnerDouble(SECRET, interval=0.5, ttl=2.0) as double:
        proc, url = runner_node(
            tiny_build[0], log, double, VISION_NODE_RUNNER_PRICE="0.002", VISION_NODE_COMBINATIONS="depth+segmentation"
        )
        try:
            wait_for_http(f"{url}/ready", proc, log)
            ready_at = time.monotonic()
            wait_for(lambda: len(double.discoverable()) == 4, what="four runners")
            yield double, proc, url, log, time.monotonic() - ready_at
        finally:
            if proc.poll() is None:
                stop(proc)


def test_every_capability_registers_as_a_discoverable_runner_within_a_heartbeat(single_shot):
    double, _, url, log, after_ready = single_shot
    print(f"\ndiscoverable {after_ready * 1000:.0f} ms after /ready answered 200")
    assert after_ready < 0.5  # the first heartbeat goes out as the node turns ready
    fields = dict(double.runners[by_app(double)["vision/depth"]]["fields"])
    fields.pop("runner_id", None)  # sent from the second heartbeat on
    assert fields == {
        "app": "vision/depth",
        "runner_url": url,
        "mode": "single-shot",
        "capacity": 5,
        "version": "0.1.0",
        "price_info": {"price": "0.002", "currency": "usd", "unit": "fixed"},
        "status": "ready",
    }
    discovered = httpx.get(f"{double.url}/discovery").json()[0]["runners"]
    assert {r["app"] for r in discovered} == {
        "vision/depth",
        "vision/segmentation",
        "vision/pose",
        "vision/depth+segmentation",
    }
    text = log.read_text()
    assert "live runner vision/depth: registered at" in text and SECRET not in text
    assert not any(r["secret"] in text for r in double.runners.values())  # no heartbeat secret in the log


def test_a_frame_through_the_single_shot_proxy_with_query_and_session_headers(single_shot):
    double, *_ = single_shot
    runner_id = by_app(double)["vision/depth"]
    f = frame(120, 160)
    r = infer_through(f"{double.url}/apps/{runner_id}/app/infer/depth?output=raw", f)  # the query travels here
    assert r.status_code == 200, r.text
    meta = json.loads(r.headers["x-metadata"])
    sent = double.forwarded[-1]
    assert meta["output"] == "raw" and meta["livepeer_session"] == sent["Livepeer-Session-Id"]
    assert sent["Livepeer-Runner-Route"] == runner_id and sent["Livepeer-Session-Token"] not in r.headers["x-metadata"]
    assert not double.sessions  # the single-shot slot is released with the response


def test_a_combination_through_the_proxy_is_one_upload_with_a_part_per_capability(single_shot):
    double, *_ = single_shot
    runner_id = by_app(double)["vision/depth+segmentation"]
    f = frame(96, 128)
    r = infer_through(f"{double.url}/apps/{runner_id}/app/infer/depth+segmentation?depth.output=raw", f)
    assert r.status_code == 200, r.text
    assert [(name, media) for name, media, _, _ in parts(r)] == [
        ("depth", "application/octet-stream"),
        ("segmentation", "image/png"),
    ]
    assert json.loads(r.headers["x-metadata"])["livepeer_session"] == double.forwarded[-1]["Livepeer-Session-Id"]


def test_the_advertised_capacity_is_what_the_node_accepts_before_503(tiny_build, tmp_path):
    """Capacity 5 = 1 running + queue 4: five frames at once all answer 200, a sixth gets the proxy's 503."""
    control = tmp_path / "control"
    control.write_text("slow 0.4")  # every frame takes 0.4 s more, so the six overlap
    with LiveRunnerDouble(SECRET) as double:
        proc, url = runner_node(
            tiny_build[0],
            tmp_path / "log",
            double,
            str(control),
            module="tests.faulty_node",
            VISION_NODE_CAPABILITIES="depth",
        )
        try:
            wait_for(lambda: double.discoverable(), what="the runner")
            runner_id = by_app(double)["vision/depth"]
            assert double.runners[runner_id]["fields"]["capacity"] == 5
            results = [None] * 6
            f = frame(96, 96)

            def send(i):
                results[i] = infer_through(f"{double.url}/apps/{runner_id}/app/infer/depth/raw", f).status_code

            threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
                time.sleep(0.02)
            for t in threads:
                t.join()
            assert sorted(results) == [200] * 5 + [503]  # the node itself never refused one
            assert "is more than a capability accepts" not in (tmp_path / "log").read_text()
        finally:
            stop(proc)


def test_a_persistent_session_carries_many_frames_and_counts_once(tiny_build, tmp_path):
    with LiveRunnerDouble(SECRET) as double:
        proc, url = runner_node(
            tiny_build[0],
            tmp_path / "log",
            double,
            VISION_NODE_RUNNER_MODE="persistent",
            VISION_NODE_CAPABILITIES="segmentation",
            VISION_NODE_STREAM_CAPACITY="2",
        )
        try:
            wait_for(lambda: double.discoverable(), what="the runner")
            runner_id = by_app(double)["vision/segmentation"]
            assert double.runners[runner_id]["fields"]["mode"] == "persistent"
            # persistent: a session is a stream, so the capacity is the streams a capability takes (2 here)
            sessions = [httpx.post(f"{double.url}/apps/{runner_id}/session").json() for _ in range(2)]
            assert httpx.post(f"{double.url}/apps/{runner_id}/session").status_code == 503
            for i in range(5):
                r = infer_through(f"{sessions[0]['app_url']}/infer/segmentation/raw", frame(64, 96, seed=i))
                assert r.status_code == 200, r.text
                assert json.loads(r.headers["x-metadata"])["livepeer_session"] == sessions[0]["session_id"]
            assert httpx.post(f"{sessions[0]['control_url']}/stop").status_code == 204
            assert httpx.post(f"{double.url}/apps/{runner_id}/session").status_code == 200  # the slot came back
            metrics = httpx.get(f"{url}/metrics").text
            assert 'vision_node_live_runner_frames_total{capability="segmentation"} 5.0' in metrics
        finally:
            stop(proc)


def test_a_forgotten_runner_registers_again_within_two_heartbeats(single_shot):
    double, _, _, log, _ = single_shot
    # Swept, or the orchestrator restarted: the heartbeat secret is refused (401); same id again.
    before = by_app(double)
    double.restart()
    forgotten = time.monotonic()
    wait_for(lambda: len(by_app(double)) == len(before), timeout=10, what="every runner registered again")
    after_restart = time.monotonic() - forgotten
    assert by_app(double) == before  # the ids were free again: kept
    # TTL passed, not yet swept: 404, and the old id is taken until the sweep: a new one.
    old = by_app(double)["vision/segmentation"]
    double.sweeping = False
    double.expire(old)
    forgotten = time.monotonic()
    wait_for(lambda: by_app(double).get("vision/segmentation") not in (None, old), timeout=10, what="a new id")
    after_expiry = time.monotonic() - forgotten
    double.sweeping = True
    print(
        f"\nall back {after_restart * 1000:.0f} ms after a restart, {after_expiry * 1000:.0f} ms after a TTL expiry "
        f"(heartbeat every {double.interval} s)"
    )
    assert after_restart < 2 * double.interval and after_expiry < 2 * double.interval
    text = log.read_text()
    assert "forgot runner" in text and "(HTTP 401)" in text and "(HTTP 404)" in text


def test_sigterm_makes_it_undiscoverable_before_it_stops_answering_and_leaves_nothing(tiny_build, tmp_path):
    with LiveRunnerDouble(SECRET) as double:
        proc, url = runner_node(tiny_build[0], tmp_path / "log", double, VISION_NODE_DRAIN_DELAY_S="1")
        try:
            wait_for(lambda: len(double.discoverable()) == 3, what="three runners")
            signalled = time.monotonic()
            proc.terminate()
            wait_for(lambda: not double.discoverable(), timeout=10, what="undiscoverable")
            gone = time.monotonic() - signalled
            assert infer_through(f"{url}/infer/depth/raw", frame(64, 64)).status_code == 200  # still answering
            assert proc.wait(15) == 0
            print(f"\nundiscoverable {gone * 1000:.0f} ms after SIGTERM; the node answered after that")
            assert not double.runners and [e[3] for e in double.log if e[1] == "unregister"] == [204] * 3
        finally:
            if proc.poll() is None:
                stop(proc)


@pytest.mark.parametrize("protocol", ["byoc", "live-runner"])
def test_a_registration_in_flight_at_sigterm_never_outlives_the_node(tiny_build, tmp_path, protocol):
    """A slow orchestrator (a registration takes 2 s to be applied and answered) and SIGTERM while one is in flight."""
    slow = {"delay_s": 2.0}
    double = OrchestratorDouble(SECRET, **slow) if protocol == "byoc" else LiveRunnerDouble(SECRET, **slow)
    with double:
        proc, _ = runner_node(
            tiny_build[0], tmp_path / "log", double, VISION_NODE_REGISTER_AS=protocol, VISION_NODE_CAPABILITIES="depth"
        )
        try:
            registry = double.registry if protocol == "byoc" else double.runners
            wait_for(lambda: double.in_flight, what="a registration in flight")
            proc.terminate()
            assert proc.wait(20) == 0
            assert not double.in_flight and not registry, f"left registered: {registry}"
            if protocol == "live-runner":  # unregistered, not merely expired
                assert [e[3] for e in double.log if e[1] == "unregister"] == [204]
        finally:
            if proc.poll() is None:
                stop(proc)


def test_a_refused_secret_is_logged_and_retried_with_backoff(tiny_build, tmp_path):
    with LiveRunnerDouble(SECRET) as double:
        proc, _ = runner_node(
            tiny_build[0],
            tmp_path / "log",
            double,
            VISION_NODE_ORCHESTRATOR_SECRET="s3cr3t-x",
            VISION_NODE_CAPABILITIES="depth",
        )
        try:
            wait_for(lambda: sum(1 for e in double.log if e[3] == 401) >= 2, what="a retry")
            first, second = [e[0] for e in double.log if e[3] == 401][:2]
            assert second - first >= 0.9  # backed off, not hammering
            text = (tmp_path / "log").read_text()
            assert "HTTP 401 invalid registration authorization" in text and "wrong orchestrator secret?" in text
            assert "s3cr3t-x" not in text
        finally:
            stop(proc)


def test_a_field_the_orchestrator_refuses_is_logged_as_it_says_and_retried(tiny_build, tmp_path):
    with LiveRunnerDouble(SECRET, onchain=True) as double:  # on-chain: a price is required
        proc, _ = runner_node(tiny_build[0], tmp_path / "log", double, VISION_NODE_CAPABILITIES="depth")
        try:
            wait_for(lambda: sum(1 for e in double.log if e[3] == 400) >= 2, what="a refusal and a retry")
            assert "HTTP 400 price_info.price is required" in (tmp_path / "log").read_text() and not double.runners
        finally:
            stop(proc)


# ---------------------------------------------------------------- static registration


def test_live_runners_prints_runners_json_the_orchestrator_accepts_and_polls(tiny_build, tmp_path):
    port = free_port()
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "vision_node",
            "live-runners",
            "--engines",
            str(tiny_build[0]),
            "--node-url",
            f"http://127.0.0.1:{port}",
            "--runner-mode",
            "persistent",
            "--runner-metadata",
            "tiny demo node",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    config = json.loads(printed.stdout)
    assert [r["label"] for r in config["runners"]] == ["vision-depth", "vision-segmentation", "vision-pose"]
    with LiveRunnerDouble(SECRET, health_interval=0.2) as double:
        added = double.register_static(config)  # validated as go-livepeer's /registerLiveRunners does
        assert all(r["fields"]["status"] == "unavailable" for r in added)  # nothing listens yet
        proc, url = start_node(tiny_build[0], tmp_path / "log", VISION_NODE_PORT=port, VISION_NODE_DRAIN_DELAY_S="1")
        try:
            wait_for(lambda: len(double.discoverable()) == 3, what="healthy once the node is ready")
            assert httpx.get(f"{url}/ready").status_code == 200
            runner_id = by_app(double)["vision/depth"]
            session = httpx.post(f"{double.url}/apps/{runner_id}/session").json()
            assert infer_through(f"{session['app_url']}/infer/depth/raw", frame(64, 64)).status_code == 200
            proc.terminate()  # draining: /ready 503 at once, so the next poll hides it
            wait_for(lambda: not double.discoverable(), timeout=5, what="unhealthy while draining")
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                stop(proc)


def test_static_validation_refuses_what_go_livepeer_refuses():
    entry = {"label": "vision-depth", "runner_url": "http://127.0.0.1:1", "health_url": "/ready", "app": "vision/depth"}
    with LiveRunnerDouble(SECRET, onchain=True) as double:
        for change, message in [
            ({"label": " x"}, "runners[0]: label is required and must be trimmed"),
            ({"health_url": ""}, "runners[0]: health_url is required"),
            ({"runner_url": "ftp://x"}, "runners[0]: invalid health_url"),
            ({"mode": "stream"}, 'runners[0]: mode must be "persistent" or "single-shot"'),
            ({"capacity": -1}, "runners[0]: capacity must be >= 0"),
            ({}, "runners[0]: price_info.price is required"),
            ({"price_info": {"price": "0"}}, "runners[0]: price_info.price must be a positive decimal"),
        ]:
            with pytest.raises(Refused, match=message.replace("[", r"\[").replace("]", r"\]")):
                double.register_static({"runners": [{**entry, **change}]})


def test_the_node_refuses_to_print_runners_without_a_url(tiny_build):
    printed = subprocess.run(
        [sys.executable, "-m", "vision_node", "live-runners", "--engines", str(tiny_build[0])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 2 and "--node-url is required" in printed.stderr and not printed.stdout


# ---------------------------------------------------------------- units


def test_go_durations_and_runner_fields():
    assert [go_duration(t, 5.0) for t in ("5s", "1m30s", "250ms", "", None, "soon", 2)] == [5, 90, 0.25, 5, 5, 5, 2]
    assert go_duration("20s", 0) == 20.0
    config = Config(
        node_url="http://n:8000/",
        orchestrator_url="http://o",
        orchestrator_secret="s",
        runner_apps=("pose=acme/pose",),
        gpu_name="RTX 4090",
        gpu_vram_mb=24564,
    )
    entry = runner_entry(config, "pose", gpu={"name": "ignored", "vram_mb": 1})
    assert entry["app"] == "acme/pose" and entry["runner_url"] == "http://n:8000" and "price_info" not in entry
    assert entry["gpu"] == {"name": "RTX 4090", "vram_mb": 24564} and entry["capacity"] == 5
    assert runner_entry(config, "depth", gpu={"name": "NVIDIA H200", "vram_mb": 143771})["gpu"]["name"] == "RTX 4090"
    detected = runner_entry(Config(node_url="http://n"), "depth", gpu={"name": "NVIDIA H200", "vram_mb": 143771})
    assert detected["gpu"] == {"name": "NVIDIA H200", "vram_mb": 143771}


def test_capacity_is_derived_and_a_larger_one_is_warned_about():
    assert Config(queue_size=2).advertised_capacity == 3 and Config(capacity=2).advertised_capacity == 2
    warnings = Config(
        orchestrator_url="http://o", orchestrator_secret="s", node_url="http://n", capacity=9, queue_size=4
    ).registration_warnings()
    assert len(warnings) == 1 and "capacity 9 is more than a capability accepts before answering 503 (5" in warnings[0]


def test_a_persistent_session_runs_a_live_stream_through_the_channels_the_node_asks_the_session_for(
    tiny_build, tmp_path
):
    """The live-runner shape of a stream: the client starts it through its session with no channel named; the node
    asks the session's control URL for in/out/control/events channels and answers their public URLs; the client
    publishes to "in" and reads "out"; stopping the session closes its channels, which ends the stream."""
    import asyncio

    from benchmarks.live_clip import decode_frames, encode_segments, photo_clip
    from benchmarks.live_io import Reader, publish
    from benchmarks.trickle_server import TrickleServer

    segments = encode_segments(photo_clip(48, 96, 128, seed=7), fps=24, gop=24)
    with TrickleServer() as trickle, LiveRunnerDouble(SECRET, trickle=trickle) as double:
        proc, url = runner_node(
            tiny_build[0],
            tmp_path / "log",
            double,
            VISION_NODE_RUNNER_MODE="persistent",
            VISION_NODE_CAPABILITIES="depth",
        )
        try:
            wait_for(lambda: double.discoverable(), what="the runner")
            runner_id = by_app(double)["vision/depth"]
            session = httpx.post(f"{double.url}/apps/{runner_id}/session").json()
            started = httpx.post(f"{session['app_url']}/live/depth/stream/start", json={"params": {"channels": 1}})
            assert started.status_code == 200, started.text
            channels = started.json()["channels"]
            assert set(channels) == {"in", "out", "control", "events"}
            assert started.json()["stream_id"] == session["session_id"]
            assert double.channel_calls[-1]["livepeer-session-token"]  # asked with the session's own token

            async def stream():
                reader = Reader(channels["out"], keep_frames=True)
                reading = asyncio.ensure_future(reader.run())
                await publish(channels["in"], segments, 24)
                await asyncio.sleep(0.5)
                assert httpx.post(f"{session['control_url']}/stop").status_code == 204  # the client leaves
                await asyncio.wait_for(reading, 10)
                return reader.frames

            frames = asyncio.run(stream())
            inputs = {pts for s in segments for pts, _ in decode_frames(s.data)}
            assert frames and {a.pts for a in frames} <= inputs and len(frames) >= 0.8 * len(inputs)
            wait_for(lambda: httpx.get(f"{url}/streams").json()["streams"] == [], what="the stream's end")
        finally:
            stop(proc)
        assert "stopped: the input channel ended" in (tmp_path / "log").read_text()


def test_retries_and_re_registrations_are_spread_so_a_fleet_does_not_call_in_lockstep():
    from vision_node.livepeer.orchestrator import Backoff, spread

    fleet = [Backoff() for _ in range(20)]
    rounds = [[b.next() for b in fleet] for _ in range(6)]  # 1, 2, 4, 8, 16, 30 s, each plus up to half
    for base, delays in zip((1, 2, 4, 8, 16, 30), rounds):
        assert all(base <= d <= 1.5 * base for d in delays) and len(set(delays)) > 15
    fleet[0].reset()
    assert 1 <= fleet[0].next() <= 1.5
    intervals = [spread(5.0) for _ in range(20)]
    assert all(4.5 <= s <= 5.0 for s in intervals) and len(set(intervals)) > 15  # never later than asked
