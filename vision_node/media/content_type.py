"""The request's Content-Type: its media type and parameters (options travel in them through an orchestrator)."""

from __future__ import annotations

import re

from ..errors import InputError, UnsupportedMediaType

RAW = "application/octet-stream"
IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}
ACCEPTED = (*IMAGE_FORMATS, RAW)


# A parameter as RFC 9110 writes it: ``; token=token`` or ``; token="quoted string"`` (backslash escapes).
_PARAMETER = re.compile(r"""\s*;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;"\s]*))?\s*""")
_ESCAPE = re.compile(r"\\(.)")


def parse(value: str | None) -> tuple[str, dict[str, str]]:
    """``type/subtype; k=v; k="v"`` -> (lower-case media type, parameters). Small on purpose: no multipart."""
    if not value:
        return "", {}
    media_type, sep, rest = value.partition(";")
    parsed: dict[str, str] = {}
    at, rest = 0, sep + rest
    while rest[at:].strip(" \t;"):
        match = _PARAMETER.match(rest, at)
        if match is None:
            raise InputError(f"Content-Type parameters are malformed at {rest[at : at + 40]!r}")
        key, given = match.group(1).lower(), match.group(2)
        if given is None:
            raise InputError(f"Content-Type parameter {key!r} has no value")
        parsed[key] = _ESCAPE.sub(r"\1", given[1:-1]) if given.startswith('"') else given
        at = match.end()
    return media_type.strip().lower(), parsed


def check(media_type: str) -> None:
    if media_type not in ACCEPTED:
        got = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise UnsupportedMediaType(f"{got}; send one of {', '.join(ACCEPTED)} (raw needs width= and height=)")
