"""Pose's cost per person served: the graph's inference at 0, 1, 2, 4 and 8 persons, beside the detector alone.

    python -m benchmarks pose-persons --engines engines/real --size 720x1280 [--runs 7] [--out benchmarks/results]

In process, ONNX Runtime on this CPU, scikit-image's astronaut resized. The keypoint model runs on the
boxes whose score reaches the frame's ``person_threshold``. Demo weights give all 8 boxes one score
(the sweep of thresholds 0.0..1.0 reports what each yields: 8 persons or none), so the benchmark times
a copy of the graph whose person scores are multiplied by a fixed ramp (1.00, 0.99, ... 0.93) after
the detector's TopK: the n-th best score then serves exactly n persons, and every other node is the
graph's own. The detector alone is that copy's head (``boxes``, ``box_scores``) cut out of it. Settings
are timed in turn, round after round, so that a noisy machine weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from vision_node.contract import FRAME_INPUT
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.serving import engines

from . import report
from .framecost import photograph

COUNTS = (0, 1, 2, 4, 8)
SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


def _ranked_copy(graph_path: Path, directory: str) -> Path:
    """The graph with its box scores multiplied by a descending ramp where they are made, so that they differ."""
    model = onnx.load(str(graph_path))
    at, maker = next((i, n) for i, n in enumerate(model.graph.node) if "box_scores" in n.output)
    slots = next(v for v in model.graph.output if v.name == "box_scores").type.tensor_type.shape.dim[1].dim_value
    maker.output[list(maker.output).index("box_scores")] = "box_scores_tied"
    ramp = onnx.numpy_helper.from_array((1.0 - 0.01 * np.arange(slots, dtype=np.float32))[None], "box_scores_ramp")
    model.graph.initializer.append(ramp)
    ramped = onnx.helper.make_node("Mul", ["box_scores_tied", "box_scores_ramp"], ["box_scores"])
    model.graph.node.insert(at + 1, ramped)
    path = Path(directory) / "ranked.onnx"
    onnx.save(model, str(path))
    return path


def _detector_alone(graph_path: Path, directory: str):
    """An ORT session on the graph's head only: frames and threshold in, boxes and their scores out."""
    head = Path(directory) / "head.onnx"
    onnx.utils.extract_model(str(graph_path), str(head), [FRAME_INPUT, "person_threshold"], ["boxes", "box_scores"])
    return _session(head)


def _session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _thresholds(scores: np.ndarray, slots: int) -> dict[str, float]:
    """A threshold serving each count in COUNTS (the n-th best score; above the best for none)."""
    settings = {}
    for n in COUNTS:
        if n <= slots:
            settings[f"{n} persons"] = float(scores[n - 1]) if n else float(min(1.0, np.nextafter(scores[0], 2)))
    return settings


def _parity(served, infer, frames, settings) -> list[str]:
    """Per count, the served keypoints against transformers' ViTPose on those boxes alone (same demo weights),
    and the values left in the slots past them (must be none)."""
    from vision_node.builder import reference  # the export extra: torch, transformers

    from .demo_models import demo_model

    pose = demo_model(next(m["name"] for m in served.models if m["role"] == "pose"))
    lines = []
    for name, threshold in settings.items():
        boxes, _, keypoints, keypoint_scores = infer(threshold)
        n = int(name.split()[0])
        stray = int(np.count_nonzero(keypoints[:, n:])) + int(np.count_nonzero(keypoint_scores[:, n:]))
        if n:
            want = reference.keypoints(pose.model, pose.processor, frames, boxes[:, :n])
            err = np.linalg.norm(keypoints[:, :n] - want["keypoints"], axis=-1)
            score_err = float(np.abs(keypoint_scores[:, :n] - want["keypoint_scores"]).max())
            lines.append(
                f"{name} against transformers: keypoint error median {np.median(err):.4f} px, max "
                f"{err.max():.4f} px, score error max {score_err:.2e}; values past them: {stray}"
            )
        else:
            lines.append(f"{name}: values in the keypoint outputs: {stray}")
    return lines


def run(args) -> int:
    h, w = args.size
    served = engines.load(args.engines, ("pose",))["pose"]
    graph = served.graphs[0]
    frames = photograph(h, w)[None]
    with tempfile.TemporaryDirectory() as tmp:
        with OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds) as backend:
            tied = backend.infer({FRAME_INPUT: frames})["box_scores"][0].copy()  # the default: every slot served
        sweep = [(t, int((tied >= t).sum())) for t in SWEEP]
        ranked_path = _ranked_copy(graph.path, tmp)
        ranked, detector = _session(ranked_path), _detector_alone(ranked_path, tmp)

        def infer(session, threshold: float):
            return session.run(None, {FRAME_INPUT: frames, "person_threshold": np.array([threshold], np.float32)})

        scores = infer(ranked, 0.0)[1][0]
        settings = _thresholds(scores, len(scores))
        parity = _parity(served, lambda t: infer(ranked, t), frames, settings) if args.parity else []
        calls = {"detector alone": lambda: infer(detector, 0.0)}
        calls.update({name: (lambda t=t: infer(ranked, t)) for name, t in settings.items()})
        times = {name: [] for name in calls}
        for call in calls.values():
            call()  # warm-up
        for _ in range(args.runs):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return _report(args, scores, settings, times, sweep, tied, parity)


def _report(args, scores, settings, times, sweep, tied, parity) -> int:
    detector = statistics.median(times["detector alone"])
    eight = statistics.median(times["8 persons"]) if "8 persons" in times else float("nan")
    rows = []
    for name, samples in times.items():
        p50 = statistics.median(samples)
        rows.append(
            {
                "setting": name,
                "person_threshold": f"{settings[name]:.4f}" if name in settings else "-",
                "p50_ms": p50 * 1000,
                "p90_ms": float(np.percentile(samples, 90)) * 1000,
                "x_detector": p50 / detector,
                "x_8_persons": p50 / eight,
            }
        )
    notes = [
        f"{args.size[0]}x{args.size[1]} frame, {args.runs} rounds; the timed copy's box scores (best first): "
        + ", ".join(f"{s:.4f}" for s in scores),
        "the graph as built (demo weights): box scores "
        + ", ".join(f"{s:.4f}" for s in tied)
        + "; persons served per person_threshold: "
        + ", ".join(f"{t:.1f}: {n}" for t, n in sweep),
    ]
    notes += parity
    prov = report.provenance({"engines": Path(args.engines).name})
    data = {"provenance": prov, "rows": rows, "sweep": [{"person_threshold": t, "persons": n} for t, n in sweep]}
    out = Path(args.out) if args.out else None
    stem = f"pose-persons-{args.size[0]}x{args.size[1]}"
    report.write(
        data,
        "Pose cost per person served (ONNX Runtime, this CPU)",
        rows,
        notes,
        out / f"{stem}.json" if out else None,
        out / f"{stem}.md" if out else None,
    )
    return 0


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default="engines", help="engines directory with a pose graph (default: engines)")
    parser.add_argument("--size", type=_size, default=(720, 1280), help="frame HxW (default: 720x1280)")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds over every setting (default: 7)")
    parser.add_argument("--out", help="directory for the JSON and Markdown reports (default: print only)")
    parser.add_argument(
        "--parity",
        action="store_true",
        help="also compare each count's keypoints with transformers (the export extra; demo weights)",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pose_persons", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
