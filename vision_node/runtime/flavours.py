"""TensorRT and TensorRT for RTX: one API shape, and every difference between them named here.

Both build strongly typed networks from the same ONNX graphs (the precision is the graph's: see
``vision_node.builder.precision``) and run them with the same execution-context calls. They differ in:

- the module and the extra that installs it (``tensorrt``: the trt extra; ``tensorrt_rtx``: trt-rtx);
- where an engine is built and what it is bound to. TensorRT autotunes on the GPU it will run on:
  its engine belongs to that GPU model and TensorRT version, and building needs that GPU. TensorRT
  for RTX compiles ahead of time on any machine, no GPU needed, for a set of compute capabilities;
  the engine is specialised just in time on the card at its first run;
- the caches: TensorRT keeps a timing cache at build time; TensorRT for RTX's timing cache is a
  deprecated no-op, and it keeps a runtime cache of the kernels it compiled just in time instead,
  which the node stores in the engines directory so that later starts skip that compilation;
- how a context is made: TensorRT takes the allocation strategy; TensorRT for RTX takes a runtime
  configuration that carries the strategy and the runtime cache.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StartupError
from .cuda import gpu_tag

log = logging.getLogger("vision_node")


@dataclass(frozen=True)
class Flavour:
    backend: str  # --backend value, and "runtime" in the manifest's engine records
    module: str
    extra: str  # the pyproject extras that install it with pycuda
    tag: str  # in engine file names
    builds_without_gpu: bool  # ahead-of-time build on any machine
    timing_cache: bool  # a build-time timing cache worth keeping

    def load(self):
        """The TensorRT module, or a StartupError that says what to install."""
        try:
            return importlib.import_module(self.module)
        except ImportError as err:
            raise StartupError(
                f"the {self.backend} backend is unavailable ({err}): install the {self.extra} extra (pip install -e "
                f"'.[{self.extra}]') on a machine with an NVIDIA GPU, or serve with --backend onnxruntime"
            ) from None

    @staticmethod
    def network_flags(trt) -> int:
        """Strongly typed: a flag in TensorRT 10, the only mode (flag kept, ignored) in TensorRT 11 and for RTX."""
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def set_targets(self, trt, config, targets: tuple[str, ...]) -> None:
        """TensorRT for RTX: the compute capabilities the engine must run on (empty: its default set)."""
        if not targets:
            return
        if not self.builds_without_gpu:
            raise ValueError("compute capability targets are a TensorRT for RTX option")
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            value = getattr(trt.ComputeCapability, "SM" + target.replace(".", ""), None)
            if value is None or not config.set_compute_capability(value, index):
                known = [n[2:] for n in dir(trt.ComputeCapability) if n.startswith("SM")]
                raise ValueError(f"compute capability {target} is not a TensorRT for RTX target (known: {known})")

    def execution_context(self, trt, engine, runtime_cache: RuntimeCache | None):
        """An execution context whose activation memory the caller provides (the node's shared scratch)."""
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        if self is not TENSORRT_RTX:
            return engine.create_execution_context(strategy)
        config = engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(strategy)
        if runtime_cache is not None:
            runtime_cache.attach(config)
        return engine.create_execution_context(config)


TENSORRT = Flavour("tensorrt", "tensorrt", "trt", "trt", builds_without_gpu=False, timing_cache=True)
TENSORRT_RTX = Flavour(
    "tensorrt-rtx", "tensorrt_rtx", "trt-rtx,cuda", "rtx", builds_without_gpu=True, timing_cache=False
)
FLAVOURS = {f.backend: f for f in (TENSORRT, TENSORRT_RTX)}


def flavour(backend: str) -> Flavour:
    try:
        return FLAVOURS[backend]
    except KeyError:
        raise ValueError(f"{backend!r} is not a TensorRT backend (known: {', '.join(FLAVOURS)})") from None


class RuntimeCache:
    """TensorRT for RTX's just-in-time kernels for this GPU, in one file of the engines directory.

    One cache serves every engine of the node. It is loaded before the first context is made and
    written back after warm-up and at shutdown, so the second start compiles nothing. A cache
    from another GPU, driver or TensorRT for RTX version is refused by TensorRT and rebuilt.
    """

    def __init__(self, directory: Path, gpu: dict, version: str):
        tag = gpu_tag(gpu["name"], gpu["compute_capability"])
        self.path = Path(directory) / f"runtime-cache.{tag}.{TENSORRT_RTX.tag}{version}.bin"
        self.cache: Any = None  # the IRuntimeCache, once attached (TensorRT for RTX is imported at run time: untyped)

    def attach(self, config) -> None:
        if self.cache is None:
            self.cache = config.create_runtime_cache()
            if self.path.is_file() and not self.cache.deserialize(self.path.read_bytes()):
                log.warning("%s: not usable on this GPU/driver; kernels are compiled again", self.path.name)
        config.set_runtime_cache(self.cache)

    def save(self) -> None:
        """Write the cache (atomically); a read-only engines directory only costs the next start its JIT time."""
        if self.cache is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(memoryview(self.cache.serialize()))
            tmp.replace(self.path)
        except OSError as err:
            log.warning("runtime cache not saved to %s: %s", self.path, err)
