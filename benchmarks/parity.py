"""Parity over HTTP on photographs: the node's answer beside transformers' for the same weights and frame.

Each of scikit-image's bundled photographs (no download) goes to a node process as a raw RGB frame;
its result is compared with what transformers makes of the same frame with the same weights: the
model's own image processor with its defaults, the model, the processor's post-processing at frame
size (for depth exactly what ``pipeline("depth-estimation")`` returns). The metrics are the build's
verification metrics, plus depth's correlation. Demo weights only: the reference is rebuilt from the
seed the manifest names.
"""

from __future__ import annotations

import http.client
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

from vision_node.contract import FRAME_INPUT
from vision_node.serving.engines import load
from vision_node.sizing import Sizing

from . import nodeproc, report
from .demo_models import demo_model
from .photographs import photograph
from .report import progress

ROUTES = {"depth": "/infer/depth/raw", "segmentation": "/infer/segmentation/raw", "pose": "/infer/pose"}
OPTIONS = {"depth": "", "segmentation": "", "pose": "; person_threshold=0"}


def as_graph_outputs(capability: str, body: bytes, meta: dict) -> dict[str, np.ndarray]:
    """An HTTP answer in the graph's output layout, so that the build's checks apply unchanged."""
    if capability == "depth":
        h, w = meta["shape"]
        lo, hi = meta["depth_range"]
        depth = np.frombuffer(body, "<f4").reshape(1, h, w)
        return {"depth": depth, "depth_min": np.array([lo], np.float32), "depth_max": np.array([hi], np.float32)}
    if capability == "segmentation":
        return {"classes": np.frombuffer(body, np.uint8).reshape(1, *meta["shape"])}
    people = json.loads(body)["people"]
    return {
        "boxes": np.array([[p["box"] for p in people]], np.float32),
        "box_scores": np.array([[p["score"] for p in people]], np.float32),
        "keypoints": np.array([[np.array(p["keypoints"])[:, :2] for p in people]], np.float32),
        "keypoint_scores": np.array([[np.array(p["keypoints"])[:, 2] for p in people]], np.float32),
    }


def post(port: int, capability: str, frame: np.ndarray) -> tuple[bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        media = f"application/octet-stream; width={frame.shape[1]}; height={frame.shape[0]}{OPTIONS[capability]}"
        conn.request("POST", ROUTES[capability], frame.tobytes(), {"Content-Type": media})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{capability}: {response.status} {body[:300]!r}")
        return body, json.loads(response.getheader("X-Metadata"))
    finally:
        conn.close()


def _exact_boxes(opened: dict, stack: ExitStack, served, graph, frame: np.ndarray) -> np.ndarray:
    """The boxes the pose graph used, unrounded: the JSON gives them to 0.01 px, and ViTPose on
    random demo weights has heatmaps flat enough for that to move a keypoint. Same graph, same
    frame, in this process; each graph is opened once (``opened``, closed with ``stack``)."""
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend

    if graph not in opened:
        opened[graph] = stack.enter_context(OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds))
    return opened[graph].infer({FRAME_INPUT: frame[None]})["boxes"].copy()


def run(args) -> int:
    served = load(args.engines, tuple(args.capabilities))
    models = {c: {m["role"]: demo_model(m["name"]) for m in s.models} for c, s in served.items()}
    rows, pose_backends = [], {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log", capabilities=",".join(args.capabilities))
        try:
            progress(f"started a node on port {node.port}: ready in {nodeproc.wait_ready(node, timeout=600):.2f} s")
            for name, frame in _frames(args.photographs, args.sizes):
                for capability in args.capabilities:
                    body, meta = post(node.port, capability, frame)
                    got = as_graph_outputs(capability, body, meta)
                    graph = served[capability].graph_for(*frame.shape[:2])
                    used = got
                    if capability == "pose":
                        used = {**got, "boxes": _exact_boxes(pose_backends, stack, served["pose"], graph, frame)}
                    rows.append(_compared(name, frame, capability, meta, got, used, models[capability]))
                    progress(", ".join(f"{k} {v}" for k, v in rows[-1].items()))
        finally:
            node.stop()
    columns = list(dict.fromkeys(c for row in rows for c in row))  # capabilities have their own metrics
    rows = [{c: row.get(c, "") for c in columns} for row in rows]
    notes = [
        "frames: scikit-image's bundled photographs (at their own size, and resized to each --sizes), sent as "
        "raw RGB; the reference: transformers with the "
        "model's own processor defaults and post-processing, same demo weights",
        "pose keypoints are judged on the node's own boxes, unrounded (the reference runs ViTPose on them), as in "
        "the build; "
        "box metrics are left out where RT-DETR's random demo weights tie its query selection (see the build)",
    ]
    report.write(
        {"provenance": report.provenance({"engines": str(args.engines)}), "rows": rows},
        "Parity over HTTP on photographs, against transformers",
        rows,
        notes,
        args.json,
        args.markdown,
    )
    return 0 if all(r["within tolerances"] == "yes" for r in rows) else 1


def _frames(names, sizes):
    """(name, frame) for each photograph at its own size, then resized to each of ``sizes`` (Pillow's
    Lanczos, as a camera or a video scaler would deliver it; the aspect ratio follows the size)."""
    for name in names:
        photo = photograph(name)
        yield name, photo
        for h, w in sizes or ():
            yield name, np.asarray(Image.fromarray(photo).resize((w, h), Image.LANCZOS))


def _compared(name: str, frame: np.ndarray, capability: str, meta: dict, got: dict, used: dict, models) -> dict:
    """One row: the node's answer ``got`` beside transformers' on the same frame (``used``: what the
    reference's post-processing takes from the node, pose's exact boxes)."""
    from vision_node.builder import pipeline, verify  # torch and transformers: the export extra

    # transformers with the processor's own defaults, whatever the graph's sizing: for a
    # fixed-resolution graph this shows what the fixed size costs in fidelity.
    processor = models["detector" if capability == "pose" else capability].processor
    want = pipeline.reference_outputs(capability, models, frame[None], Sizing.of_processor(processor), used)
    checks = verify.compare(capability, name, got, want)
    row = {
        "photograph": name,
        "frame": f"{frame.shape[0]}x{frame.shape[1]}",
        "capability": capability,
        "model resolution": "x".join(map(str, meta["graph_resolution"])),
        "mode": meta["resolution_mode"],
    }
    if capability == "depth":
        row["correlation"] = f"{np.corrcoef(got['depth'].ravel(), want['depth'].ravel())[0, 1]:.7f}"
    row.update({c.metric: f"{c.value:.4g}" for c in checks if not c.skipped})
    row["within tolerances"] = "yes" if all(c.ok for c in checks) else "NO"
    return row
