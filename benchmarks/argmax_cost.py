"""What segmentation's upsampled argmax costs in ONNX Runtime on this CPU, against another revision's.

The argmax alone (``vision_node.builder.argmax.upsampled_argmax``) on 150 x 128 x 128 logits, exported as the
segmentation recipe exports it and written as its ONNX Runtime copy (the recipe's ``onnxruntime_passes``), at
512x512, 720p and 1080p, on three kinds of scores: large regions (what photographs give: every boundary cell
fits the tiers), smoother scores where some cells overflow them, and random scores (every cell overflows).
With ``--against DIR`` (a checkout of another revision, e.g. ``git worktree add /tmp/old e0f1f43``) that
checkout's argmax is exported by its own code and both are called in turn, round by round, on the same
scores; the classes must agree.

    python -m benchmarks.argmax_cost --against /tmp/old [--rounds 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = ((512, 512), (720, 1280), (1080, 1920))
LOGITS = (1, 150, 128, 128)

# Run inside a checkout (its own modules): export its argmax alone, write its ONNX Runtime copy as its recipe does.
_EXPORT = """
import sys, warnings
from pathlib import Path
import torch
sys.path.insert(0, ".")
from vision_node.builder import argmax, ort_optimised
from vision_node.builder.recipes import recipe_for

class Op(torch.nn.Module):
    def forward(self, frames, logits):
        return (argmax.upsampled_argmax(logits, frames.shape[1:3], 8).float().to(torch.uint8),)

raw, copy, LOGITS = Path(sys.argv[1]), Path(sys.argv[2]), tuple(map(int, sys.argv[3].split(",")))
with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")
    torch.onnx.export(Op(), (torch.zeros(1, 480, 640, 3, dtype=torch.uint8), torch.randn(*LOGITS)), str(raw),
        dynamo=False, opset_version=17, input_names=["frames", "logits"], output_names=["classes"],
        dynamic_axes={"frames": {1: "h", 2: "w"}})
ort_optimised.write(raw, copy, recipe_for("segmentation").onnxruntime_passes)
"""


def export(checkout: Path, out: Path) -> Path:
    copy = out / "argmax.ort.onnx"
    command = [sys.executable, "-c", _EXPORT, str(out / "argmax.onnx"), str(copy), ",".join(map(str, LOGITS))]
    subprocess.run(command, cwd=checkout, check=True)
    return copy


def scores() -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)

    def smooth(cells: int, scale: float) -> np.ndarray:
        coarse = torch.randn(1, LOGITS[1], cells, cells, generator=g) * scale
        up = F.interpolate(coarse, size=LOGITS[2:], mode="bicubic", align_corners=False)
        return (up + 0.05 * torch.randn(*LOGITS, generator=g)).numpy()

    return {"regions": smooth(6, 8.0), "smoother": smooth(21, 4.0), "random": torch.randn(*LOGITS, generator=g).numpy()}


def left_out(logits: np.ndarray) -> int:
    """Cells this checkout's tiers cannot hold (at 1080p)."""
    import torch

    from vision_node.builder import argmax

    cells = argmax._tiered_cells(torch.from_numpy(logits), SIZES[-1], 8)
    return int((cells.left_out > 0).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.argmax_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--against", type=Path, help="a checkout of another revision, timed beside this one")
    p.add_argument("--rounds", type=int, default=11, help="timed calls of each graph per row (default: 11)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime's intra-op threads (default: 2)")
    args = p.parse_args(argv)
    import onnxruntime as ort

    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"this": here, **({"other": args.against.resolve()} if args.against else {})}
        sessions = {}
        for name, checkout in checkouts.items():
            out = Path(tmp) / name
            out.mkdir()
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            sessions[name] = ort.InferenceSession(
                str(export(checkout, out)), options, providers=["CPUExecutionProvider"]
            )
        print(f"argmax alone on {LOGITS[1:]} logits, ONNX Runtime {ort.__version__}, {args.rounds} rounds, p50 ms")
        for kind, logits in scores().items():
            print(f"{kind}: {left_out(logits)} of {129 * 129} cells overflow this checkout's tiers", flush=True)
            for h, w in SIZES:
                feeds = {"frames": np.zeros((1, h, w, 3), np.uint8), "logits": logits}
                outs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}
                times: dict[str, list[float]] = {name: [] for name in sessions}
                for r in range(args.rounds):  # in turn, the order alternating: drift hits both alike
                    for name in list(sessions)[:: 1 if r % 2 == 0 else -1]:
                        started = time.perf_counter()
                        sessions[name].run(None, feeds)
                        times[name].append(time.perf_counter() - started)
                p50 = {name: statistics.median(t) * 1e3 for name, t in times.items()}
                row = f"  {h}x{w}: this {p50['this']:8.1f}"
                if "other" in p50:
                    same = float((outs["this"] == outs["other"]).mean())
                    row += (
                        f"   other {p50['other']:8.1f}   this/other {p50['this'] / p50['other']:.2f}   same {same:.6f}"
                    )
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
