"""A combination's answer: ``multipart/mixed``, one part per capability."""

from __future__ import annotations

import json
import secrets


def mixed(parts) -> tuple[bytes, str]:
    """``multipart/mixed`` (RFC 2046) of ``(name, Encoded, metadata)`` parts: (body, Content-Type).

    Each part carries its own Content-Type, ``Content-Disposition: inline; name="<capability>"`` and
    X-Metadata, so a client splits the answer with any MIME parser (Python's ``email`` module,
    browsers' ``Response.formData`` does not apply to mixed). The body is binary; no transfer encoding.
    """
    bodies = [bytes(encoded.body) for _, encoded, _ in parts]
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in body for body in bodies):  # astronomically rare; never ambiguous
        boundary = secrets.token_hex(16)
    out = bytearray()
    for (name, encoded, meta), body in zip(parts, bodies):
        out += (
            f"--{boundary}\r\nContent-Type: {encoded.media_type}\r\n"
            f'Content-Disposition: inline; name="{name}"\r\nX-Metadata: {json.dumps(meta)}\r\n\r\n'
        ).encode()
        out += body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/mixed; boundary="{boundary}"'
