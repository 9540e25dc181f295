"""``python -m benchmarks``: latency reports for the node and its graphs.

engine     in-process latency per capability, frame size and batch, beside transformers (PyTorch eager)
http       load over HTTP: closed-loop concurrency sweep and/or open-loop fixed rates
gpu-check  on a GPU without TensorRT: CUDA buffers, copies and GPU JPEG decode with a stand-in engine
frame-cost what a frame costs outside the network: every stage, input and output over HTTP, and every encoder
overhead   node overhead = HTTP latency - in-process inference, raw and JPEG/PNG, beside the bare HTTP floor
coldstart  process start -> /ready and -> first successful inference, over several starts
pose-persons  pose's inference at 0, 1, 2, 4 and 8 persons served, beside the detector alone
overload   open-loop load at multiples of the measured capacity: accepted latency, 503s, memory
slow-clients  normal latency without and beside sockets that trickle a byte a second
soak       many mixed good and malformed requests: statuses and memory growth
stream     live streams (trickle, H.264): fps out, latency beside a relay's floor, drops, stages, CPU per map
cores      the host path against CPU cores (stand-in engine, wrk): frames/s, p50/p99, scaling, GIL-held time per request
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import (
    coldstart,
    combined,
    cores,
    engine,
    flicker,
    framecost,
    gpucheck,
    load,
    overhead,
    overload,
    parity,
    photographs,
    pose_persons,
    probes,
    slowclients,
    soak,
    stream,
)


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None
    return h, w


def _list(kind):
    return lambda text: [kind(part) for part in text.split(",") if part]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        allow_abbrev=False,
        description="Latency reports for the vision node. Each command prints a table and its progress; "
        "--json and --markdown also write the report with its provenance (machine, versions, command).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  vision-node-build --weights demo --tiny --out engines/tiny\n"
        "  python -m benchmarks engine --engines engines/tiny --sizes 512x512 --batches 1,2\n"
        "  python -m benchmarks http --engines engines/tiny --capability segmentation --concurrency 1,2,4,8\n"
        "  python -m benchmarks http --url http://127.0.0.1:8000 --capability depth --rate 5,10 --duration 20\n"
        "  python -m benchmarks overhead --engines engines/tiny\n"
        "  python -m benchmarks frame-cost --engines engines --sizes 720x1280,1080x1920\n"
        "  python -m benchmarks coldstart --engines engines --runs 5 --markdown coldstart.md\n"
        "  python -m benchmarks overload --engines engines/tiny --multiples 0.5,1,2,4\n"
        "  python -m benchmarks slow-clients --engines engines/tiny --sockets 200\n"
        "  python -m benchmarks soak --engines engines/tiny --requests 100000\n"
        "  python -m benchmarks cores --engines engines/real --cores 1,2 --concurrency 1,2,4,8,16,32",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub, engines_help="engines directory (default: engines)"):
        sub.add_argument("--engines", type=Path, default=Path("engines"), help=engines_help)
        sub.add_argument("--json", metavar="PATH", help="also write the report as JSON")
        sub.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")

    e = commands.add_parser("engine", help="in-process latency per graph, beside transformers eager")
    common(e)
    e.add_argument("--capabilities", type=_list(str), default=["depth", "segmentation", "pose"])
    e.add_argument("--sizes", type=_list(_hw), default=[(512, 512)], metavar="HxW,...", help="frame sizes")
    e.add_argument("--batches", type=_list(int), default=[1], metavar="N,...", help="batch sizes (default: 1)")
    e.add_argument(
        "--photographs",
        type=_list(str),
        metavar="NAME,...",
        help="scikit-image photographs as the frames, at their own sizes (instead of --sizes), "
        "e.g. " + ",".join(photographs.PHOTOGRAPHS),
    )
    e.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: 3)")
    e.add_argument("--iterations", type=int, help="exactly this many timed runs (default: until stable)")
    e.add_argument(
        "--max-seconds",
        type=float,
        default=8.0,
        help="time budget per row: give up on stability after this (default: 8)",
    )
    e.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip transformers eager")
    e.add_argument(
        "--interleaved",
        action="store_true",
        help="call the ONNX Runtime graph and transformers in turn on each frame (needs --iterations): "
        "drift on a noisy machine hits both alike",
    )
    e.add_argument(
        "--rotate-sizes",
        action="store_true",
        help="time every size in turn, round by round, and give each size's p50 over the first's "
        "(needs --iterations and --no-baseline; ONNX Runtime)",
    )
    e.add_argument(
        "--backends",
        type=_list(str),
        default=["onnxruntime"],
        metavar="NAME,...",
        help="onnxruntime, tensorrt and/or tensorrt-rtx (engines from vision-node-build --tensorrt / --tensorrt-rtx; "
        "default: onnxruntime)",
    )
    e.set_defaults(run=engine.run)

    h = commands.add_parser("http", help="closed-loop concurrency sweep and open-loop rates over HTTP")
    common(h, "engines directory of the node to start when no --url is given (default: engines)")
    h.add_argument("--url", help="a running node (default: start one from --engines)")
    h.add_argument("--capability", default="segmentation", choices=("depth", "segmentation", "pose"))
    h.add_argument("--output", help="output format path segment, e.g. raw (default: the capability's default)")
    h.add_argument("--input", default="raw", choices=("raw", "jpeg", "png"), help="frame encoding (default: raw)")
    h.add_argument("--size", type=_hw, default=(512, 512), metavar="HxW", help="frame size (default: 512x512)")
    h.add_argument(
        "--concurrency",
        type=_list(int),
        metavar="N,...",
        help="closed-loop client counts (default: 1,2,4,8,16, unless --rate is given)",
    )
    h.add_argument("--rate", type=_list(float), default=[], metavar="R,...", help="open-loop rates, requests/s")
    h.add_argument("--duration", type=float, default=10.0, help="seconds per level (default: 10)")
    h.add_argument("--queue-size", type=int, default=16, help="queue size of a node started here (default: 16)")
    h.set_defaults(run=load.run)

    o = commands.add_parser("overhead", help="HTTP latency minus in-process inference, raw and JPEG/PNG")
    common(o)
    o.add_argument("--capabilities", type=_list(str), default=["depth", "segmentation"])
    o.add_argument("--size", type=_hw, default=(512, 512), metavar="HxW", help="frame size (default: 512x512)")
    o.add_argument("--requests", type=int, default=300, help="timed requests per scenario (default: 300)")
    o.add_argument("--warmup", type=int, default=30, help="untimed requests first (default: 30)")
    o.set_defaults(run=overhead.run)

    fc = commands.add_parser("frame-cost", help="every stage of a frame outside the network, and every encoder tried")
    common(fc)
    fc.add_argument("--capabilities", type=_list(str), default=["depth", "segmentation", "pose"])
    fc.add_argument(
        "--sizes",
        type=_list(_hw),
        default=[(512, 512), (720, 1280), (1080, 1920)],
        metavar="HxW,...",
        help="frame sizes (default: 512x512,720x1280,1080x1920)",
    )
    fc.add_argument("--requests", type=int, default=5, help="timed requests per row (default: 5)")
    fc.add_argument("--warmup", type=int, default=1, help="untimed requests first (default: 1)")
    fc.add_argument("--repeats", type=int, default=21, help="runs of each encoder on each map (default: 21)")
    fc.add_argument("--url", help="measure a running node instead (e.g. an older build, side by side)")
    fc.add_argument(
        "--only",
        type=_list(str),
        metavar="OUTPUT,...",
        help="only these outputs (e.g. controlnet,palette,json: the defaults)",
    )
    fc.set_defaults(run=framecost.run)

    gc = commands.add_parser("gpu-check", help="on a GPU without TensorRT: buffers, copies, GPU JPEG decode")
    gpucheck.add_arguments(gc)
    gc.set_defaults(run=gpucheck.run)

    c = commands.add_parser("coldstart", help="process start -> ready -> first inference, several starts")
    common(c)
    c.add_argument("--runs", type=int, default=5, help="number of starts (default: 5)")
    c.add_argument("--size", type=_hw, default=(512, 512), metavar="HxW", help="first-inference frame size")
    c.set_defaults(run=coldstart.run)

    pp = commands.add_parser("pose-persons", help="pose at 0, 1, 2, 4 and 8 persons served, and the detector alone")
    pose_persons.add_arguments(pp)
    pp.set_defaults(run=pose_persons.run)

    ov = commands.add_parser("overload", help="open-loop load at multiples of capacity: latency, 503s, memory")
    common(ov)
    ov.add_argument("--capability", default="segmentation", choices=("depth", "segmentation", "pose"))
    ov.add_argument("--size", type=_hw, default=(256, 256), metavar="HxW", help="frame size (default: 256x256)")
    ov.add_argument(
        "--multiples",
        type=_list(float),
        default=[0.5, 1, 2, 4],
        metavar="M,...",
        help="load as multiples of the measured capacity (default: 0.5,1,2,4)",
    )
    ov.add_argument("--duration", type=float, default=10.0, help="seconds per level (default: 10)")
    ov.add_argument("--capacity-seconds", type=float, default=8.0, help="capacity measurement (default: 8 s)")
    ov.add_argument("--queue-size", type=int, default=4, help="the node's queue size (default: 4, as serve)")
    ov.add_argument(
        "--max-batch",
        type=_list(int),
        default=[1],
        metavar="N,...",
        help="one node per value, side by side (1,4: micro-batching off and on; default: 1)",
    )
    ov.set_defaults(run=overload.run)

    sc = commands.add_parser("slow-clients", help="normal latency without and beside trickling sockets")
    common(sc)
    sc.add_argument("--sockets", type=int, default=200, help="slow sockets kept open (default: 200)")
    sc.add_argument("--duration", type=float, default=15.0, help="seconds per phase (default: 15)")
    sc.add_argument("--size", type=_hw, default=(128, 128), metavar="HxW", help="normal frames (default: 128x128)")
    sc.add_argument("--receive-timeout", type=float, default=10.0, help="the node's receive deadline (default: 10 s)")
    sc.set_defaults(run=slowclients.run)

    so = commands.add_parser("soak", help="mixed good and malformed requests: statuses and memory growth")
    common(so)
    so.add_argument(
        "--requests",
        type=int,
        default=6000,
        help="requests in all (default: 6000, about a minute; the measured soak ran 100000)",
    )
    so.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    so.add_argument("--bad-share", type=float, default=0.5, help="share of malformed requests (default: 0.5)")
    so.add_argument("--samples", type=int, default=20, help="memory samples over the run (default: 20)")
    so.set_defaults(run=soak.run)

    pr = commands.add_parser("probes", help="what health polling costs the node: /ready and /health latency and CPU")
    common(pr)
    pr.add_argument("--paths", type=_list(str), default=["/ready", "/health"], metavar="PATH,...")
    pr.add_argument("--requests", type=int, default=2000, help="timed probes per path (default: 2000)")
    pr.add_argument("--warmup", type=int, default=50, help="untimed probes first (default: 50)")
    pr.set_defaults(run=probes.run)

    fl = commands.add_parser("flicker", help="depth on video clips: per-frame min-max, fixed range, smoothing")
    common(fl)
    fl.add_argument("--frames", type=int, default=30, help="frames per clip (default: 30)")
    fl.add_argument("--smooth", type=float, default=0.9, help="the smoothing weight tried (default: 0.9)")
    fl.add_argument("--noise", type=float, default=3.0, help="sensor noise sigma, 8-bit levels (default: 3)")
    fl.add_argument("--quality", type=int, default=85, help="JPEG re-encoding quality (default: 85)")
    fl.add_argument("--plot", metavar="PNG", help="also plot the change per frame")
    fl.set_defaults(run=flicker.run)

    cb = commands.add_parser("combined", help="several maps of one frame: one request against three")
    common(cb)
    cb.add_argument("--capabilities", type=_list(str), default=["depth", "pose", "segmentation"])
    cb.add_argument("--size", type=_hw, default=(360, 640), metavar="HxW", help="frame size (default: 360x640)")
    cb.add_argument("--requests", type=int, default=10, help="timed frames per scenario (default: 10)")
    cb.add_argument("--warmup", type=int, default=2, help="untimed frames first (default: 2)")
    cb.add_argument("--frames", type=int, default=4, help="distinct frames cycled through (default: 4)")
    cb.set_defaults(run=combined.run)
    pa = commands.add_parser("parity", help="photographs over HTTP beside transformers (same demo weights)")
    common(pa)
    pa.add_argument("--capabilities", type=_list(str), default=["depth", "segmentation", "pose"])
    pa.add_argument(
        "--photographs",
        type=_list(str),
        default=list(photographs.PHOTOGRAPHS),
        metavar="NAME,...",
        help="scikit-image photographs (default: all six)",
    )
    pa.add_argument(
        "--sizes",
        type=_list(_hw),
        default=[],
        metavar="HxW,...",
        help="also each photograph resized to these frame sizes, e.g. 720x1280,1080x1920",
    )
    pa.set_defaults(run=parity.run)
    st = commands.add_parser("stream", help="live streams: fps out, latency over a relay's floor, stages, CPU per map")
    common(st)
    stream.add_arguments(st)
    st.set_defaults(run=stream.run)
    co = commands.add_parser(
        "cores",
        help="the host path against CPU cores (stand-in engine, wrk): frames/s, "
        "scaling, GIL-held time per request (py-spy)",
    )
    cores.add_arguments(co)
    co.set_defaults(run=cores.run)
    pl = commands.add_parser("plot", help="draw committed reports again from their Markdown (a PNG beside each)")
    pl.add_argument("reports", type=Path, nargs="+", metavar="REPORT.md")
    pl.set_defaults(run=run_plot)
    for command in commands.choices.values():
        command.allow_abbrev = False  # a flag is spelled out or refused, never guessed
    return p


def run_plot(args) -> int:
    from . import plots

    for markdown in args.reports:
        png = plots.replot(markdown)
        print(f"{markdown}: " + (f"wrote {png}" if png else "nothing to plot in its table"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
