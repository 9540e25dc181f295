"""Frame cost: what the node spends on a frame outside the network, stage by stage, and the encoders it could use.

Two reports:

1. Over HTTP, against a node started here on ``--engines``: for each frame size, every capability and
   output with a JPEG q90 photograph in, and each capability's default output with PNG and raw frames in;
   one request at a time over a keep-alive connection. Per stage, from X-Metadata: read (body), decode,
   queue, infer, render, encode; http = the client's round trip - the node's own total (parsing, writing,
   loopback); host = round trip - infer. Medians and p99, bytes on the wire, and for raw in the bare
   Starlette floor (``benchmarks.echo``) moving the same bytes.
2. In process, every encoder tried, on the same 8-bit maps: the node's depth map of the photograph
   (demo weights make noise, the hardest case for a lossless encoder) and a smooth synthetic map like
   trained weights make; and the node's own render + encode of a smooth depth output.
"""

from __future__ import annotations

import http.client
import io
import json
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vision_node.capabilities.depth import Depth
from vision_node.media import maps, png

from . import nodeproc, report
from .overhead import echo_floor, post
from .report import progress
from .stats import summarise

STAGES = ("read", "decode", "queue", "infer", "render", "encode")
DEFAULT_OUTPUT = {"depth": "controlnet", "segmentation": "palette", "pose": "json"}
OUTPUTS = {
    "depth": ("controlnet", "png16", "jpeg", "raw8", "raw"),
    "segmentation": ("palette", "classes", "raw"),
    "pose": ("json", "skeleton", "jpeg"),
}
# Random weights score every box alike: a threshold of 0 keeps the pose outputs' persons, as a crowd would.
EXTRA = {"pose": {"person_threshold": "0"}}


def photograph(h: int, w: int) -> np.ndarray:
    """scikit-image's astronaut (a person, for pose), resized to h x w."""
    from skimage import data  # the bench extra; bundled, no download

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC))


def bodies(frame: np.ndarray) -> dict[str, tuple[bytes, str]]:
    h, w = frame.shape[:2]
    jpeg, lossless = io.BytesIO(), io.BytesIO()
    Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
    Image.fromarray(frame).save(lossless, format="PNG", compress_level=1)
    return {
        "jpeg": (jpeg.getvalue(), "image/jpeg"),
        "png": (lossless.getvalue(), "image/png"),
        "raw": (frame.tobytes(), f"application/octet-stream; width={w}; height={h}"),
    }


def cases(capabilities, sizes, only=None):
    """(size, capability, output, input) in the order measured; ``only``: these outputs alone."""
    for size in sizes:
        for capability in capabilities:
            for output in OUTPUTS[capability]:
                if not only or output in only:
                    yield size, capability, output, "jpeg"
            if not only or DEFAULT_OUTPUT[capability] in only:
                for kind in ("png", "raw"):
                    yield size, capability, DEFAULT_OUTPUT[capability], kind


def _content_type(base: str, capability: str) -> str:
    return base + "".join(f"; {k}={v}" for k, v in EXTRA.get(capability, {}).items())


def measure_http(args):
    """{case: [(round trip s, X-Metadata, response bytes)]}, request bytes per case, and the raw8 depth maps;
    against ``args.url``, or a node started here on ``args.engines``."""
    if args.url:
        host, _, port = args.url.removeprefix("http://").rstrip("/").partition(":")
        return _measure(host, int(port or 80), args)
    with tempfile.TemporaryDirectory() as tmp:
        node = nodeproc.spawn(args.engines, Path(tmp) / "node.log")
        try:
            progress(f"node ready in {nodeproc.wait_ready(node):.2f} s on port {node.port}")
            return _measure("127.0.0.1", node.port, args)
        finally:
            node.stop()


def _measure(host: str, port: int, args):
    results, sent, demo_maps = {}, {}, {}
    conn = http.client.HTTPConnection(host, port, timeout=120)
    payloads = {size: bodies(photograph(*size)) for size in args.sizes}
    for case in cases(args.capabilities, args.sizes, args.only):
        size, capability, output, kind = case
        body, content_type = payloads[size][kind]
        path, content_type = f"/infer/{capability}/{output}", _content_type(content_type, capability)
        progress(f"{size[0]}x{size[1]} {capability}/{output}, {kind} in: {args.warmup} + {args.requests} requests")
        for _ in range(args.warmup):
            post(conn, path, body, content_type)
        results[case] = [post(conn, path, body, content_type) for _ in range(args.requests)]
        sent[case] = len(body)
        if (capability, output, kind) == ("depth", "raw8", "jpeg"):
            demo_maps[size] = _raw8(conn, path, body, content_type)
    conn.close()
    return results, sent, demo_maps


def _raw8(conn, path: str, body: bytes, content_type: str) -> np.ndarray:
    conn.request("POST", path, body, {"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    h, w = json.loads(response.getheader("X-Metadata"))["shape"]
    return np.frombuffer(data, np.uint8).reshape(h, w)


def http_rows(results: dict, sent: dict, floors: dict) -> list[dict]:
    rows = []
    for case, got in results.items():
        (h, w), capability, output, kind = case
        trips = [s for s, _, _ in got]
        metas = [m for _, m, _ in got]
        # A node from before read and render were split out (``--url``) lacks them: NaN; its encode included render.
        stage = {k: summarise([m["timings_ms"].get(k, np.nan) / 1000 for m in metas]) for k in (*STAGES, "total")}
        host = summarise([t - m["timings_ms"]["infer"] / 1000 for t, m in zip(trips, metas)])
        wire = summarise([t - m["timings_ms"]["total"] / 1000 for t, m in zip(trips, metas)])
        row = {
            "frame": f"{h}x{w}",
            "capability": capability,
            "output": output,
            "in": kind,
            "in KiB": sent[case] / 1024,
            "out KiB": got[0][2] / 1024,
        }
        row.update({f"{k} p50 ms": stage[k]["p50"] for k in STAGES})
        rendered = [m["timings_ms"].get("render", 0) + m["timings_ms"]["encode"] for m in metas]
        row.update(
            {
                "render+encode p50 ms": float(np.median(rendered)),
                "http p50 ms": wire["p50"],
                "host p50 ms": host["p50"],
                "host p99 ms": host["p99"],
            }
        )
        floor = floors.get(case)
        row["echo floor p50 ms"] = floor["p50"] if floor else float("nan")
        row["over echo p50 ms"] = host["p50"] - floor["p50"] if floor else float("nan")
        rows.append(row)
    return rows


PLOTTED = ("read", "decode", "queue", "render", "encode", "http")


def plot_stages(rows: list[dict], path: Path, title: str) -> None:
    """Each row's host time as stacked stages (medians), so where a frame's milliseconds go reads at a glance."""
    import matplotlib  # the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['frame']} {r['capability']}/{r['output']} ({r['in']} in)" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
    left = np.zeros(len(rows))
    for stage in PLOTTED:
        key = f"{stage} p50 ms"
        widths = np.nan_to_num([r.get(key, np.nan) for r in rows])
        ax.barh(labels, widths, left=left, label=stage)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame outside the network (p50 of each stage; infer not shown)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- encoders on the same maps


def smooth_map(h: int, w: int) -> np.ndarray:
    """A smooth float depth like a trained model's: broad gradients and a few soft shapes, no noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (2.0 + 6.0 * y / h + 1.5 * np.sin(x / (w / 5.0)) * np.cos(y / (h / 3.0))).astype(np.float32)


def encoders() -> dict:
    """name -> encode(map8) -> bytes: every encoder tried, each on a uint8 [H, W] map."""
    import cv2  # the bench extra
    import deflate

    cv2.setNumThreads(1)

    def pillow(channels: int):
        def encode(m):
            out = io.BytesIO()
            image = Image.fromarray(m)
            (image.convert("RGB") if channels == 3 else image).save(out, format="PNG", compress_level=1)
            return out.getvalue()

        return encode

    return {
        "node: PNG grey palette (Up + ISA-L 1; controlnet)": lambda m: maps.png(m, 1, png.GREY_PALETTE),
        "node: PNG grey (Up + ISA-L 1; channels=1)": lambda m: maps.png(m, 1),
        "node: JPEG q90 grey (libjpeg-turbo; jpeg)": lambda m: maps.jpeg(m, 90),
        "node: raw8 (uncompressed)": lambda m: m.tobytes(),
        "Pillow PNG level 1, 3 channels (before)": pillow(3),
        "Pillow PNG level 1, 1 channel": pillow(1),
        "OpenCV PNG level 1, 1 channel": lambda m: cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1],
        "Up + zlib 1": lambda m: zlib.compress(png.up_filtered(m), 1),
        "Up + zlib 6": lambda m: zlib.compress(png.up_filtered(m), 6),
        "Up + libdeflate 1": lambda m: deflate.zlib_compress(png.up_filtered(m), 1),
        "Up + libdeflate 6": lambda m: deflate.zlib_compress(png.up_filtered(m), 6),
        "Up + stored (PNG level 0)": lambda m: maps.png(m, 0),
        "JPEG q95 grey (libjpeg-turbo)": lambda m: maps.jpeg(m, 95),
    }


def _timed(fn, repeats: int) -> tuple[dict, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return summarise(times), out


def encoder_rows(maps: dict, repeats: int) -> list[dict]:
    """maps: {(label, h, w): uint8 map}; rows of every encoder on each."""
    rows = []
    for (label, h, w), m in maps.items():
        for name, encode in encoders().items():
            stats, out = _timed(lambda e=encode, m=m: e(m), repeats)
            rows.append(
                {
                    "map": f"{label} {h}x{w}",
                    "encoder": name,
                    "p50 ms": stats["p50"],
                    "p99 ms": stats["p99"],
                    "KiB": len(out) / 1024,
                }
            )
    return rows


def node_render_rows(sizes, repeats: int) -> list[dict]:
    """The node's own render + encode of a smooth float depth, per depth output (what trained weights make)."""
    rows = []
    depth = Depth({})
    for h, w in sizes:
        d = smooth_map(h, w)
        outputs = {"depth": d[None], "depth_min": np.array([d.min()]), "depth_max": np.array([d.max()])}
        for output in ("controlnet", "jpeg", "raw8", "png16"):
            options = depth.parse_options({"output": output})
            render, rendered = _timed(partial(depth.render, outputs, options, (h, w)), repeats)
            encode, encoded = _timed(partial(depth.encode, rendered, options, 1), repeats)
            total, _ = _timed(partial(_render_and_encode, depth, outputs, options, (h, w)), repeats)
            rows.append(
                {
                    "map": f"smooth {h}x{w}",
                    "encoder": f"node: depth render + encode, output={output}",
                    "p50 ms": total["p50"],
                    "p99 ms": total["p99"],
                    "KiB": len(bytes(encoded.body)) / 1024,
                    "render p50 ms": render["p50"],
                    "encode p50 ms": encode["p50"],
                }
            )
    return rows


def _render_and_encode(depth: Depth, outputs: dict, options: dict, hw: tuple[int, int]):
    return depth.encode(depth.render(outputs, options, hw), options, 1)


# ---------------------------------------------------------------- the command


def run(args) -> int:
    sizes = args.sizes
    results, sent, demo_maps = measure_http(args)
    progress("HTTP floor: the raw-in cases' bytes through a bare Starlette echo on uvicorn")
    raw_cases = {
        case: (b"\0" * sent[case], "application/octet-stream", got[0][2])
        for case, got in results.items()
        if case[3] == "raw"
    }
    floors = echo_floor(raw_cases, max(args.requests, 30), args.warmup + 5)
    rows = http_rows(results, sent, floors)
    served = sorted({r[1] for r in results})
    notes = [
        f"{args.requests} timed requests per row after {args.warmup} warm-up, one at a time over a keep-alive"
        " loopback connection (http.client); the frame is scikit-image's astronaut resized, JPEG q90 unless 'in'"
        " says png (Pillow level 1) or raw (RGB bytes)",
        "stages from the node's X-Metadata (medians); http = round trip - the node's total; host = round trip -"
        " infer, i.e. everything but the network; render+encode is the per-request sum's median",
        "echo floor: the same request and response sizes through a bare Starlette app on uvicorn"
        " (benchmarks.echo), measured after the node, for the raw-in rows; over echo = host - that floor",
        "pose rows use person_threshold=0 (demo weights: every person slot is served)",
        f"capabilities: {', '.join(served)}; " + (f"node at {args.url}" if args.url else f"engines: {args.engines}"),
    ]
    prov = report.provenance({"engines": str(args.engines)})
    title = "Frame cost outside the network (over HTTP)"
    report.write({"provenance": prov, "rows": rows}, title, rows, notes, args.json, args.markdown)
    if args.markdown:  # the stages stacked, in place of the generic per-row percentile plot
        plot_stages(rows, Path(args.markdown).with_suffix(".png"), title)
    maps = {}
    video = [s for s in sizes if s[0] * s[1] >= 720 * 1280] or [max(sizes, key=lambda s: s[0] * s[1])]
    for h, w in video:
        if (h, w) in demo_maps:
            maps[("demo depth", h, w)] = demo_maps[(h, w)]
        depth = Depth({})
        d = smooth_map(h, w)
        outputs = {"depth": d[None], "depth_min": np.array([d.min()]), "depth_max": np.array([d.max()])}
        maps[("smooth", h, w)] = depth.render(outputs, depth.parse_options({"output": "raw8"}), (h, w)).payload
    progress(f"encoders: {len(encoders())} on {len(maps)} maps, {args.repeats} runs each")
    enc_rows = encoder_rows(maps, args.repeats) + node_render_rows(sorted({(h, w) for _, h, w in maps}), args.repeats)
    for row in enc_rows:
        row.setdefault("render p50 ms", float("nan"))
        row.setdefault("encode p50 ms", float("nan"))
    enc_notes = [
        f"median and p99 of {args.repeats} runs in this process, one thread; 'demo depth' is the node's 8-bit"
        " depth map of the photograph (random weights: noise), 'smooth' a synthetic map like a trained model's",
        "node rows are the node's own functions (vision_node.media.maps, vision_node.media.png, Depth.render/encode)",
    ]
    suffixed = {k: _suffixed(v) for k, v in (("json", args.json), ("markdown", args.markdown))}
    report.write(
        {"provenance": prov, "rows": enc_rows},
        "Encoders on the same 8-bit maps (in process)",
        enc_rows,
        enc_notes,
        suffixed["json"],
        suffixed["markdown"],
    )
    return 0


def _suffixed(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}-encoders{p.suffix}"))
