"""Malformed requests, as raw HTTP bytes, and a sender that never waits long for an answer.

Each case is what an attacker or a broken client sends: decompression bombs, truncated and
mislabelled images, lying lengths, huge, zero and negative dimensions, deep JSON, giant and
numerous headers, pathological Content-Types, bad methods, paths and options. Built from a
seed, so a failing case can be replayed. Almost none is a valid request (an image with a few
bytes flipped may still decode); a node must answer each with a 4xx, or a 200 where it was
valid after all, or close the connection: never a 5xx.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

CAPABILITIES = ("depth", "segmentation", "pose")


@dataclass
class Case:
    category: str
    name: str
    request: bytes  # the whole request, head and body
    half_close: bool = False  # shut the write side after sending (a body shorter than its Content-Length)


def _request(method: str, path: str, headers: dict | list, body: bytes = b"", length: int | None = None) -> bytes:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if length is not None or body:
        items.append(("Content-Length", str(len(body) if length is None else length)))
    head = f"{method} {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in items)
    return head.encode("latin-1") + b"\r\n" + body


def _image(fmt: str, h: int = 96, w: int = 128, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(out, format=fmt)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: rows of zeros compress ~1000:1."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * min(width * 3 + 1, 1 << 20) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid JPEG whose SOF header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(_image("JPEG"))
    i = 2
    while i < len(data):
        marker, size = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            break
        i += 2 + size
    return bytes(data)


def _raw_type(w, h) -> str:
    return f"application/octet-stream; width={w}; height={h}"


@dataclass
class _Images:
    """The valid images the cases are made from."""

    jpeg: bytes
    png: bytes
    others: dict[str, bytes]  # GIF, BMP, TIFF, WEBP


def cases(count: int = 1000, seed: int = 0) -> list[Case]:
    """At least ``count`` malformed requests: every fixed case once, then seeded variations."""
    rng = random.Random(seed)
    images = _Images(_image("JPEG"), _image("PNG"), {fmt: _image(fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP")})
    out = _fixed(images.jpeg)
    while len(out) < count:
        kind = rng.randrange(len(VARIATIONS))
        cap = rng.choice(CAPABILITIES)
        out.append(VARIATIONS[kind](rng, cap, images))
    return out


def _fixed(jpeg: bytes) -> list[Case]:
    """Every fixed case: bombs, deep JSON, headers, Content-Types, lengths, methods and paths."""
    return [
        Case(
            "bomb",
            "png 100000x100000",
            _request("POST", "/infer/depth", {"Content-Type": "image/png"}, png_bomb(100000, 100000)),
        ),
        Case(
            "bomb",
            "png 2^31-1 square",
            _request("POST", "/infer/segmentation", {"Content-Type": "image/png"}, png_bomb(2**31 - 1, 2**31 - 1)),
        ),
        Case("bomb", "png 0x0", _request("POST", "/infer/pose", {"Content-Type": "image/png"}, png_bomb(0, 0))),
        Case(
            "bomb",
            "jpeg 65500x65500",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg_with_size(65500, 65500)),
        ),
        Case(
            "bomb", "jpeg 0x0", _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg_with_size(0, 0))
        ),
        Case(
            "deep json",
            "json body",
            _request("POST", "/infer/depth", {"Content-Type": "application/json"}, b"[" * 100000 + b"]" * 100000),
        ),
        Case(
            "deep json",
            "json option",
            _request(
                "POST", "/infer/depth?range=" + "%5B" * 5000, {"Content-Type": _raw_type(64, 64)}, b"\0" * 64 * 64 * 3
            ),
        ),
        Case("headers", "64 KiB header", _request("GET", "/health", {"X-Big": "a" * 65536})),
        Case("headers", "2000 headers", _request("GET", "/health", [(f"X-H{i}", "v") for i in range(2000)])),
        Case("headers", "64 KiB URL", _request("GET", "/health?" + "a=b&" * 16384, {})),
        Case(
            "content-type",
            "10000 parameters",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg" + "; a=b" * 10000}, jpeg),
        ),
        Case(
            "content-type",
            "multipart",
            _request("POST", "/infer/depth", {"Content-Type": "multipart/form-data; boundary=" + "-" * 5000}, jpeg),
        ),
        Case(
            "content-type",
            "nul and unicode",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg; width=\x01\x7f\xff"}, jpeg),
        ),
        Case(
            "length",
            "chunked without length, over the limit",
            b"POST /infer/depth HTTP/1.1\r\nHost: node\r\n"
            b"Connection: close\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"100000\r\n" + b"\0" * 0x100000 + b"\r\n") * 40
            + b"0\r\n\r\n",
        ),
        Case(
            "length",
            "content-length and chunked",
            b"POST /infer/depth HTTP/1.1\r\nHost: node\r\nConnection: close"
            b"\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        Case(
            "length",
            "negative content-length",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg, length=-1),
        ),
        Case(
            "length",
            "huge content-length",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg, length=10**30),
        ),
        Case(
            "length",
            "body shorter than its length",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg[:100], length=len(jpeg)),
            half_close=True,
        ),
        Case(
            "length",
            "body longer than its length",
            _request("POST", "/infer/depth", {"Content-Type": "image/jpeg"}, jpeg, length=len(jpeg) // 2),
        ),
        Case("method", "DELETE /infer/depth", _request("DELETE", "/infer/depth", {})),
        Case("method", "PUT /ready", _request("PUT", "/ready", {}, b"x")),
        Case("method", "TRACE /", _request("TRACE", "/", {})),
        Case("method", "garbage method", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"),
        Case("path", "traversal", _request("GET", "/infer/../../etc/passwd", {})),
        Case("path", "encoded traversal", _request("POST", "/infer/%2e%2e%2fmanifest.json", {})),
        Case("path", "url in path", _request("POST", "/infer/http://169.254.169.254/latest", {})),
        Case(
            "path",
            "admin routes",
            _request("POST", "/models/load", {"Content-Type": "application/json"}, b'{"url": "http://127.0.0.1:1/"}'),
        ),
    ]


def _truncated(rng: random.Random, cap: str, images: _Images) -> Case:
    fmt, data = rng.choice((("image/jpeg", images.jpeg), ("image/png", images.png)))
    cut = rng.randrange(0, len(data) - 1)
    return Case(
        "truncated", f"{fmt} cut at {cut}", _request("POST", f"/infer/{cap}", {"Content-Type": fmt}, data[:cut])
    )


def _mislabelled(rng: random.Random, cap: str, images: _Images) -> Case:
    real, data = rng.choice(
        [("jpeg", images.jpeg), ("png", images.png), *images.others.items(), ("text", b"hello" * 50)]
    )
    label = rng.choice(("image/jpeg", "image/png"))
    if label.endswith(real.lower()):
        label = "image/png" if label == "image/jpeg" else "image/jpeg"
    return Case("mislabelled", f"{real} as {label}", _request("POST", f"/infer/{cap}", {"Content-Type": label}, data))


def _dimensions(rng: random.Random, cap: str, images: _Images) -> Case:
    """Raw dimensions: zero, negative, huge, not numbers, overflowing."""
    w = rng.choice((0, -1, -64, 2**31, 2**63, 10**40, "abc", "1e3", "64.0", " ", "0x40", 64, 65, 99999))
    h = rng.choice((0, -1, 2**32 + 64, 10**40, "nan", "", 64, 1, 100000))
    body = b"\0" * rng.choice((0, 1, 64 * 64 * 3, 64 * 64 * 3 + 1, 4096))
    if (w, h) == (64, 64) and len(body) == 64 * 64 * 3:
        body += b"\0"
    return Case(
        "dimensions",
        f"raw {w}x{h} with {len(body)} bytes",
        _request("POST", f"/infer/{cap}", {"Content-Type": _raw_type(w, h)}, body),
    )


def _bomb(rng: random.Random, cap: str, images: _Images) -> Case:
    """A bomb of a random claimed size."""
    w, h = rng.choice((0, 1, 70000, 2**24, 2**31 - 1)), rng.choice((0, 1, 70000, 2**24, 2**31 - 1))
    if rng.random() < 0.5:
        return Case(
            "bomb", f"png {w}x{h}", _request("POST", f"/infer/{cap}", {"Content-Type": "image/png"}, png_bomb(w, h))
        )
    w, h = w & 0xFFFF, h & 0xFFFF
    return Case(
        "bomb", f"jpeg {w}x{h}", _request("POST", f"/infer/{cap}", {"Content-Type": "image/jpeg"}, jpeg_with_size(w, h))
    )


def _options(rng: random.Random, cap: str, images: _Images) -> Case:
    name = rng.choice(("output", "range", "threshold", "channels", "palette", "bogus", "width", ""))
    value = rng.choice(("", "-1", "1e999", "nan", "inf", "x" * 3000, "%00", "[1,2]", "{}", "raw;raw", "9" * 99))
    query = f"{name}={value}" + (f"&{name}=2" if rng.random() < 0.3 else "")
    return Case(
        "options", query[:40], _request("POST", f"/infer/{cap}?{query}", {"Content-Type": "image/jpeg"}, images.jpeg)
    )


def _random_bytes(rng: random.Random, cap: str, images: _Images) -> Case:
    """Random bytes with a plausible type."""
    data = rng.randbytes(rng.randrange(0, 5000))
    label = rng.choice(("image/jpeg", "image/png", "application/octet-stream; width=64; height=64"))
    return Case(
        "random bytes",
        f"{len(data)} bytes as {label}",
        _request("POST", f"/infer/{cap}", {"Content-Type": label}, data),
    )


def _corrupted(rng: random.Random, cap: str, images: _Images) -> Case:
    """Bytes flipped inside a valid image."""
    fmt, data = rng.choice((("image/jpeg", images.jpeg), ("image/png", images.png)))
    data = bytearray(data)
    for _ in range(rng.randrange(1, 20)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return Case(
        "corrupted", f"{fmt} with flipped bytes", _request("POST", f"/infer/{cap}", {"Content-Type": fmt}, bytes(data))
    )


def _route(rng: random.Random, cap: str, images: _Images) -> Case:
    """Unknown routes and methods."""
    method = rng.choice(("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "POST", "HEAD"))
    path = rng.choice(
        (
            "/",
            "/infer",
            "/infer/",
            "/infer/normals",
            "/admin",
            "/metrics/x",
            "/health/../ready",
            "/docs",
            "/v2/models",
            "/capability/register",
            f"/infer/{cap}/raw/extra",
        )
    )
    return Case("routes", f"{method} {path}", _request(method, path, {}))


# The seeded variations, in the order a seed picks them (kind = rng.randrange(8)): keep it, to replay a seed.
VARIATIONS = (_truncated, _mislabelled, _dimensions, _bomb, _options, _random_bytes, _corrupted, _route)


def send(port: int, case: Case, timeout: float = 10.0) -> int | str:
    """The status the node answered, or "closed" when it closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(case.request)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered and closed before reading everything: read its answer
        head = b""
        try:
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not head.startswith(b"HTTP/1."):
        return "closed"
    return int(head.split(b" ", 2)[1])
