"""Depth flicker on video: per-frame min-max against a fixed range and the stateless smoothing.

Two synthetic clips from real photographs (scikit-image's bundled data, no download):

- still: one photograph, every frame with fresh sensor noise (Gaussian) and JPEG re-encoding, as a
  camera on a tripod sends it;
- pan: a window sliding one pixel a frame across a wider photograph, with the same noise and JPEG.

Every frame runs through the depth graph once (the node's backend, in this process); the three
normalisations are then the node's own (``Depth.render``) on the same raw depth:

- per-frame: each frame's min..max (what the peers do);
- fixed: the first frame's range for every frame (``range=lo,hi``);
- smooth: ``smooth=S`` with the range sent back each frame, as a client echoing X-Metadata does.

Flicker = mean absolute change of the 8-bit map between consecutive frames (for the pan, after
undoing the known one-pixel shift): the network's own jitter plus what the normalisation adds.
Range flicker isolates the second: the first frame's depth mapped with each frame's range and with
the previous one's, so it measures only how the range moves (zero for a fixed range), whatever the
weights. Cost = the rendering step per frame (what differs between the methods); inference is the
same for all three and reported once.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vision_node.capabilities.depth import Depth
from vision_node.contract import FRAME_INPUT
from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
from vision_node.serving.engines import load

from . import report
from .report import progress

METHODS = ("per-frame", "fixed", "smooth")


def _degrade(image: np.ndarray, rng: np.random.Generator, noise: float, quality: int) -> np.ndarray:
    noisy = np.clip(image.astype(np.float32) + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))


def clips(frames: int, noise: float, quality: int, seed: int = 0) -> dict[str, tuple[list[np.ndarray], int]]:
    """name -> (frames, horizontal shift per frame in pixels)."""
    from skimage import data  # the bench extra

    rng = np.random.default_rng(seed)
    still = data.astronaut()  # 512x512
    wide = data.coffee()  # 400x600
    width = wide.shape[1] - frames
    return {
        "still": ([_degrade(still, rng, noise, quality) for _ in range(frames)], 0),
        "pan": ([_degrade(wide[:, i : i + width], rng, noise, quality) for i in range(frames)], 1),
    }


def _render(depth: Depth, outputs: dict, options: dict, hw) -> tuple[np.ndarray, list[float], float]:
    started = time.perf_counter()
    rendered = depth.render(outputs, {**Depth.defaults, **options}, hw)
    return rendered.payload, rendered.meta["depth_range"], time.perf_counter() - started


def flicker(maps: list[np.ndarray], shift: int) -> list[float]:
    """Mean absolute change between consecutive 8-bit maps; content moves left by ``shift`` px a frame."""
    changes = []
    for before, after in zip(maps, maps[1:]):
        a = before[:, shift:].astype(np.int16)
        b = after[:, : after.shape[1] - shift].astype(np.int16)
        changes.append(float(np.abs(b - a).mean()))
    return changes


def range_flicker(depth0: np.ndarray, ranges: list, depth: Depth) -> list[float]:
    """How much the ranges alone move an 8-bit map: ``depth0`` mapped with consecutive ranges."""
    maps = [depth._normalise(depth0, lo, hi, 255) for lo, hi in ranges]
    return flicker(maps, 0)


@dataclass
class _Clip:
    """One clip through depth: each method's maps, render seconds and ranges used; inference seconds."""

    maps: dict = field(default_factory=lambda: {m: [] for m in METHODS})
    cost: dict = field(default_factory=lambda: {m: [] for m in METHODS})
    ranges: dict = field(default_factory=lambda: {m: [] for m in METHODS})
    infer_s: list = field(default_factory=list)
    depth0: np.ndarray | None = None  # the first frame's relative depth


def run(args) -> int:
    served = load(args.engines, ("depth",))["depth"]
    graph = served.graphs[0]
    depth = Depth(served.options)
    rows, series = [], {}
    with OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds) as backend:
        for clip, (frames, shift) in clips(args.frames, args.noise, args.quality).items():
            progress(f"{clip}: {len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} through depth")
            measured = _through_depth(backend, depth, frames, args.smooth)
            rows += _rows(clip, measured, shift, depth, args.smooth, series)
    notes = [
        f"{args.frames} frames a clip; sensor noise sigma {args.noise:g} (8-bit levels), JPEG quality {args.quality}",
        "flicker: mean absolute difference of consecutive 8-bit depth maps (0-255), pan aligned by its 1 px shift",
        "vs per-frame: per-frame flicker divided by this method's (higher is steadier)",
        "range flicker: the same mean change, of the first frame's depth mapped with consecutive frames' ranges: "
        "what the normalisation alone adds (0 for a fixed range)",
        "render: normalisation to the 8-bit map, the only step that differs between the methods",
        f"weights: {served.weights}"
        + (
            " (demo: random weights; the network's response to noise is arbitrary, so read the ratios, not the levels)"
            if served.demo
            else ""
        ),
    ]
    prov = report.provenance({"engines": str(args.engines), "model": [m["name"] for m in served.models]})
    report.write(
        {"provenance": prov, "rows": rows, "series": {f"{c}/{m}": s for (c, m), s in series.items()}},
        "Depth flicker: per-frame min-max, fixed range, smoothing",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    if args.plot:
        _plot(series, args.plot, args.smooth)
        print(f"wrote {args.plot}")
    return 0


def _through_depth(backend, depth: Depth, frames: list[np.ndarray], smooth: float) -> _Clip:
    """Every frame inferred once and rendered by each method; smoothing carries its range from frame to frame."""
    measured, fixed, state = _Clip(), None, None
    for frame in frames:
        started = time.perf_counter()
        outputs = {k: v.copy() for k, v in backend.infer({FRAME_INPUT: frame[None]}).items()}
        measured.infer_s.append(time.perf_counter() - started)
        hw = frame.shape[:2]
        fixed = fixed or [float(outputs["depth_min"][0]), float(outputs["depth_max"][0])]
        measured.depth0 = outputs["depth"][0].copy() if measured.depth0 is None else measured.depth0
        for method, options in (
            ("per-frame", {}),
            ("fixed", {"range": fixed}),
            ("smooth", {"smooth": smooth, "range": state}),
        ):
            image, used, took = _render(depth, outputs, options, hw)
            measured.maps[method].append(image)
            measured.cost[method].append(took)
            measured.ranges[method].append(used)
            if method == "smooth":
                state = used  # what a client sends back as the next frame's range
    return measured


def _rows(clip: str, measured: _Clip, shift: int, depth: Depth, smooth: float, series: dict) -> list[dict]:
    """One row per method; each method's frame-to-frame changes go into ``series``."""
    rows, base = [], None
    for method in METHODS:
        changes = flicker(measured.maps[method], shift)
        series[(clip, method)] = changes
        mean = float(np.mean(changes))
        base = base or mean
        rows.append(
            {
                "clip": clip,
                "method": method if method != "smooth" else f"smooth {smooth:g}",
                "flicker mean": mean,
                "flicker p95": float(np.percentile(changes, 95)),
                "vs per-frame": base / mean if mean else float("inf"),
                "range flicker": float(np.mean(range_flicker(measured.depth0, measured.ranges[method], depth))),
                "render ms p50": float(np.median(measured.cost[method]) * 1000),
                "infer ms p50": float(np.median(measured.infer_s) * 1000),
            }
        )
    return rows


def _plot(series: dict, path: str, smooth: float) -> None:
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips_ = sorted({c for c, _ in series}, reverse=True)
    fig, axes = plt.subplots(1, len(clips_), figsize=(5 * len(clips_), 3.4), sharey=True)
    for ax, clip in zip(np.atleast_1d(axes), clips_):
        for method in METHODS:
            label = method if method != "smooth" else f"smooth {smooth:g}"
            ax.plot(range(1, len(series[(clip, method)]) + 1), series[(clip, method)], label=label)
        ax.set_title(f"{clip} clip")
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("mean |change| of the 8-bit map")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
