"""Which TensorRT engine belongs to which graph and machine, and what to do with one that does not.

An engine is only valid for the ONNX it was built from, the GPU model (compute capability), the
TensorRT version and the build options. Each engine file has a JSON sidecar with those facts;
``decide`` compares it with what is wanted here. A foreign engine is rebuilt by the build step
and refused by the server: engines are executable code, never loaded on trust.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..contract import FRAME_INPUT, ShapeBounds


def profile_shapes(bounds: ShapeBounds, max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min / opt / max of the frames input for one optimisation profile."""
    (min_h, min_w), (opt_h, opt_w), (max_h, max_w) = bounds.min_hw, bounds.opt_hw, bounds.max_hw
    batch = min(max_batch, bounds.max_batch)
    return {FRAME_INPUT: ((1, min_h, min_w, 3), (1, opt_h, opt_w, 3), (batch, max_h, max_w, 3))}


def wanted(onnx_sha256: str, gpu: dict, tensorrt_version: str, options: dict) -> dict:
    """The facts an engine must have been built with to run here."""
    return {
        "onnx_sha256": onnx_sha256,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "tensorrt": tensorrt_version,
        "options": options,  # precision, profile, fp32 layers, workspace
    }


def key(facts: dict) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def engine_path(directory: Path, graph_stem: str, facts: dict) -> Path:
    """e.g. ``depth-518x518.NVIDIA-H100-80GB-HBM3.sm90.trt10.13.0.1a2b3c4d5e6f.plan``."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", facts["gpu"]).strip("-")
    cc = facts["compute_capability"].replace(".", "")
    return Path(directory) / f"{graph_stem}.{gpu}.sm{cc}.trt{facts['tensorrt']}.{key(facts)[:12]}.plan"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def decide(found: dict | None, want: dict) -> tuple[str, str]:
    """("reuse" | "build", why). ``found``: the sidecar of an engine on disk, or None."""
    if found is None:
        return "build", "no engine for this graph and machine yet"
    differ = [name for name in want if found.get(name) != want[name]]
    if not differ:
        return "reuse", "built for this graph, GPU, TensorRT version and options"
    why = "; ".join(f"{name}: engine has {found.get(name)!r}, here {want[name]!r}" for name in differ)
    return "build", f"foreign engine ({why})"


def pick(entries: list[dict], onnx_sha256: str, gpu: dict, tensorrt_version: str) -> tuple[dict | None, str]:
    """The manifest's engine entry for this graph on this machine, or None and what was there instead."""
    here = {"onnx_sha256": onnx_sha256, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "tensorrt": tensorrt_version}  # fmt: skip
    for entry in entries:
        if all(entry.get(k) == v for k, v in here.items()):
            return entry, ""
    if not entries:
        return None, "no TensorRT engine was built for this graph"
    seen = "; ".join(f"{e.get('gpu')} sm{e.get('compute_capability')} TensorRT {e.get('tensorrt')}" for e in entries)
    return None, f"engines exist only for other machines or an older graph ({seen})"
