"""Compare a graph's outputs with the transformers reference: collect every check, then judge.

``compare`` is backend-agnostic (it takes two dicts of arrays), so the TensorRT accuracy gate
uses the same function with ONNX Runtime as the reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import BuildError
from .specs import OUTPUTS

# Limits for ONNX Runtime (fp32) against transformers on CPU. The graph resizes exactly as Pillow does
# (``pil_resize``: same coefficients, rounding and pass order), so what differs is float32 rounding in
# the models, and class ties it moves. The limits are set from the worst case measured on the tiny test
# models, which are far more sensitive to that than trained ones; the table shows the margin.
TOLERANCES = {
    "depth": {"max_rel_err": 5e-2, "mean_rel_err": 5e-3},  # |Δ| / depth range of the frame
    "segmentation": {"pixel_agreement": 0.98},  # fraction of identical class ids
    "pose": {
        "box_err_px": 1.0,
        "box_score_err": 2e-3,
        "keypoint_err_median_px": 0.1,
        "keypoints_within_1px": 0.9,
        "keypoint_score_err": 5e-3,
    },
}
# TensorRT fp16 against ONNX Runtime fp32 (the engine accuracy gate and the self-test). Looser
# where fp16 rounding moves values (scores, sub-pixel keypoints); set before any GPU measured
# them, so the self-test prints every value beside its limit for operators to report.
FP16_TOLERANCES = {
    "depth": {"max_rel_err": 5e-2, "mean_rel_err": 1e-2},
    "segmentation": {"pixel_agreement": 0.98},
    "pose": {
        "box_err_px": 2.0,
        "box_score_err": 1e-2,
        "keypoint_err_median_px": 0.5,
        "keypoints_within_1px": 0.8,
        "keypoint_score_err": 2e-2,
    },
}
_HIGHER_IS_BETTER = {"pixel_agreement", "keypoints_within_1px"}


@dataclass
class Check:
    capability: str
    frames: str  # e.g. "2x360x640"
    metric: str
    value: float
    limit: float
    detail: str = ""
    skipped: bool = False  # not comparable, with the reason in ``detail``; never hides a failure
    graph: str = ""  # the graph file checked, where more than one is

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        if not np.isfinite(self.value):
            return False
        return self.value >= self.limit if self.metric in _HIGHER_IS_BETTER else self.value <= self.limit

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class VerificationError(BuildError):
    def __init__(self, failed: list[Check], headline: str = "verification failed"):
        self.failed = failed
        lines = [
            f"{c.graph or c.capability} {c.frames}: {c.metric} = {c.value:.4g} (limit {c.limit:g}) {c.detail}".rstrip()
            for c in failed
        ]
        super().__init__(f"{headline}:\n  " + "\n  ".join(lines))


def _shape_checks(capability, frames, got, want) -> list[Check]:
    checks = []
    for name in OUTPUTS[capability]:
        expected, actual = want.get(name), got.get(name)
        if expected is None:
            continue
        if actual is None or actual.shape != expected.shape:
            shape = None if actual is None else actual.shape
            checks.append(
                Check(capability, frames, f"shape {name}", float("nan"), 0.0, f"got {shape}, expected {expected.shape}")
            )
    return checks


def _finite(capability, frames, got) -> list[Check]:
    bad = [name for name, value in got.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
    return [Check(capability, frames, f"finite {name}", float("nan"), 0.0, "NaN or Inf in output") for name in bad]


def _depth(frames, got, want) -> list[Check]:
    span = (np.ptp(want["depth"].reshape(len(want["depth"]), -1), axis=1) + 1e-12)[:, None, None]
    err = np.abs(got["depth"] - want["depth"]) / span
    ends = max(np.abs(got[k] - want[k]).max() / span.min() for k in ("depth_min", "depth_max"))
    limits = TOLERANCES["depth"]
    return [
        Check("depth", frames, "max_rel_err", float(max(err.max(), ends)), limits["max_rel_err"]),
        Check("depth", frames, "mean_rel_err", float(err.mean()), limits["mean_rel_err"]),
    ]


def _segmentation(frames, got, want) -> list[Check]:
    agreement = float((got["classes"] == want["classes"]).mean())
    return [Check("segmentation", frames, "pixel_agreement", agreement, TOLERANCES["segmentation"]["pixel_agreement"])]


def _pose(frames, got, want) -> list[Check]:
    limits = TOLERANCES["pose"]
    checks = []
    if "boxes" in want and want.get("tied_queries", np.zeros(1, bool)).any():
        reason = "reference detector picks its queries among tied scores (random weights)"
        checks += [
            Check("pose", frames, metric, float("nan"), limits[metric], reason, skipped=True)
            for metric in ("box_err_px", "box_score_err")
        ]
    elif "boxes" in want:
        # Scores are compared sorted and boxes by nearest match, so two near-tied persons that
        # swap places between backends are not reported as a detection error.
        box_err, score_err = 0.0, 0.0
        for got_boxes, got_scores, ref_boxes, ref_scores in zip(
            got["boxes"], got["box_scores"], want["boxes"], want["box_scores"]
        ):
            n = min(len(got_boxes), len(ref_boxes))
            if n == 0:
                continue
            score_err = max(score_err, float(np.abs(np.sort(got_scores)[::-1][:n] - ref_scores[:n]).max()))
            dist = np.abs(got_boxes[:n, None, :] - ref_boxes[None, :n, :]).max(-1)
            box_err = max(box_err, float(dist.min(axis=1).max()))
        checks += [
            Check("pose", frames, "box_err_px", box_err, limits["box_err_px"]),
            Check("pose", frames, "box_score_err", score_err, limits["box_score_err"]),
        ]
    if "keypoints" in want:
        # Median and share within 1 px, with the max in the detail: DARK refinement divides by the
        # heatmap's local Hessian, and where that is near-singular (flat heatmaps of random
        # weights) float noise moves a keypoint by pixels; a real error moves all of them.
        err = np.linalg.norm(got["keypoints"] - want["keypoints"], axis=-1)
        checks += [
            Check(
                "pose",
                frames,
                "keypoint_err_median_px",
                float(np.median(err)),
                limits["keypoint_err_median_px"],
                f"max {err.max():.3g} px",
            ),
            Check("pose", frames, "keypoints_within_1px", float((err <= 1.0).mean()), limits["keypoints_within_1px"]),
            Check(
                "pose",
                frames,
                "keypoint_score_err",
                float(np.abs(got["keypoint_scores"] - want["keypoint_scores"]).max()),
                limits["keypoint_score_err"],
            ),
        ]
    return checks


_METRICS = {"depth": _depth, "segmentation": _segmentation, "pose": _pose}


def compare(
    capability: str,
    frames: str,
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    tolerances=None,
    graph: str = "",
) -> list[Check]:
    """Every check for one batch of frames; shape and NaN/Inf problems stop the numeric ones."""
    checks = _shape_checks(capability, frames, got, want) + _finite(capability, frames, got)
    if not checks:
        checks = _METRICS[capability](frames, got, want)
        limits = (tolerances or TOLERANCES)[capability]
        for check in checks:
            check.limit = limits.get(check.metric, check.limit)
    for check in checks:
        check.graph = graph
    return checks


def table(checks: list[Check]) -> str:
    """A plain-text table of every check, failures marked."""
    rows = [("graph", "capability", "frames", "metric", "value", "limit", "")]
    rows += [
        (
            c.graph or "-",
            c.capability,
            c.frames,
            c.metric,
            f"{c.value:.4g}",
            f"{c.limit:g}",
            ("skipped: " if c.skipped else "ok " if c.ok else "FAIL ") + c.detail,
        )
        for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def judge(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError(failed)


def agreement(capability: str, engine, reference, bounds, tolerances=None) -> list[Check]:
    """Run the sample frames (those the bounds admit) through two backends and compare them."""
    from .. import samples
    from ..contract import FRAME_INPUT

    checks = []
    for i, (h, w) in enumerate(samples.VERIFY_SIZES):
        if not (bounds.min_hw[0] <= h <= bounds.max_hw[0] and bounds.min_hw[1] <= w <= bounds.max_hw[1]):
            continue
        frames = samples.frames(h, w, seed=i)
        got = {k: v.copy() for k, v in engine.infer({FRAME_INPUT: frames}).items()}
        want = reference.infer({FRAME_INPUT: frames})
        checks += compare(capability, f"1x{h}x{w}", got, want, tolerances)
    return checks
