"""How soon a running ONNX Runtime frame stops after ``StopToken.stop()``: asked at several points into the run.

ONNX Runtime checks ``RunOptions.terminate`` between nodes, so the wait is what is left of the node
running at that moment; then one ordinary frame shows the session serves on.

    python -m benchmarks.stop_latency --engines /tmp/eng/demo --after 0.5,1,1.5,2,2.5,3 \
        segmentation:2160x3840 depth:518x3840 pose:2160x3840
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from vision_node import samples
from vision_node.contract import FRAME_INPUT
from vision_node.runtime.base import RunStopped, StopToken
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.serving.engines import load


def stop_after(backend: OnnxRuntimeBackend, frames, seconds: float) -> float | None:
    """Milliseconds from ``stop()`` to ``RunStopped``; None when the frame finished first."""
    stop, asked = StopToken(), []
    threading.Timer(seconds, lambda: (asked.append(time.perf_counter()), stop.stop())).start()
    try:
        backend.infer({FRAME_INPUT: frames}, stop)
    except RunStopped:
        return 1000 * (time.perf_counter() - asked[0])
    return None  # the timer fires later on a finished call's token: it reaches nothing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stop_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--after", default="0.5,1,1.5,2,2.5,3", help="seconds into the run at which to stop it")
    parser.add_argument("frames", nargs="+", help="CAPABILITY:HxW")
    args = parser.parse_args(argv)
    for spec in args.frames:
        capability, size = spec.split(":")
        h, w = map(int, size.split("x"))
        entry = load(args.engines, (capability,))[capability]
        graph = entry.graph_for(h, w)
        with OnnxRuntimeBackend(graph.path, graph.outputs, entry.bounds) as backend:
            backend.infer({FRAME_INPUT: samples.frames(*entry.bounds.min_hw)})
            cells = []
            for seconds in (float(s) for s in args.after.split(",")):
                ms = stop_after(backend, samples.frames(h, w), seconds)
                cells.append(f"{seconds:g} s: " + (f"{ms:.0f} ms" if ms is not None else "finished first"))
            started = time.perf_counter()
            backend.infer({FRAME_INPUT: samples.frames(512, 512)})
            cells.append(f"then 512x512 in {1000 * (time.perf_counter() - started):.0f} ms")
        print(f"{capability} {h}x{w}: " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
