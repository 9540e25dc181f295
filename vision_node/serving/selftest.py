"""``vision-node selftest``: prove the TensorRT (or TensorRT for RTX) engines on this GPU, as an operator runs it.

Every engine of the engines directory and ONNX Runtime (fp32) run the same sample frames; the
agreement table uses the build's fp16 tolerances. Then per capability: GPU time of one frame
(CUDA events: copy in, compute, copy out; p50 and p99) and the VRAM the node holds. Exit 0 when
everything agrees, 1 on any disagreement, 2 when TensorRT or a GPU is missing.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import samples
from ..contract import FRAME_INPUT
from ..errors import EngineError, StartupError
from ..runtime.flavours import flavour
from ..runtime.onnxruntime import OnnxRuntimeBackend
from ..runtime.tensorrt import TensorRTBackend, gpu_runtime
from .engines import load


def run(engines_dir, capabilities=(), iterations: int = 200, backend: str = "tensorrt") -> int:
    from ..builder import verify  # torch-free: the build's comparison and tolerances

    try:
        rt = gpu_runtime(flavour(backend), engines_dir)
        served = load(engines_dir, tuple(capabilities))
    except StartupError as err:
        print(f"selftest: {err}", file=sys.stderr)
        return 2
    gpu, scratch = rt.gpu, rt.scratch
    print(f"GPU: {gpu['name']} (sm{gpu['compute_capability']}), {rt.flavour.module} {rt.trt.__version__}\n")
    checks, timing, memory = [], [], {}
    try:
        for name, entry in served.items():
            for graph in entry.graphs:
                with (
                    TensorRTBackend.for_graph(graph, entry.bounds, rt) as engine,
                    OnnxRuntimeBackend(graph.path, graph.outputs, entry.bounds) as reference,
                ):
                    checks += verify.agreement(name, engine, reference, entry.bounds, verify.FP16_TOLERANCES)
                    frames = samples.frames(*entry.bounds.opt_hw)
                    stages = []
                    for _ in range(iterations):
                        engine.infer({FRAME_INPUT: frames})
                        stages.append(engine.stages_ms)
                    timing.append((name, engine.plan.name, entry.bounds.opt_hw, stages))
                    memory[graph.path.name] = engine.memory()
    except (StartupError, EngineError) as err:
        print(f"selftest: {err}", file=sys.stderr)
        return 1
    print(verify.table(checks), "\n")
    print("GPU time per frame, ms (CUDA events), p50 / p99:")
    for name, file, (h, w), stages in timing:
        row = {k: np.percentile([s[k] for s in stages], [50, 99]) for k in ("copy_in", "compute", "copy_out")}
        total = np.percentile([sum(s.values()) for s in stages], [50, 99])
        parts = ", ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in row.items())
        print(f"  {name} {file} @ {h}x{w}: {parts}; total {total[0]:.3f} / {total[1]:.3f}")
    print("\nVRAM held by the node (bytes):")
    for file, held in memory.items():
        print(
            f"  {file}: buffers {held['device_buffers']:,}, weights ~{held['device_weights_approx']:,}, "
            f"activations needed {held['scratch_need']:,}"
        )
    device_total = sum(m["device_buffers"] + m["device_weights_approx"] for m in memory.values()) + scratch.size
    print(f"  shared activation scratch: {scratch.size:,}; total ~{device_total:,}")
    failed = [c for c in checks if not c.ok]
    print(f"\n{'FAILED' if failed else 'OK'}: {len(checks) - len(failed)} of {len(checks)} checks agree")
    return 1 if failed else 0
