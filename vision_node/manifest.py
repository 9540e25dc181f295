"""``manifest.json``: what was built, from what, with which tools, and how well it verified.

The server trusts nothing it cannot find here: artefact paths are relative to the manifest,
each with its SHA-256, so a copied or corrupted file is caught before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT = 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_files(graph: dict) -> list[dict]:
    """A manifest graph entry's ONNX files: the fp32 graph (the entry itself) and its fp16 twin, if any."""
    return [graph, graph["fp16"]] if graph.get("fp16") else [graph]


def artefacts(graph: dict) -> list[dict]:
    """Every file a graph entry lists (path, sha256): its ONNX graphs and ONNX Runtime's optimised copy."""
    return graph_files(graph) + ([graph["onnxruntime"]] if graph.get("onnxruntime") else [])


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_NAME
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, this build reads {FORMAT}")
    return manifest


def write(
    directory: Path, capabilities: dict[str, dict], merge: bool = True, failed: dict[str, str] | None = None
) -> Path:
    """Merge ``capabilities`` into the directory's manifest (others are kept unless ``merge`` is False)
    and write it atomically.

    ``failed`` names the capabilities whose build failed, with the reason: they leave
    ``capabilities`` (nothing stale is served in their name) and are listed under ``failed``.
    A capability built now clears its old failure.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    previous, previous_failed = {}, {}
    if merge and path.exists():
        try:
            data = load(directory)
            previous, previous_failed = data.get("capabilities", {}), data.get("failed", {})
        except (ValueError, json.JSONDecodeError):
            pass
    failed = failed or {}
    manifest = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "tools": tool_versions(),
        "capabilities": {c: e for c, e in {**previous, **capabilities}.items() if c not in failed},
    }
    still_failed = {c: why for c, why in {**previous_failed, **failed}.items() if c not in capabilities}
    if still_failed:
        manifest["failed"] = still_failed
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path
