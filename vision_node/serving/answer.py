"""One request's answer, whole: what it asks checked, its frame decoded within its capabilities' bounds,
admitted, run, encoded and described.

The HTTP layer names the capabilities (``named``), asks (``ask``: their options, checked before the body is
read) and answers (``answer``: one call, ``Answer(body, media_type, meta)``). It knows nothing else of
capabilities, sessions or backends: what a backend accepts (JPEG on the GPU) the session knows from its start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from anyio import to_thread

from ..contract import COMBINE, common_bounds
from ..errors import InputError
from ..media import content_type, frames, multipart
from .session import CapabilitySession, Part

if TYPE_CHECKING:
    from .node import Node

T = TypeVar("T")


@dataclass(frozen=True)
class Question:
    """What a request asks, checked before its body is read."""

    sessions: tuple[CapabilitySession, ...]
    options: tuple[dict, ...]  # each session's parsed options
    media_type: str
    width: str | None  # a raw frame's size, as given
    height: str | None


@dataclass(frozen=True)
class Answer:
    body: bytes | memoryview
    media_type: str
    meta: dict  # X-Metadata
    timings: tuple[tuple[str, dict[str, float]], ...]  # (capability, seconds by stage): for the metrics


def named(node: Node, capabilities: str, output_in_path: bool) -> tuple[CapabilitySession, ...]:
    """The sessions of the capabilities a path names (``depth+pose``: several); 4xx for a bad name."""
    names = capabilities.split(COMBINE)
    if len(set(names)) != len(names):
        raise InputError(f"{capabilities}: a capability is named twice")
    sessions = tuple(node.session(name) for name in names)
    if len(names) > 1 and output_in_path:
        raise InputError(f"a combination takes each capability's output as an option, e.g. {names[0]}.output=raw")
    return sessions


def ask(sessions: tuple[CapabilitySession, ...], media_type: str, given: dict[str, str]) -> Question:
    """The request's question: its media type and each capability's parsed options (4xx for a bad one).

    In a combination every option names its capability (``depth.range``)."""
    content_type.check(media_type)
    given = dict(given)
    width, height = given.pop("width", None), given.pop("height", None)
    if len(sessions) == 1:
        return Question(sessions, (sessions[0].capability.parse_options(given),), media_type, width, height)
    per: dict[str, dict[str, str]] = {s.name: {} for s in sessions}
    for key, value in given.items():
        name, dot, option = key.partition(".")
        if not dot or name not in per:
            raise InputError(
                f"option {key!r}: in a combination each option names its capability, e.g. {sessions[0].name}."
                f"{option or key} (this request combines {', '.join(per)})"
            )
        per[name][option] = value
    parsed = []
    for session in sessions:
        try:
            parsed.append(session.capability.parse_options(per[session.name]))
        except InputError as err:
            raise InputError(f"{session.name}: {err.detail}") from None
    return Question(sessions, tuple(parsed), media_type, width, height)


async def answer(
    question: Question,
    body: bytearray,
    deadline: float,
    arrived: float,
    read_s: float,
    livepeer_session: str | None = None,
) -> Answer:
    """The answer to ``question`` for ``body``: one capability's body, or a combination's ``multipart/mixed``.

    A combination decodes the frame once and runs each capability on its own worker; it is admitted
    whole or refused whole (503), and a part that fails fails the request."""
    sessions = question.sessions
    started = time.perf_counter()
    frame = await _decode(question, body)
    before = {"read": read_s, "decode": time.perf_counter() - started}
    for session in sessions:  # all or none: no await between these checks and the submissions
        session.check_room()
    jobs = [session.submit(frame, options, deadline) for session, options in zip(sessions, question.options)]
    parts: list[Part] = await _each([s.answer(job, before, arrived) for s, job in zip(sessions, jobs)])
    timings = tuple((s.name, part.timings) for s, part in zip(sessions, parts))
    session_meta = {"livepeer_session": livepeer_session} if livepeer_session else {}
    if len(parts) == 1:
        part = parts[0]
        return Answer(part.encoded.body, part.encoded.media_type, {**part.meta, **session_meta}, timings)
    names = [s.name for s in sessions]
    summary = {
        "capabilities": names,
        "frame": [int(frame.shape[0]), int(frame.shape[1])],
        "timings_ms": {
            "read": round(before["read"] * 1000, 3),
            "decode": round(before["decode"] * 1000, 3),
            "total": round((time.perf_counter() - arrived) * 1000, 3),
        },
        **session_meta,
    }
    mixed, media_type = multipart.mixed([(name, part.encoded, part.meta) for name, part in zip(names, parts)])
    return Answer(mixed, media_type, summary, timings)


async def _decode(question: Question, body: bytearray) -> np.ndarray | frames.JpegFrame:
    """The frame, decoded off the event loop where that is work (JPEG, PNG), within every session's bounds.

    --gpu-decode: one capability's JPEG is checked from its header here and decoded on the GPU by its worker."""
    sessions = question.sessions
    on_gpu = question.media_type == "image/jpeg" and len(sessions) == 1 and sessions[0].decodes_jpeg
    bounds = common_bounds([s.served.bounds for s in sessions])
    args = (body, question.media_type, question.width, question.height, bounds, on_gpu)
    if question.media_type == content_type.RAW or on_gpu:  # a view of the body, or a header: no work to move
        return frames.decode(*args)
    return await to_thread.run_sync(frames.decode, *args)


async def _each(awaitables: list[Awaitable[T]]) -> list[T]:
    """Their results, awaited together; the first failure (in the order named) is raised once all are done.
    One is awaited directly: the single-capability path makes no tasks."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    return list(results)  # type: ignore[arg-type]  # no exception left: every result is a T
