"""What ONNX Runtime's CPU memory modes cost per frame: keep the arena, shrink it after each run, or no arena.

One session per mode in one process, the modes taking turns frame by frame, so a noisy machine
slows them alike; wall and CPU time (user + system: page faults count) per frame, p50.

    python -m benchmarks.arena_modes --engines /tmp/eng/demo --capability segmentation \
        --sizes 512x512,720x1280,1080x1920 --reps 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

from vision_node import samples
from vision_node.contract import FRAME_INPUT
from vision_node.serving.engines import load

SHRINK = "memory.enable_memory_arena_shrinkage"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(prog="python -m benchmarks.arena_modes", description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--capability", default="segmentation")
    parser.add_argument("--sizes", default="512x512,720x1280,1080x1920")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    graph = load(args.engines, (args.capability,))[args.capability].graphs[0]

    def session(arena: bool):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        return ort.InferenceSession(str(graph.path), options, providers=["CPUExecutionProvider"])

    modes = {"keep": (session(True), False), "shrink": (session(True), True), "no arena": (session(False), False)}

    def run(sess, shrink: bool, frames) -> tuple[float, float]:
        options = ort.RunOptions()
        if shrink:
            options.add_run_config_entry(SHRINK, "cpu:0")
        binding = sess.io_binding()
        binding.bind_cpu_input(FRAME_INPUT, frames)
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cpu")
        wall, cpu = time.perf_counter(), _cpu_s()
        sess.run_with_iobinding(binding, options)
        return time.perf_counter() - wall, _cpu_s() - cpu

    print(f"{args.capability}: p50 of {args.reps} frames per mode (wall ms / CPU ms)")
    for text in args.sizes.split(","):
        h, w = map(int, text.split("x"))
        frames = samples.frames(h, w)
        for sess, shrink in modes.values():  # warm: each arena grows to this size once
            run(sess, shrink, frames)
        times: dict[str, list] = {mode: [] for mode in modes}
        for _ in range(args.reps):
            for mode, (sess, shrink) in modes.items():
                times[mode].append(run(sess, shrink, frames))
        p50 = {mode: [1000 * statistics.median(t[i] for t in ts) for i in (0, 1)] for mode, ts in times.items()}
        cells = [f"{mode} {wall:.0f} / {cpu:.0f}" for mode, (wall, cpu) in p50.items()]
        print(f"  {h}x{w}: " + ", ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
