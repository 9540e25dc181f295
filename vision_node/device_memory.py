"""The node's device memory on a GPU, per capability and in total, from the TensorRT builder's figures.

The TensorRT backend opens one engine per graph and runs them one at a time under one lock, on one
activation scratch sized by the largest engine (``runtime.cuda``). So a capability served alone needs its
graphs' weights plus its largest activation, and the node needs every graph's weights plus the largest
activation of them all: capabilities that never run at once share it.

The figures are TensorRT for RTX's builder's (``builder.trt_memory``), recorded in each graph's
``memory.tensorrt_rtx`` by ``vision-node-build --compile-check``, for the rung an engine is built from by
default (the fp16 graph where one verified, else fp32), at the profile's largest shapes. They are the
builder's statement, not a measurement on a card; the node's own figures once its engines are open are
``/capabilities``' ``backend.memory_bytes`` and ``node.shared_scratch_bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SOURCE = "tensorrt_rtx"  # manifest.TENSORRT_RTX: the figures' key in a graph's memory


def default_rung(figures: Mapping[str, Any]) -> str | None:
    """The rung a default engine is built from, among those with figures: the fp16 twin's, else fp32."""
    reduced = [rung for rung in figures if rung != "fp32"]
    return reduced[0] if reduced else ("fp32" if "fp32" in figures else None)


@dataclass(frozen=True)
class Need:
    """One capability alone: its graphs' weights and its largest activation, at its bounds."""

    weights_bytes: int
    activation_bytes: int
    precision: str
    max_hw: tuple[int, int]
    max_batch: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "activation_bytes": self.activation_bytes,
            "total_bytes": self.total_bytes,
            "precision": self.precision,
            "max_hw": list(self.max_hw),
            "max_batch": self.max_batch,
        }


@dataclass(frozen=True)
class DeviceMemory:
    """Every capability's need, and the node's: all the weights plus one activation scratch, the largest."""

    capabilities: dict[str, Need]
    missing: tuple[str, ...]  # capabilities with a graph that has no figures (no --compile-check yet)

    @property
    def shared_activation_bytes(self) -> int:
        return max((n.activation_bytes for n in self.capabilities.values()), default=0)

    @property
    def total_bytes(self) -> int | None:
        """The node's need with every capability; None while one has no figures."""
        if self.missing or not self.capabilities:
            return None
        return sum(n.weights_bytes for n in self.capabilities.values()) + self.shared_activation_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": SOURCE,
            "capabilities": {name: need.as_dict() for name, need in self.capabilities.items()},
            "shared_activation_bytes": self.shared_activation_bytes,
            "total_bytes": self.total_bytes,
            "missing": list(self.missing),
        }

    def summary(self) -> str:
        """One line for the log, e.g. (the demo build with fp16 graphs) "GPU memory 559 MB (depth 68, segmentation
        294, pose 473 MB alone; TensorRT for RTX's figures, fp16, frames up to 1x1080x1920)"."""
        return self.told() or "GPU memory: no TensorRT figures in the manifest (vision-node-build --compile-check)"

    def told(self) -> str:
        """The line registrations carry; empty without figures (a registration then says nothing of memory)."""
        if not self.capabilities:
            return ""
        needs = self.capabilities.values()
        alone = ", ".join(f"{name} {need.total_bytes / 1e6:.0f}" for name, need in self.capabilities.items())
        precisions = "/".join(sorted({n.precision for n in needs}))
        (h, w), batch = max(n.max_hw for n in needs), max(n.max_batch for n in needs)
        total = self.total_bytes
        head = f"GPU memory {total / 1e6:.0f} MB" if total is not None else "GPU memory"
        return f"{head} ({alone} MB alone; TensorRT for RTX's figures, {precisions}, frames up to {batch}x{h}x{w})"


def _default_figures(memory: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """A graph's (rung, figures) for its default engine, or None where ``--compile-check`` recorded none."""
    figures = memory.get(SOURCE) or {}
    rung = default_rung(figures)
    return (rung, figures[rung]) if rung is not None and "activation_bytes" in figures[rung] else None


def of(graph_memory: Mapping[str, Sequence[Mapping[str, Any]]]) -> DeviceMemory:
    """The device memory of capabilities, from each one's graphs' ``memory`` (the manifest's JSON form)."""
    needs, missing = {}, []
    for capability, memories in graph_memory.items():
        found = [_default_figures(memory) for memory in memories]
        chosen = [f for f in found if f is not None]
        if not chosen or len(chosen) < len(found):
            missing.append(capability)
            continue
        needs[capability] = Need(
            weights_bytes=sum(int(f["weights_bytes"]) for _, f in chosen),
            activation_bytes=max(int(f["activation_bytes"]) for _, f in chosen),
            precision="/".join(sorted({rung for rung, _ in chosen})),
            max_hw=max((int(f["max_hw"][0]), int(f["max_hw"][1])) for _, f in chosen),
            max_batch=max(int(f["max_batch"]) for _, f in chosen),
        )
    return DeviceMemory(capabilities=needs, missing=tuple(missing))
