"""``manifest.json``: what was built, from what, with which tools, and how well it verified.

The server trusts nothing it cannot find here: artefact paths are relative to the manifest,
each with its SHA-256, so a copied or corrupted file is caught before it is loaded.

This module is the manifest's schema, and the only code that spells its keys: the build
(``builder.pipeline``, ``builder.cli``, ``builder.tensorrt``, ``builder.memory``), the container's
sync (``builder.sync``) and the node (``serving.engines``) read and write it through the
dataclasses below (``read`` and ``write``). A manifest of another schema version is refused with
the file, its version and what to do (rebuild); there are no branches for older layouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import device_memory
from .contract import ShapeBounds
from .sizing import Sizing

MANIFEST_NAME = "manifest.json"
# The schema's version, written as "format". 2: every ONNX graph lists its TensorRT variant
# (``tensorrt_onnx``), engines are built from it, and every key below is required.
FORMAT = 2

# Sources of a graph's memory figures (``GraphMemory``).
ONNXRUNTIME_CPU = "onnxruntime_cpu"
TENSORRT_RTX = "tensorrt_rtx"


class ManifestError(ValueError):
    """A manifest this code cannot read: the message names the file, and the capability where one is at fault."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- artefacts


@dataclass(kw_only=True)
class FileRecord:
    """An artefact beside the manifest: its name (relative to the manifest), SHA-256 and size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, file: Path, **more: Any):
        """The record of ``file`` (named relative to its directory), hashed now."""
        return cls(path=file.name, sha256=sha256(file), bytes=file.stat().st_size, **more)

    @classmethod
    def from_dict(cls, data: dict) -> FileRecord:
        return FileRecord(path=data["path"], sha256=data["sha256"], bytes=data["bytes"])

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(kw_only=True)
class OnnxRecord(FileRecord):
    """One ONNX graph at one precision (the exported graph, or its fp16 twin) and its TensorRT variant."""

    precision: str  # the precision rung (builder.precision): fp32, fp16, fp16-norms32
    float_weights: dict[str, int]  # how many float weights it stores per dtype
    # The same graph as TensorRT is given it (builder.tensorrt_onnx: ``<graph>.trt.onnx``), verified like it;
    # every TensorRT engine of the graph is built from this file.
    tensorrt_onnx: FileRecord

    @classmethod
    def from_dict(cls, data: dict) -> OnnxRecord:
        return OnnxRecord(
            **_file_fields(data),
            precision=data["precision"],
            float_weights=dict(data["float_weights"]),
            tensorrt_onnx=FileRecord.from_dict(data["tensorrt_onnx"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "precision": self.precision,
            "float_weights": self.float_weights,
            "tensorrt_onnx": self.tensorrt_onnx.as_dict(),
        }


@dataclass(kw_only=True)
class OptimisedCopy(FileRecord):
    """The graph as ONNX Runtime optimised it at build time (builder.ort_optimised), for that version only."""

    version: str  # the ONNX Runtime that wrote it
    level: str  # its optimisation level

    @classmethod
    def from_dict(cls, data: dict) -> OptimisedCopy:
        return OptimisedCopy(**_file_fields(data), version=data["version"], level=data["level"])

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "version": self.version, "level": self.level}


def _file_fields(data: dict) -> dict[str, Any]:
    return {"path": data["path"], "sha256": data["sha256"], "bytes": data["bytes"]}


# ------------------------------------------------------------------------------------------------ engines


@dataclass(frozen=True, kw_only=True)
class EngineFacts:
    """What an engine was built from and for: it is valid only where all of these still hold.

    Written beside each plan as its sidecar (``builder.engine_files``) and into its manifest record.
    """

    onnx_sha256: str  # the TensorRT variant it was built from
    runtime: str  # tensorrt or tensorrt-rtx (runtime.flavours)
    tensorrt: str  # the TensorRT (for RTX) version
    options: dict[str, Any]  # build options: precision, max_batch, workspace_gib, profile, targets (RTX)
    gpu: str | None = None  # TensorRT: the GPU model it was built on and for; TensorRT for RTX: none
    compute_capability: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> EngineFacts:
        return EngineFacts(**_facts_fields(data))

    def as_dict(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "onnx_sha256": self.onnx_sha256,
            "runtime": self.runtime,
            "tensorrt": self.tensorrt,
            "options": self.options,
        }
        if self.gpu is not None:
            facts.update({"gpu": self.gpu, "compute_capability": self.compute_capability})
        return facts

    @property
    def precision(self) -> str:
        return self.options["precision"]

    @property
    def max_batch(self) -> int:
        return self.options["max_batch"]

    @property
    def targets(self) -> list[str] | None:
        """TensorRT for RTX: the compute capabilities it was built for (empty: its default set)."""
        return self.options.get("targets")

    def differences(self, found: EngineFacts) -> list[tuple[str, Any, Any]]:
        """(name, found's, this one's) for every fact where ``found`` differs."""
        mine, theirs = self.as_dict(), found.as_dict()
        return [(name, theirs.get(name), value) for name, value in mine.items() if theirs.get(name) != value]


def _facts_fields(data: dict) -> dict[str, Any]:
    return {
        "onnx_sha256": data["onnx_sha256"],
        "runtime": data["runtime"],
        "tensorrt": data["tensorrt"],
        "options": dict(data["options"]),
        "gpu": data.get("gpu"),
        "compute_capability": data.get("compute_capability"),
    }


@dataclass(frozen=True, kw_only=True)
class EngineRecord(EngineFacts):
    """A TensorRT engine listed for a graph: its facts, its plan file and how its build went."""

    plan: str  # the plan file, beside the manifest
    sha256: str
    bytes: int
    build_seconds: float = 0.0
    device_memory: dict[str, int] = field(default_factory=dict)  # the builder's figures (builder.trt_memory)
    gate: list[dict[str, Any]] | None = None  # TensorRT: its checks against ONNX Runtime; RTX: None (the self-test)

    @classmethod
    def from_dict(cls, data: dict) -> EngineRecord:
        return EngineRecord(
            **_facts_fields(data),
            plan=data["plan"],
            sha256=data["sha256"],
            bytes=data["bytes"],
            build_seconds=data["build_seconds"],
            device_memory=dict(data["device_memory"]),
            gate=data["gate"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "plan": self.plan,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "build_seconds": self.build_seconds,
            "device_memory": self.device_memory,
            "gate": self.gate,
        }

    def describe(self) -> str:
        """Which machine or targets it is for, in words."""
        if self.gpu is None:
            return f"TensorRT for RTX {self.tensorrt} (targets {', '.join(self.targets or ['default'])})"
        return f"{self.gpu} sm{self.compute_capability} TensorRT {self.tensorrt}"


# ------------------------------------------------------------------------------------------------- graphs


@dataclass(kw_only=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype, dims (ints, or the frame's dimension names)."""

    name: str
    dtype: str
    shape: list[int | str]

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return TensorSpec(name=data["name"], dtype=data["dtype"], shape=list(data["shape"]))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass(kw_only=True)
class GraphMemory:
    """A graph's weights and activation scratch at its bounds, per source (builder.memory says how each is had)."""

    onnxruntime_cpu: dict[str, Any] | None = None  # measured at every build: a proxy
    tensorrt_rtx: dict[str, dict[str, Any]] = field(default_factory=dict)  # precision -> the builder's figures

    @classmethod
    def from_dict(cls, data: dict) -> GraphMemory:
        return GraphMemory(onnxruntime_cpu=data.get(ONNXRUNTIME_CPU), tensorrt_rtx=dict(data.get(TENSORRT_RTX, {})))

    def as_dict(self) -> dict[str, Any]:
        memory: dict[str, Any] = {}
        if self.onnxruntime_cpu is not None:
            memory[ONNXRUNTIME_CPU] = self.onnxruntime_cpu
        if self.tensorrt_rtx:
            memory[TENSORRT_RTX] = self.tensorrt_rtx
        return memory


@dataclass(kw_only=True)
class GraphRecord(OnnxRecord):
    """One exported graph (fp32) and everything made from it: what the node serves per model resolution."""

    sizing: Sizing
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnxruntime: OptimisedCopy  # what a CPU node with that ONNX Runtime loads
    memory: GraphMemory = field(default_factory=GraphMemory)
    fp16: OnnxRecord | None = None  # its fp16 twin; None with --no-fp16 or when no rung verified
    fp16_missed: list[str] | None = None  # why no fp16 rung verified, one line per rung
    tensorrt: list[EngineRecord] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> GraphRecord:
        fp32 = OnnxRecord.from_dict(data)
        return GraphRecord(
            **{
                name: getattr(fp32, name)
                for name in ("path", "sha256", "bytes", "precision", "float_weights", "tensorrt_onnx")
            },
            sizing=Sizing.from_dict(data["sizing"]),
            inputs=[TensorSpec.from_dict(v) for v in data["inputs"]],
            outputs=[TensorSpec.from_dict(v) for v in data["outputs"]],
            onnxruntime=OptimisedCopy.from_dict(data["onnxruntime"]),
            memory=GraphMemory.from_dict(data["memory"]),
            fp16=OnnxRecord.from_dict(data["fp16"]) if data.get("fp16") else None,
            fp16_missed=data.get("fp16_missed"),
            tensorrt=[EngineRecord.from_dict(e) for e in data.get("tensorrt", [])],
        )

    def as_dict(self) -> dict[str, Any]:
        graph = {
            **super().as_dict(),
            "resolution": list(self.sizing.size),  # the model resolution (the processor's square for keep-aspect)
            "sizing": self.sizing.as_dict(),
            "inputs": [v.as_dict() for v in self.inputs],
            "outputs": [v.as_dict() for v in self.outputs],
            "onnxruntime": self.onnxruntime.as_dict(),
            "memory": self.memory.as_dict(),
        }
        if self.fp16 is not None:
            graph["fp16"] = self.fp16.as_dict()
        if self.fp16_missed is not None:
            graph["fp16_missed"] = self.fp16_missed
        if self.tensorrt:
            graph["tensorrt"] = [e.as_dict() for e in self.tensorrt]
        return graph

    @property
    def onnx_files(self) -> list[OnnxRecord]:
        """Its ONNX graphs, the fp32 one (itself) first, then its fp16 twin if any."""
        return [self, self.fp16] if self.fp16 is not None else [self]

    @property
    def artefacts(self) -> list[FileRecord]:
        """Every file it lists but engines: each ONNX graph, its TensorRT variant, ONNX Runtime's optimised copy."""
        return [f for onnx in self.onnx_files for f in (onnx, onnx.tensorrt_onnx)] + [self.onnxruntime]

    @property
    def engine_sources(self) -> tuple[str, ...]:
        """SHA-256 of the TensorRT variants an engine of this graph may be built from, the fp16 one first."""
        return tuple(onnx.tensorrt_onnx.sha256 for onnx in reversed(self.onnx_files))


# ------------------------------------------------------------------------------------------- capabilities


@dataclass(kw_only=True)
class ModelRecord:
    """A model a capability's graph is made of, and where its weights came from."""

    role: str  # the capability, or "detector" (pose's person detector)
    name: str
    hf_id: str
    revision: str | None  # the resolved commit (hub), or None (demo, local)
    licence: str
    weights: str  # hub, local or demo
    path: str | None  # the local directory, for --model
    note: str
    parameters: int

    @classmethod
    def from_dict(cls, data: dict) -> ModelRecord:
        return ModelRecord(**{name: data[name] for name in _MODEL_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What ``/capabilities`` shows of it: everything but the build machine's path."""
        return {name: value for name, value in asdict(self).items() if name != "path"}


_MODEL_FIELDS = ("role", "name", "hf_id", "revision", "licence", "weights", "path", "note", "parameters")


@dataclass(kw_only=True)
class Verification:
    """How every graph of a capability compared with transformers at build time (builder.verify)."""

    reference: str
    backend: str
    tolerances: dict[str, dict[str, float]]  # fp32 / fp16 -> metric -> limit
    checks: list[dict[str, Any]]  # builder.verify.Check.as_dict() of every check, failures included

    @classmethod
    def from_dict(cls, data: dict) -> Verification:
        return Verification(
            reference=data["reference"],
            backend=data["backend"],
            tolerances=data["tolerances"],
            checks=list(data["checks"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """For ``/capabilities``: the reference, the backend and how many checks passed or were skipped."""
        return {
            "reference": self.reference,
            "backend": self.backend,
            "checks": len(self.checks),
            "passed": sum(1 for c in self.checks if c["ok"] and not c["skipped"]),
            "skipped": sum(1 for c in self.checks if c["skipped"]),
        }


@dataclass(kw_only=True)
class CapabilityEntry:
    """One capability as built: its graphs, models, bounds, options and verification."""

    capability: str
    graphs: list[GraphRecord]
    models: list[ModelRecord]
    demo: bool  # any of its models has demo (random) weights
    opset: int
    bounds: ShapeBounds
    options: dict[str, Any]  # the capability's own options, read by its class (vision_node.capabilities)
    verification: Verification

    @classmethod
    def from_dict(cls, data: dict) -> CapabilityEntry:
        return CapabilityEntry(
            capability=data["capability"],
            graphs=[GraphRecord.from_dict(g) for g in data["graphs"]],
            models=[ModelRecord.from_dict(m) for m in data["models"]],
            demo=bool(data["demo"]),
            opset=data["opset"],
            bounds=ShapeBounds.from_dict(data["bounds"]),
            options=dict(data["options"]),
            verification=Verification.from_dict(data["verification"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "capability": self.capability,
            "graphs": [g.as_dict() for g in self.graphs],
            "models": [m.as_dict() for m in self.models],
            "demo": self.demo,
            "opset": self.opset,
            "bounds": asdict(self.bounds),
            "options": self.options,
            "verification": self.verification.as_dict(),
        }


@dataclass(kw_only=True)
class Manifest:
    """The whole file. ``capabilities`` holds the entries read (``read``'s ``only``); ``listed`` names them all."""

    path: Path
    created: str
    command: str
    tools: dict[str, str]
    capabilities: dict[str, CapabilityEntry]
    listed: tuple[str, ...]
    failed: dict[str, str]  # capability -> why its build failed


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load(directory: Path) -> dict:
    """The manifest's JSON as written, once its schema version is checked: for tools and tests that edit the
    file as such. The build, the sync and the node read it typed (``read``)."""
    path = Path(directory) / MANIFEST_NAME
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ManifestError(
            f"{path}: manifest schema {found!r}, this version of vision-node reads schema {FORMAT}: "
            "it was written by another version of vision-node-build; rebuild it "
            f"(vision-node-build --out {path.parent})"
        )
    return data


def read(directory: Path, only: Collection[str] | None = None) -> Manifest:
    """The manifest, typed; ``only``: the capabilities whose entries are read (default: all), the others are
    only named in ``listed``. Raises ``ManifestError`` naming the file (and the capability at fault), or OSError."""
    path = Path(directory) / MANIFEST_NAME
    data = load(directory)
    try:
        entries = dict(data["capabilities"])
        failed = dict(data.get("failed", {}))
        head = {"created": data["created"], "command": data["command"], "tools": dict(data["tools"])}
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{path}: malformed ({err!r})") from None
    capabilities = {}
    for name in entries if only is None else [c for c in entries if c in only]:
        try:
            capabilities[name] = CapabilityEntry.from_dict(entries[name])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ManifestError(f"{path}: {name}: malformed entry ({err!r})") from None
    return Manifest(path=path, **head, capabilities=capabilities, listed=tuple(entries), failed=failed)


def write(
    directory: Path,
    capabilities: dict[str, CapabilityEntry],
    merge: bool = True,
    failed: dict[str, str] | None = None,
) -> Path:
    """Merge ``capabilities`` into the directory's manifest (others are kept unless ``merge`` is False)
    and write it atomically.

    ``failed`` names the capabilities whose build failed, with the reason: they leave
    ``capabilities`` (nothing stale is served in their name) and are listed under ``failed``.
    A capability built now clears its old failure. A manifest of another schema is not merged: it is replaced.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    previous: dict[str, dict] = {}
    previous_failed: dict[str, str] = {}
    if merge and path.exists():
        try:
            data = load(directory)
            previous, previous_failed = data.get("capabilities", {}), data.get("failed", {})
        except (ValueError, OSError):  # JSONDecodeError and ManifestError are ValueErrors
            pass
    failed = failed or {}
    written = {**previous, **{c: e.as_dict() for c, e in capabilities.items()}}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "tools": tool_versions(),
        "capabilities": {c: e for c, e in written.items() if c not in failed},
    }
    still_failed = {c: why for c, why in {**previous_failed, **failed}.items() if c not in capabilities}
    if still_failed:
        manifest["failed"] = still_failed
    # Derived, for whoever reads the file (never read back): what a GPU node needs, from the builder's figures.
    served = manifest["capabilities"]
    manifest["device_memory"] = device_memory.of(
        {c: [g["memory"] for g in entry["graphs"]] for c, entry in served.items()}
    ).as_dict()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path
