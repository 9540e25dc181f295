"""Memory per graph at the bounds it was built for: weights and activation scratch, known at build time.

Two sources, each labelled in the manifest (``graph["memory"]``):

- ``tensorrt_rtx``: what TensorRT for RTX's builder says an engine needs on the device at the
  profile's largest shapes (``trt_memory``), recorded by ``--compile-check`` for the fp32 and fp16
  graphs; no GPU needed. A figure for the profile, not a measurement on a card.
- ``onnxruntime_cpu``: a proxy measured at every build. A fresh process opens the graph as the node
  does (``OnnxRuntimeBackend``: output buffers for the largest frame), resets its peak RSS, runs the
  costliest frames the bounds admit one at a time (``costliest_frames``), and reports the growth of
  its peak RSS over its RSS once open: the memory ONNX Runtime's arena takes for them. Weights are
  the graph's initializers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .. import manifest
from ..contract import ShapeBounds
from ..manifest import TensorSpec
from ..sizing import Sizing
from .errors import BuildError

PROXY = manifest.ONNXRUNTIME_CPU
PROXY_METHOD = (
    "peak RSS growth of a fresh process running the costliest admitted frames (batch 1) on ONNX Runtime's CPU "
    "provider, over its RSS with the graph open; a proxy for a GPU's activation scratch"
)
TRT_METHOD = "TensorRT for RTX's builder log at the profile's largest shapes (no GPU: not measured on a card)"


def costliest_frames(sizing: Sizing, bounds: ShapeBounds) -> list[tuple[int, int]]:
    """The largest frame, and where a patch budget applies, the frames it caps (the model's largest inputs)."""
    max_h, max_w = bounds.max_hw
    return [(max_h, max_w), *sizing.budget_examples(bounds.max_hw)]


def weights_bytes(path: Path) -> int:
    """Bytes of the graph's initializers (its weights and constant tables)."""
    import onnx  # build-time dependency

    from .passes.graph import tensor_bytes

    model = onnx.load(str(path))
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def measure_proxy(path: Path, outputs: list[TensorSpec], bounds: ShapeBounds, frames: list[tuple[int, int]]) -> dict:
    """``onnxruntime_cpu`` for one graph, measured in a fresh process (``python -m vision_node.builder.memory``)."""
    request = {
        "path": str(path),
        "outputs": [o.as_dict() for o in outputs],
        "bounds": bounds.__dict__,
        "frames": frames,
    }
    done = subprocess.run(
        [sys.executable, "-m", "vision_node.builder.memory"], input=json.dumps(request), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BuildError(f"{path.name}: measuring its memory failed: {done.stderr.strip().splitlines()[-1:]}")
    measured = json.loads(done.stdout)
    return {
        "weights_bytes": weights_bytes(path),
        "activation_bytes": measured["activation_bytes"],
        "frames": [list(hw) for hw in frames],
        "batch": 1,
        "method": PROXY_METHOD,
    }


def record_compile_check(directory: Path, rows: list[dict], workspace_gib: float | None, max_batch: int) -> None:
    """Put ``compile_check``'s figures in the manifest: ``graph.memory.tensorrt_rtx[precision]``."""
    data = manifest.read(directory)
    found = {(r["capability"], r["graph"]): r for r in rows}
    for capability, entry in data.capabilities.items():
        for graph in entry.graphs:
            for file in graph.onnx_files:
                row = found.get((capability, file.tensorrt_onnx.path))
                if row and row["memory"]:
                    figures = {
                        **row["memory"],
                        "max_hw": list(entry.bounds.max_hw),
                        "max_batch": max_batch,
                        "workspace_gib": workspace_gib,
                        "method": TRT_METHOD,
                    }
                    graph.memory.tensorrt_rtx[row["precision"]] = figures
    manifest.write(directory, data.capabilities)


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _child() -> None:
    """Open the graph as the node does, reset the peak RSS, run the frames, print the growth (JSON)."""
    import numpy as np

    from ..runtime.onnxruntime import OnnxRuntimeBackend

    request = json.loads(sys.stdin.read())
    bounds = ShapeBounds.from_dict(request["bounds"])
    outputs = tuple(request["outputs"])
    with OnnxRuntimeBackend(Path(request["path"]), outputs, bounds, device="cpu", keep_arena_pixels=1 << 40) as b:
        opened = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        rng = np.random.default_rng(0)
        for h, w in request["frames"]:  # noise: segmentation's work follows class boundaries, noise has most
            b.infer({"frames": rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)})
        peak = _rss("VmHWM")
    print(json.dumps({"opened_bytes": opened, "peak_bytes": peak, "activation_bytes": max(0, peak - opened)}))


if __name__ == "__main__":
    _child()
