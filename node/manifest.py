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


def write(directory: Path, capabilities: dict[str, dict], merge: bool = True) -> Path:
    """Merge ``capabilities`` into the directory's manifest (others are kept unless ``merge`` is False)
    and write it atomically."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    previous = {}
    if merge and path.exists():
        try:
            previous = load(directory).get("capabilities", {})
        except (ValueError, json.JSONDecodeError):
            previous = {}
    manifest = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "tools": tool_versions(),
        "capabilities": {**previous, **capabilities},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path
