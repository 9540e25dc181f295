"""Calls to a Livepeer orchestrator, shared by BYOC and live-runner registration.

Registrations are blocking HTTP calls run off the event loop. Each is remembered until it returns,
so that shutdown can wait for one still in flight before it unregisters: otherwise a slow
orchestrator applies that registration after the unregistration, and it outlives the node.
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.error
import urllib.request

log = logging.getLogger("vision_node.livepeer.orchestrator")
TIMEOUT_S = 5.0  # one call; a slower orchestrator counts as unreachable
MAX_BACKOFF_S = 30.0


def post(url: str, secret: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """POST with the raw secret in ``Authorization`` (go-livepeer's convention); (status, start of the body)."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Authorization": secret, "Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # operator-set URL
            return response.status, response.read(4096).decode(errors="replace").strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode(errors="replace").strip()


class Calls:
    """Blocking calls on worker threads, tracked until they return (cancelling the caller does not stop them)."""

    def __init__(self):
        self._pending: set[asyncio.Future] = set()

    async def run(self, function, *args):
        future = asyncio.get_running_loop().run_in_executor(None, function, *args)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return await asyncio.shield(future)

    async def settle(self) -> None:
        """Wait for every call still in flight (each ends within its timeout)."""
        if self._pending:
            log.info("waiting for %d orchestrator call(s) in flight before unregistering", len(self._pending))
            await asyncio.wait(set(self._pending), timeout=TIMEOUT_S + 1)


def spread(seconds: float, share: float = 0.1) -> float:
    """``seconds`` less up to ``share`` of it, at random: nodes started together do not call in lockstep, and none
    calls later than it was asked to (a heartbeat interval is the orchestrator's)."""
    return seconds * (1 - random.uniform(0, share))


class Backoff:
    """1, 2, 4 ... 30 s between failed attempts, each plus up to half of it at random (a fleet that lost its
    orchestrator does not come back in lockstep); back to the start after a success."""

    def __init__(self):
        self.delay = 1.0

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, MAX_BACKOFF_S)
        return delay + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.delay = 1.0
