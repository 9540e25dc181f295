"""Livepeer BYOC registration: register each served capability with an orchestrator, keep it there.

go-livepeer's facts (see docs/livepeer.md): ``POST {orchestrator}/capability/register`` with the raw secret
in ``Authorization`` and a JSON body; 200 ``ok`` on success, 400 on a wrong secret. The registry
is in memory with no heartbeat, so a restarted orchestrator forgets us: we re-register every
``register_interval_s``, retry with backoff while it is unreachable, and unregister (plain-text
body = the name) on shutdown. Each outcome is one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ..config import Config
from .orchestrator import Backoff, Calls, post, spread

log = logging.getLogger("vision_node.livepeer.byoc")


LIVE_SUFFIX = "-live"  # a capability's streaming registration: depth-live, with its own URL and capacity


def registration(config: Config, capability: str, memory: str = "") -> dict:
    """The JSON body go-livepeer's ``/capability/register`` reads; ``memory``: the node's GPU memory in words
    (``device_memory.DeviceMemory.told``), told in the description.

    ``depth`` takes frames at ``{node}/infer/depth`` (capacity: requests); ``depth-live`` takes streams, whose
    calls go-livepeer makes at ``{url}/stream/start`` ..., so its URL is ``{node}/live/depth`` (capacity: streams).
    """
    base = config.node_url.rstrip("/")
    if capability.endswith(LIVE_SUFFIX):
        served = capability.removesuffix(LIVE_SUFFIX)
        name, what = config.registered_name(served) + LIVE_SUFFIX, f"{served} conditioning maps of live video"
        url, capacity = f"{base}/live/{served}", config.stream_capacity
    else:
        name, what = config.registered_name(capability), f"{capability} conditioning maps per frame"
        url, capacity = base, config.advertised_capacity
    body = {
        "name": name,
        "description": f"vision node: {what}" + (f"; {memory}" if memory else ""),
        "url": url,
        "capacity": capacity,
        "price_per_unit": config.price_per_unit,
        "price_scaling": config.price_scaling,
        "currency": config.currency,
    }
    if config.token:
        body["token"] = config.token
    return body


class Registrar:
    """Keeps every served capability registered while the node runs (``depth``; ``depth-live`` for its streams)."""

    def __init__(self, config: Config, capabilities: list[str], memory: str = ""):
        self.config = config
        self.capabilities = capabilities
        self.memory = memory
        self.base = config.orchestrator_url.rstrip("/")
        self.calls = Calls()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_registered())

    async def stop(self) -> None:
        """Stop re-registering, let a registration in flight land, then unregister; later calls do nothing."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.calls.settle()
        await asyncio.gather(*(self.calls.run(self._unregister, c) for c in self.capabilities))

    async def _keep_registered(self) -> None:
        backoff = Backoff()
        while True:
            results = await asyncio.gather(*(self.calls.run(self._register, c) for c in self.capabilities))
            if all(results):
                backoff.reset()
                await asyncio.sleep(spread(self.config.register_interval_s))
            else:
                await asyncio.sleep(backoff.next())

    def _register(self, capability: str) -> bool:
        body = registration(self.config, capability, self.memory)
        url = f"{self.base}/capability/register"
        try:
            status, text = post(url, self.config.orchestrator_secret, json.dumps(body).encode())
        except OSError as err:  # refused, unreachable, timed out
            log.warning("register %s at %s: orchestrator unreachable (%s); retrying", body["name"], self.base, err)
            return False
        if status == 200:
            log.info("register %s at %s: ok (%s)", body["name"], self.base, body["url"])
            return True
        hint = " (wrong orchestrator secret?)" if status == 400 else ""
        log.error("register %s at %s: HTTP %d %s%s; retrying", body["name"], self.base, status, text[:200], hint)
        return False

    def _unregister(self, capability: str) -> None:
        name = registration(self.config, capability)["name"]
        try:
            status, text = post(
                f"{self.base}/capability/unregister", self.config.orchestrator_secret, name.encode(), "text/plain"
            )
        except OSError as err:
            log.warning("unregister %s at %s: orchestrator unreachable (%s)", name, self.base, err)
            return
        log.info("unregister %s at %s: HTTP %d %s", name, self.base, status, text[:200])
