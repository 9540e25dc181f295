"""Which of the manifest's TensorRT engines this machine runs for a graph, or what exists instead.

An engine is valid only for the file it was built from (the graph's TensorRT variant), the GPU model
(TensorRT) or compute-capability targets (TensorRT for RTX), and the TensorRT version. The build writes
those facts into each engine's record (``builder.engine_files``); ``pick`` reads them here, at the
node's start. A foreign engine is refused, never loaded on trust: engines are executable code.
"""

from __future__ import annotations

from ..manifest import EngineRecord
from .flavours import TENSORRT, Flavour


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
