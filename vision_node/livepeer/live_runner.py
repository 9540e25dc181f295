"""Livepeer live runners: each served capability registers itself as one runner and keeps it alive.

go-livepeer's protocol (``ai/runner/live_runner.go``, ``server/ai_http.go``; see docs/livepeer.md):

- ``POST {orchestrator}/runners/heartbeat`` with the orchestrator's secret raw in ``Authorization``
  registers a runner: its ``app``, the ``runner_url`` the orchestrator proxies to, ``mode``,
  ``capacity``, ``price_info`` and public facts. The answer gives the ``runner_id``, the
  runner-facing base URL to use from then on, the ``heartbeat_interval`` and TTL (Go durations)
  and a ``heartbeat_secret``.
- Every interval the same call with the heartbeat secret carries the node's state: ``status``
  ``ready`` only while the node can serve, so the orchestrator stops routing before the node stops
  answering. A forgotten runner shows as 404 (its TTL passed, not yet swept) or 401 (swept, or the
  orchestrator restarted: the heartbeat secret is no bootstrap secret): register again with the
  orchestrator's secret (under a new id after a 404: the old one stays taken until the sweep).
  401 to that means a wrong secret: back off, as while unreachable. A heartbeat replaces everything
  the orchestrator knows of the runner, so each one carries every field.
- Shutdown: ``POST {orchestrator}/runners/{runner_id}/unregister`` with the heartbeat secret (204).

Every outcome is one log line; routine heartbeats log at debug. Secrets and session tokens are
never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__
from ..config import Config
from .orchestrator import Backoff, Calls, post, spread

log = logging.getLogger("vision_node.livepeer.live_runner")

DEFAULT_INTERVAL_S, DEFAULT_TTL_S = 5.0, 20.0  # go-livepeer's defaults, when the answer names none
METADATA_LIMIT = 1024  # bytes of public metadata go-livepeer takes
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")  # longest unit first
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(text, default: float) -> float:
    """Seconds in a Go duration string ("5s", "1m30s", "250ms"); a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    if not isinstance(text, str) or not text:
        return default
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return default
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def runner_entry(config: Config, capability: str, gpu: dict | None = None, memory: str = "") -> dict:
    """What a runner says of itself: the heartbeat body's static part, and a runners.json entry's.
    ``memory``: the node's GPU memory in words, the metadata where the operator gave none (public, ≤ 1 KiB)."""
    entry = {
        "app": config.runner_app(capability),
        "runner_url": config.node_url.rstrip("/"),
        "mode": config.runner_mode,
        "capacity": config.runner_capacity,
        "version": config.runner_version or __version__,
    }
    metadata = config.runner_metadata or memory[:METADATA_LIMIT]
    if metadata:
        entry["metadata"] = metadata
    if config.runner_price:
        entry["price_info"] = {"price": config.runner_price, "currency": "usd", "unit": config.runner_price_unit}
    gpu = gpu or {}
    name, vram_mb = config.gpu_name or gpu.get("name"), config.gpu_vram_mb or gpu.get("vram_mb")
    if name:
        entry["gpu"] = {"name": name, **({"vram_mb": int(vram_mb)} if vram_mb else {})}
    return entry


def static_runners(config: Config, capabilities: list[str], memory: str = "") -> dict:
    """``runners.json`` for go-livepeer's ``-liveRunnerConfig`` or ``POST /registerLiveRunners``.

    The orchestrator polls ``health_url`` every 5 s and wants exactly 200: ``/ready`` answers 200
    only while the node can serve (warm, not draining, not broken), from memory, at no cost.
    """
    runners = []
    for capability in capabilities:
        entry = runner_entry(config, capability, memory=memory)
        label = entry["app"].replace("/", "-")  # unique, and valid with routing "label" too
        runners.append({"label": label, **entry, "health_url": "/ready", "healthy_status_code": 200})
    return {"runners": runners}


@dataclass
class Runner:
    """One capability's registration: what the orchestrator told it."""

    capability: str
    app: str
    runner_id: str | None = None
    secret: str | None = None  # the heartbeat secret; None: not registered (use the orchestrator's)
    base: str = ""  # the runner-facing orchestrator URL
    interval_s: float = DEFAULT_INTERVAL_S
    ttl_s: float = DEFAULT_TTL_S


class LiveRunners:
    """Registers every served capability as a live runner and heartbeats until shutdown."""

    def __init__(
        self,
        config: Config,
        capabilities: list[str],
        status: Callable[[], str],
        gpu: Callable[[], dict],
        memory: str = "",
    ):
        self.config = config
        self.memory = memory
        self.base = config.orchestrator_url.rstrip("/")
        self.runners = [Runner(c, config.runner_app(c), base=self.base) for c in capabilities]
        self.status, self.gpu = status, gpu
        self.calls = Calls()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_alive(r)) for r in self.runners]

    async def stop(self) -> None:
        """Stop heartbeating, let a call in flight land, then unregister every runner; later calls do nothing."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.calls.settle()
        await asyncio.gather(*(self.calls.run(self._unregister, r) for r in self.runners if r.secret))

    async def _keep_alive(self, runner: Runner) -> None:
        backoff = Backoff()
        while True:
            ok = await self.calls.run(self._heartbeat, runner)
            if ok:
                backoff.reset()
                await asyncio.sleep(spread(runner.interval_s))
            elif runner.secret is None and ok is None:
                continue  # forgotten by the orchestrator: register again at once
            else:
                await asyncio.sleep(backoff.next())

    def _body(self, runner: Runner) -> dict:
        body = {**runner_entry(self.config, runner.capability, self.gpu(), self.memory), "status": self.status()}
        if runner.runner_id:
            body["runner_id"] = runner.runner_id
        return body

    def _heartbeat(self, runner: Runner) -> bool | None:
        """True: done; False: failed, back off; None: forgotten, register again now."""
        registering = runner.secret is None
        secret = self.config.orchestrator_secret if runner.secret is None else runner.secret
        body = self._body(runner)
        where = f"live runner {runner.app} at {runner.base}"
        try:
            status, text = post(f"{runner.base}/runners/heartbeat", secret, json.dumps(body).encode())
        except OSError as err:  # refused, unreachable, timed out: the TTL decides whether we are forgotten
            log.warning("%s: orchestrator unreachable (%s); retrying", where, err)
            return False
        if status == 200:
            return self._accepted(runner, text, registering, body["status"])
        if not registering and status in (404, 401):
            # 404: the TTL passed and the sweep has not run; the id stays taken until it does, so take a new
            # one. 401: swept, or the orchestrator restarted: the id is free again, keep it.
            log.warning(
                "%s: the orchestrator forgot runner %s (HTTP %d); registering again", where, runner.runner_id, status
            )
            runner.secret, runner.base = None, self.base
            if status == 404:
                runner.runner_id = None
            return None
        hint = " (wrong orchestrator secret?)" if status == 401 else ""
        log.error("%s: HTTP %d %s%s; retrying", where, status, text[:300], hint)
        return False

    def _accepted(self, runner: Runner, text: str, registering: bool, status: str) -> bool:
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            log.error("live runner %s: the orchestrator's answer is not JSON: %r", runner.app, text[:200])
            return False
        runner.runner_id = answer.get("runner_id") or runner.runner_id
        runner.secret = answer.get("heartbeat_secret") or runner.secret
        runner.base = (answer.get("orchestrator") or runner.base or self.base).rstrip("/")
        runner.interval_s = go_duration(answer.get("heartbeat_interval"), DEFAULT_INTERVAL_S)
        runner.ttl_s = go_duration(answer.get("heartbeat_ttl"), DEFAULT_TTL_S)
        if runner.secret is None:
            log.error("live runner %s: registered without a heartbeat secret; registering again", runner.app)
            return False
        if registering:
            log.info(
                "live runner %s: registered at %s as %s, %s (heartbeat every %gs, TTL %gs)",
                runner.app,
                runner.base,
                runner.runner_id,
                status,
                runner.interval_s,
                runner.ttl_s,
            )
        else:
            log.debug("live runner %s: heartbeat ok (%s)", runner.app, status)
        return True

    def _unregister(self, runner: Runner) -> None:
        """Called for registered runners only: those with a heartbeat secret."""
        assert runner.secret is not None
        where = f"live runner {runner.app} ({runner.runner_id}) at {runner.base}"
        try:
            status, text = post(f"{runner.base}/runners/{runner.runner_id}/unregister", runner.secret, b"")
        except OSError as err:
            log.warning("unregister %s: orchestrator unreachable (%s)", where, err)
            return
        log.info("unregister %s: HTTP %d %s", where, status, text[:200])
