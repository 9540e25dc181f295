"""Which TensorRT engine belongs to which graph and machine, and what to do with one that does not.

An engine is only valid for the ONNX it was built from, the GPU model (compute capability), the
TensorRT version and the build options. Each engine file has a JSON sidecar with those facts;
``decide`` compares it with what is wanted here. A foreign engine is rebuilt by the build step
and refused by the server: engines are executable code, never loaded on trust.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..contract import FRAME_INPUT, ShapeBounds
from ..manifest import EngineFacts, EngineRecord
from .cuda import gpu_tag
from .flavours import TENSORRT, TENSORRT_RTX, Flavour


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
        return EngineFacts(onnx_sha256=onnx_sha256, runtime=flavour.backend, tensorrt=version, options=options,
                           gpu=gpu["name"], compute_capability=gpu["compute_capability"])
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


def pick(
    entries: list[dict], graph_hashes, gpu: dict, version: str, flavour: Flavour = TENSORRT
) -> tuple[dict | None, str]:
    """The manifest's engine entry for this graph on this machine, or None and what was there instead.

    ``entries``: the graph's engine records in the manifest's JSON form (``Graph.tensorrt``), one of which
    is returned as it is. ``graph_hashes``: the SHA-256 of the files an engine of the graph may be built
    from (its TensorRT variants, fp16 and fp32); any of them will do, the fp16 one first. TensorRT: same
    GPU model and version. TensorRT for RTX: the same version first, else the newest other; whether it runs
    on this card is TensorRT for RTX's own verdict when it is opened (``Runtime.get_engine_validity``).
    """
    hashes = [graph_hashes] if isinstance(graph_hashes, str) else list(graph_hashes)
    records = [(EngineRecord.from_dict(e), e) for e in entries]
    mine = [(r, e) for r, e in records if r.runtime == flavour.backend and r.onnx_sha256 in hashes]
    mine.sort(key=lambda pair: hashes.index(pair[0].onnx_sha256))
    if flavour is TENSORRT:
        here = (gpu["name"], gpu["compute_capability"], version)
        found = [(r, e) for r, e in mine if (r.gpu, r.compute_capability, r.tensorrt) == here]
    else:
        found = sorted(mine, key=lambda pair: (pair[0].tensorrt != version, _newest_first(pair[0].tensorrt)))
    if found:
        return found[0][1], ""
    if not entries:
        return None, "no TensorRT engine was built for this graph"
    seen = "; ".join(r.describe() for r, _ in records)
    return None, f"engines exist only for other machines, runtimes or an older graph ({seen})"


def _newest_first(version) -> tuple:
    """A sort key that puts later versions ("1.10.0" after "1.9.2") first; an unreadable one last."""
    try:
        return tuple(-int(part) for part in str(version).split("."))
    except ValueError:
        return (1,)
