"""Engine files beside the graphs: their names, their sidecars, and whether one on disk can be reused.

An engine is only valid for the file it was built from (the graph's TensorRT variant), the GPU model
(compute capability), the TensorRT version and the build options. Each plan has a JSON sidecar with
those facts (``manifest.EngineRecord``); ``decide`` compares it with what is wanted here, and a foreign
engine is rebuilt. Which engine a node runs is the node's own choice (``runtime.engine_choice``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..contract import FRAME_INPUT, ShapeBounds
from ..manifest import EngineFacts, EngineRecord
from ..runtime.cuda import gpu_tag
from ..runtime.flavours import TENSORRT, TENSORRT_RTX, Flavour


def profile_shapes(bounds: ShapeBounds, max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min / opt / max of the frames input for one optimisation profile."""
    (min_h, min_w), (opt_h, opt_w), (max_h, max_w) = bounds.min_hw, bounds.opt_hw, bounds.max_hw
    batch = min(max_batch, bounds.max_batch)
    return {FRAME_INPUT: ((1, min_h, min_w, 3), (1, opt_h, opt_w, 3), (batch, max_h, max_w, 3))}


def wanted(onnx_sha256: str, flavour: Flavour, version: str, options: dict, gpu: dict | None = None) -> EngineFacts:
    """The facts an engine must have been built with to be reused.

    TensorRT: this GPU model. TensorRT for RTX: the compute capabilities it targets (in ``options``),
    no GPU: it is built ahead of time and specialised on the card at its first run.
    """
    if flavour is TENSORRT:
        assert gpu is not None, "a TensorRT engine belongs to a GPU model: pass its gpu"
        return EngineFacts(
            onnx_sha256=onnx_sha256,
            runtime=flavour.backend,
            tensorrt=version,
            options=options,
            gpu=gpu["name"],
            compute_capability=gpu["compute_capability"],
        )
    return EngineFacts(onnx_sha256=onnx_sha256, runtime=flavour.backend, tensorrt=version, options=options)


def key(facts: EngineFacts) -> str:
    return hashlib.sha256(json.dumps(facts.as_dict(), sort_keys=True).encode()).hexdigest()


def engine_path(directory: Path, graph_stem: str, facts: EngineFacts) -> Path:
    """e.g. ``depth-518x518.fp16.NVIDIA-H100-80GB-HBM3.sm90.trt10.13.0.1a2b3c4d5e6f.plan`` (TensorRT) or
    ``depth-518x518.fp16.rtx1.7.1.116.1a2b3c4d5e6f.plan`` (TensorRT for RTX, any RTX card of its targets)."""
    if facts.runtime == TENSORRT_RTX.backend:
        return Path(directory) / f"{graph_stem}.{TENSORRT_RTX.tag}{facts.tensorrt}.{key(facts)[:12]}.plan"
    assert facts.gpu is not None and facts.compute_capability is not None  # a TensorRT engine names its GPU
    gpu = gpu_tag(facts.gpu, facts.compute_capability)
    return Path(directory) / f"{graph_stem}.{gpu}.{TENSORRT.tag}{facts.tensorrt}.{key(facts)[:12]}.plan"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def decide(found: EngineFacts | None, want: EngineFacts) -> tuple[str, str]:
    """("reuse" | "build", why). ``found``: the sidecar of an engine on disk, or None."""
    if found is None:
        return "build", "no engine for this graph and machine yet"
    differ = want.differences(found)
    if not differ:
        return "reuse", "built for this graph, GPU, TensorRT version and options"
    why = "; ".join(f"{name}: engine has {theirs!r}, here {mine!r}" for name, theirs, mine in differ)
    return "build", f"foreign engine ({why})"


def read_sidecar(plan: Path) -> EngineRecord | None:
    """The record beside an engine on disk, or None (no plan, no sidecar, or another version's sidecar)."""
    path = sidecar(plan)
    if not (plan.exists() and path.exists()):
        return None
    try:
        return EngineRecord.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):  # another version's sidecar: the engine is rebuilt
        return None


def write_sidecar(plan: Path, record: EngineRecord) -> None:
    sidecar(plan).write_text(json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n")
