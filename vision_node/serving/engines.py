"""What the node serves, read from ``manifest.json`` and checked before anything is loaded.

Every artefact must be inside the engines directory, exist, and match the manifest's SHA-256:
a corrupt, truncated or replaced file stops start-up with a message naming it.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .. import manifest
from ..contract import CAPABILITIES, OUTPUTS, ShapeBounds
from ..errors import StartupError
from ..sizing import Sizing

log = logging.getLogger("vision_node")


@dataclass(frozen=True, eq=False)  # identity hash: a graph keys its backend
class Graph:
    """One exported graph: any frame size within the bounds, at the model resolution its sizing picks.

    Read from the manifest's ``GraphRecord``; the fields other modules read by key (``outputs``,
    ``tensorrt``, ``memory``) are the manifest's JSON form of them.
    """

    path: Path
    sizing: Sizing  # fixed, or the processor's keep-aspect rule, computed inside the graph
    sha256: str
    outputs: tuple[dict, ...]  # name, dtype, shape (ints or dimension names) from the manifest
    tensorrt: tuple[dict, ...] = ()  # engines built from this graph, one per GPU / TensorRT version
    # SHA-256 of the files TensorRT engines of this graph are built from, the fp16 one first
    engine_sources: tuple[str, ...] = ()
    # weights and activation scratch at the bounds, per source (vision_node.builder.memory)
    memory: dict = field(default_factory=dict)
    # The copy ONNX Runtime optimised at build time (builder.ort_optimised), checked and loaded instead
    # of ``path`` by the ONNX Runtime backend; None where there is none for this ONNX Runtime.
    onnxruntime_path: Path | None = None

    @property
    def onnxruntime_file(self) -> Path:
        """What the ONNX Runtime backend loads."""
        return self.onnxruntime_path or self.path

    @property
    def onnx_hashes(self) -> tuple[str, ...]:
        """The files an engine of this graph may have been built from, the fp16 one first."""
        return self.engine_sources

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the model runs at for a ``height``×``width`` frame."""
        return self.sizing.model_size(height, width)

    def budget_meta(self, height: int, width: int) -> dict:
        """For X-Metadata: whether the patch budget, not the processor, set this frame's model size."""
        return {"patch_budget_applied": self.sizing.budget_applies(height, width)} if self.sizing.budgeted else {}


@dataclass(frozen=True)
class ServedCapability:
    """A capability as the node serves it. ``models`` and ``verification`` are the manifest's JSON form of its
    ``ModelRecord``s and ``Verification`` (the session and the benchmarks read models by key)."""

    name: str
    graphs: tuple[Graph, ...]
    bounds: ShapeBounds
    models: tuple[dict, ...]
    demo: bool
    options: dict
    verification: dict

    def graph_for(self, height: int, width: int) -> Graph:
        """The graph whose model resolution for this frame is nearest its aspect ratio (on a log scale)."""

        def distortion(graph: Graph) -> float:
            h, w = graph.model_size(height, width)
            return abs(math.log((height / width) / (h / w)))

        return min(self.graphs, key=distortion)

    @property
    def model_records(self) -> tuple[manifest.ModelRecord, ...]:
        return tuple(manifest.ModelRecord.from_dict(m) for m in self.models)

    @property
    def weights(self) -> str:
        sources = sorted({m.weights for m in self.model_records})
        return "+".join(sources)


def load(directory: Path, wanted: tuple[str, ...] = (), onnxruntime: bool = False) -> dict[str, ServedCapability]:
    """Read and check the manifest; ``wanted`` empty means every capability it lists.

    ``onnxruntime``: the node runs ONNX Runtime, so each graph's optimised copy for this ONNX Runtime
    version is what gets checked and loaded (the exported graph, where there is none).
    """
    directory = Path(directory)
    path = directory / manifest.MANIFEST_NAME
    if not directory.is_dir():
        raise StartupError(f"{directory}: engines directory not found (build it: vision-node-build --out {directory})")
    if not path.is_file():
        raise StartupError(f"{path}: not found (build it: vision-node-build --out {directory})")
    try:
        data = manifest.read(directory, only=wanted or None)
    except manifest.ManifestError as err:  # a schema this node does not read, or a malformed entry: names the file
        raise StartupError(str(err)) from None
    except (ValueError, OSError) as err:  # JSONDecodeError is a ValueError
        raise StartupError(f"{path}: unreadable: {err}") from None
    listed = [c for c in data.listed if c in CAPABILITIES]
    failed = data.failed
    missing = [c for c in wanted if c not in listed]
    if missing:
        why = "".join(f"; {c} failed to build: {failed[c]}" for c in missing if c in failed)
        raise StartupError(f"{path}: has no {', '.join(missing)} (it lists: {', '.join(listed) or 'nothing'}){why}")
    if not listed:
        why = "".join(f"; {c} failed to build: {w}" for c, w in failed.items())
        raise StartupError(f"{path}: lists no capability{why}")
    if not wanted:  # serving everything listed: say what is missing from "everything"
        for capability, why in failed.items():
            log.warning("%s: not served: its build failed: %s", capability, why)
    version = _onnxruntime_version() if onnxruntime else None
    # One thread per capability: hashing its files is most of a start's first half second, and hashlib
    # lets go of the GIL. Results are taken in order, so the first bad capability is the one reported.
    names = wanted or tuple(listed)
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        checked = [pool.submit(_capability, directory, name, data.capabilities[name], version) for name in names]
        return {name: future.result() for name, future in zip(names, checked)}


def _onnxruntime_version() -> str | None:
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return None


def _capability(
    directory: Path, name: str, entry: manifest.CapabilityEntry, onnxruntime: str | None
) -> ServedCapability:
    graphs = tuple(_graph(directory, name, g, onnxruntime) for g in entry.graphs)
    served = ServedCapability(
        name=name,
        graphs=graphs,
        bounds=entry.bounds,
        models=tuple(m.as_dict() for m in entry.models),
        demo=entry.demo,
        options=dict(entry.options),
        verification=entry.verification.as_dict(),
    )
    if not graphs:
        raise StartupError(f"{directory / manifest.MANIFEST_NAME}: {name}: no graph passed verification at build time")
    return served


def _graph(directory: Path, capability: str, entry: manifest.GraphRecord, onnxruntime: str | None) -> Graph:
    # The copy ONNX Runtime optimised at build time, for this ONNX Runtime only (not for a TensorRT backend).
    optimised: manifest.OptimisedCopy | None = entry.onnxruntime if onnxruntime else None
    if optimised and optimised.version != onnxruntime:
        log.info(
            "%s: optimised by ONNX Runtime %s, this is %s: loading the exported graph (its start re-optimises)",
            entry.path,
            optimised.version,
            onnxruntime,
        )
        optimised = None
    # Only what will be loaded is hashed: the exported graph, or the optimised copy instead of it.
    path = _checked_file(directory, optimised or entry)
    names = tuple(o.name for o in entry.outputs)
    if names != OUTPUTS[capability]:
        raise StartupError(f"{path}: outputs {names}, the node expects {OUTPUTS[capability]} for {capability}")
    return Graph(
        path=path if optimised is None else (directory / entry.path).resolve(),
        sizing=entry.sizing,
        sha256=entry.sha256,
        outputs=tuple(o.as_dict() for o in entry.outputs),
        tensorrt=tuple(e.as_dict() for e in entry.tensorrt),
        engine_sources=entry.engine_sources,
        onnxruntime_path=path if optimised is not None else None,
        memory=entry.memory.as_dict(),
    )


def _checked_file(directory: Path, entry: manifest.FileRecord) -> Path:
    """The artefact ``entry`` lists, inside the directory, of its size and SHA-256; else StartupError naming it."""
    path = (directory / entry.path).resolve()
    if directory.resolve() not in path.parents:
        raise StartupError(f"{entry.path}: outside the engines directory {directory}; refusing to load it")
    if not path.is_file():
        raise StartupError(f"{path}: missing (listed in {manifest.MANIFEST_NAME}); rebuild the engines")
    size = path.stat().st_size
    if size != entry.bytes:
        raise StartupError(f"{path}: {size} bytes, the manifest says {entry.bytes}: truncated or replaced; rebuild")
    digest = manifest.sha256(path)
    if digest != entry.sha256:
        raise StartupError(
            f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}...: "
            "corrupt or replaced; rebuild"
        )
    return path


def describe(served: ServedCapability) -> dict:
    """The public description of a capability, for ``/capabilities`` (no local paths)."""
    return {
        "models": [m.public() for m in served.model_records],
        "weights": served.weights,
        "demo": served.demo,
        "graphs": [
            {
                "file": g.path.name,
                "resolution": list(g.sizing.size),
                "resolution_mode": g.sizing.mode,
                "sizing": g.sizing.describe(),
                **({"max_patches": g.sizing.max_patches} if g.sizing.budgeted else {}),
                "sha256": g.sha256,
                "memory": g.memory,
            }
            for g in served.graphs
        ],
        "frame_bounds": {"min_hw": list(served.bounds.min_hw), "max_hw": list(served.bounds.max_hw)},
        "verification": manifest.Verification.from_dict(served.verification).summary(),
    }
