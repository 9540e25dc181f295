"""Command line of the build step: ``vision-node-build`` (the console script) and ``build_engines.py`` call ``main``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from .. import samples
from .errors import BuildError
from .specs import CAPABILITIES, DEFAULT_MODELS, SPECS, ShapeBounds, roles_for, spec_for
from .tensorrt import PRECISIONS

ROLES = (*CAPABILITIES, "detector")
OPEN_LICENCES = {"apache-2.0", "mit"}


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 518x518, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def _keyed(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key not in ROLES:
        raise argparse.ArgumentTypeError(f"unknown capability {key!r}; choose from {', '.join(ROLES)}")
    return key, value


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in targets if not t.replace(".", "", 1).isdigit() or "." not in t]
    if bad or not targets:
        raise argparse.ArgumentTypeError(f"expected compute capabilities like 8.6,8.9,12.0, got {text!r}")
    return targets


def _capabilities(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown capability {', '.join(unknown) or text!r}; choose from {', '.join(CAPABILITIES)}"
        )
    return names


def _model_list() -> str:
    lines = []
    for spec in SPECS.values():
        default = " (default)" if DEFAULT_MODELS.get(spec.capability) == spec.name else ""
        note = f" {spec.note}" if spec.note else ""
        lines.append(f"  {spec.capability}={spec.name}{default}: {spec.hf_id}, {spec.licence}.{note}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vision-node-build",
        allow_abbrev=False,  # --weight is not --weights: a flag is spelled out or refused
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export depth, segmentation and pose models to ONNX graphs with pre- and "
        "post-processing inside (uint8 frames in, finished maps out), verify every "
        "graph against transformers, and write engines/manifest.json.",
        epilog="models (--variant ROLE=NAME):\n" + _model_list() + "\n\nexamples:\n"
        "  vision-node-build --weights demo --out engines          # offline, random weights\n"
        "  vision-node-build --weights demo --tiny --out /tmp/tiny # seconds: tests and overhead benchmarks\n"
        "  vision-node-build --out engines                          # pinned Hugging Face weights\n"
        "  vision-node-build --model depth=./my-depth --capabilities depth\n"
        "  vision-node-build --resolution depth=518x518              # depth at a fixed 518x518 (constant cost)",
    )
    p.add_argument("--out", type=Path, default=Path("engines"), help="output directory (default: engines)")
    p.add_argument(
        "--capabilities",
        type=_capabilities,
        default=list(CAPABILITIES),
        help=f"comma-separated subset of {','.join(CAPABILITIES)} (default: all)",
    )
    p.add_argument(
        "--weights",
        choices=("hub", "demo"),
        default="hub",
        help="hub: Hugging Face at the pinned revision (uses the HF cache; HF_HUB_OFFLINE=1 "
        "for cache only). demo: the real architectures with seeded random weights, "
        "labelled as demo in the manifest (default: hub)",
    )
    p.add_argument(
        "--model",
        type=_keyed,
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="load ROLE (depth, segmentation, pose, detector) from a local save_pretrained directory",
    )
    p.add_argument(
        "--variant",
        type=_keyed,
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="pick another known model for ROLE (see the list below)",
    )
    p.add_argument(
        "--revision",
        type=_keyed,
        action="append",
        default=[],
        metavar="ROLE=REV",
        help="pin ROLE's Hugging Face weights to a commit (or tag); the manifest records the resolved commit",
    )
    p.add_argument(
        "--resolution",
        type=_keyed,
        action="append",
        default=[],
        metavar="CAP=HxW",
        help="a fixed model input resolution, for a constant cost per frame; repeat for several graphs "
        "per capability, the node picks the one nearest each frame's aspect ratio (pose: the detector's "
        "input). Default: the model's own processor, per frame: Depth Anything keeps the frame's aspect "
        "ratio (518 on the side nearer 518, multiples of 14), as pipeline('depth-estimation') does",
    )
    p.add_argument(
        "--patch-budget",
        type=float,
        default=2.0,
        metavar="FACTOR",
        help="keep-aspect graphs (depth): run the model at most at FACTOR times the patches of the processor's "
        "square (518x518: 1,369); a frame for which the processor would pick more (518x1920 would run at "
        "518x1918, 5,069 patches) runs at the largest size of its aspect ratio within the budget, and X-Metadata "
        "says so. 0: follow the processor at every frame (default: %(default)s)",
    )
    p.add_argument(
        "--min-size",
        type=_hw,
        default=ShapeBounds.min_hw,
        metavar="HxW",
        help="smallest frame accepted (default: 64x64)",
    )
    p.add_argument(
        "--max-size",
        type=_hw,
        default=ShapeBounds.max_hw,
        metavar="HxW",
        help="largest frame accepted (default: 1080x1920; 2160x3840 admits 4K, at about 4x segmentation's "
        "TensorRT activation memory: docs/building.md, 'Frame bounds and memory')",
    )
    p.add_argument("--max-batch", type=int, default=ShapeBounds.max_batch, help="largest batch (default: %(default)s)")
    p.add_argument("--max-persons", type=int, default=8, help="person slots in the pose output (default: %(default)s)")
    p.add_argument(
        "--class-chunk",
        type=int,
        default=8,
        help="segmentation classes upsampled at a time in the boundary cells with more than 8 candidate classes "
        "(up to 128 such cells a frame; more take the fallback, which scores all classes a block of cells at a "
        "time); peak memory there is 128×CHUNK×(a cell's pixels) floats (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for demo weights and sample frames")
    p.add_argument(
        "--no-fp16",
        dest="fp16",
        action="store_false",
        help="skip the fp16 graphs (the network body in half precision, verified like the fp32 ones) that "
        "TensorRT builds its fp16 engines from; ONNX Runtime serves the fp32 graphs either way",
    )
    trt = p.add_argument_group(
        "TensorRT engines",
        "Every engine is strongly typed: its precision is the graph's (the fp16 graph where one was exported). "
        "--tensorrt needs the trt extra and the NVIDIA GPU it builds for; --tensorrt-rtx and --compile-check need "
        "only the trt-rtx extra (TensorRT for RTX compiles ahead of time, no GPU).",
    )
    trt.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build an engine per graph for this GPU, kept only if it agrees with ONNX Runtime",
    )
    trt.add_argument(
        "--tensorrt-rtx",
        action="store_true",
        help="also build an ahead-of-time TensorRT for RTX engine per graph, for RTX 30/40/50 cards "
        "(serve with --backend tensorrt-rtx; check on the card with vision-node selftest --backend tensorrt-rtx)",
    )
    trt.add_argument(
        "--compile-check",
        action="store_true",
        help="compile every graph, fp32 and fp16, with TensorRT for RTX's builder on this machine and keep nothing: "
        "fails naming the node when TensorRT's parser or type rules refuse one",
    )
    trt.add_argument(
        "--tensorrt-only",
        action="store_true",
        help="no export: build engines (--tensorrt, the default, or --tensorrt-rtx) or --compile-check the graphs "
        "already in --out (e.g. at a container's first start)",
    )
    trt.add_argument(
        "--trt-precision",
        choices=PRECISIONS,
        default="auto",
        help="which graph engines are built from: auto takes the fp16 graph, and falls back to the fp32 graph "
        "when the engine misses the accuracy gate on this GPU (default: auto)",
    )
    trt.add_argument(
        "--rtx-targets",
        type=_targets,
        default=(),
        metavar="CC,...",
        help="compute capabilities TensorRT for RTX engines must run on, e.g. 8.6,8.9,12.0 (default: TensorRT for "
        "RTX's own set, Ampere and later; Turing needs 7.5 named)",
    )
    trt.add_argument(
        "--trt-workspace-gib",
        type=float,
        metavar="GIB",
        help="builder workspace limit (default: TensorRT's, the GPU's memory; segmentation at 4K needs over 4 GiB)",
    )
    trt.add_argument(
        "--trt-max-batch",
        type=int,
        default=1,
        help="largest batch in the engine profile; activation memory grows with it (default: 1, what the node sends)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny configurations of the same architectures with demo weights, built in seconds: "
        "for tests, CI and measuring the node's own overhead, never for serving maps",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def plan_from_args(args: argparse.Namespace):
    from .pipeline import BuildPlan  # imports torch; keep --help fast

    specs = {}
    for role, name in args.variant:
        spec = spec_for(name)
        if spec.capability != role:
            raise BuildError(f"--variant {role}={name}: {name} is a {spec.capability} model")
        specs[role] = spec
    for role, revision in args.revision:
        specs[role] = dataclasses.replace(specs.get(role) or spec_for(DEFAULT_MODELS[role]), revision=revision)
    resolutions: dict[str, list[tuple[int, int]]] = {}
    for cap, text in args.resolution:
        try:
            resolutions.setdefault(cap, []).append(_hw(text))
        except argparse.ArgumentTypeError as err:
            raise BuildError(f"--resolution {cap}={text}: {err}") from None
    verify_sizes: tuple[tuple[int, int], ...] = samples.VERIFY_SIZES  # the frames every graph is verified on
    if args.tiny:
        from .tiny import TINY_ROLES, TINY_VERIFY_SIZES

        if args.model or args.variant or args.weights != "demo":
            raise BuildError("--tiny builds its own demo models: use it with --weights demo, without --model/--variant")
        specs, verify_sizes = dict(TINY_ROLES), TINY_VERIFY_SIZES
    if args.patch_budget < 0 or 0 < args.patch_budget < 1:
        raise BuildError(f"--patch-budget {args.patch_budget}: 0 (no budget) or at least 1 (the square's patches)")
    if args.max_batch < 1 or args.max_persons < 1 or args.class_chunk < 1:
        raise BuildError("--max-batch, --max-persons and --class-chunk must be at least 1")
    bounds = ShapeBounds(
        min_hw=args.min_size,
        max_hw=args.max_size,
        max_batch=args.max_batch,
        opt_hw=(min(max(512, args.min_size[0]), args.max_size[0]), min(max(512, args.min_size[1]), args.max_size[1])),
    )
    if bounds.min_hw[0] > bounds.max_hw[0] or bounds.min_hw[1] > bounds.max_hw[1]:
        raise BuildError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    return BuildPlan(
        out=args.out,
        weights=args.weights,
        specs=specs,
        local=dict(args.model),
        resolutions=resolutions,
        bounds=bounds,
        max_persons=args.max_persons,
        class_chunk=args.class_chunk,
        seed=args.seed,
        fp16=args.fp16,
        patch_budget=args.patch_budget,
        verify_sizes=verify_sizes,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    log = logging.getLogger("build")
    start = time.perf_counter()
    if args.tensorrt_only:
        from .. import manifest

        try:
            listed = manifest.read(args.out, only=()).listed
        except (OSError, ValueError) as err:
            log.error("--tensorrt-only: no manifest to build engines for in %s (%s)", args.out, err)
            return 1
        if not (args.tensorrt_rtx or args.compile_check):
            args.tensorrt = True  # the container's first start: engines for this GPU
        return _engines(args, [c for c in args.capabilities if c in listed], log, start)
    try:
        plan = plan_from_args(args)
        from .. import manifest
        from . import pipeline

        for role in {role for cap in args.capabilities for role in roles_for(cap)}:
            spec = plan.specs.get(role) or spec_for(DEFAULT_MODELS[role])
            if spec.licence not in OPEN_LICENCES and role not in plan.local:
                log.warning("%s: %s is licensed %s. %s", role, spec.name, spec.licence, spec.note)
        if plan.weights == "demo" and len(plan.local) < len(ROLES):
            log.warning("DEMO weights: maps will look like noise; the manifest marks them as demo")
        entries, failures = pipeline.build(args.capabilities, plan)
        path = manifest.write(plan.out, entries, failed=failures)
    except BuildError as err:
        log.error("build failed: %s", err)
        return 1
    if entries:
        log.info("wrote %s (%s) in %.1f s", path, ", ".join(entries), time.perf_counter() - start)
    status = _engines(args, list(entries), log, start) if entries else 1
    if failures:
        log.error(
            "build failed for %s (recorded in %s; the others are built):\n%s",
            ", ".join(failures),
            path,
            "\n".join(f"  {c}: {why}" for c, why in failures.items()),
        )
        return 1
    return status


def _engines(args, capabilities: list[str], log, start: float) -> int:
    """What follows the export: the compile check, TensorRT for RTX engines, TensorRT engines, as asked."""
    from .. import manifest
    from ..errors import EngineError, StartupError
    from ..runtime.flavours import TENSORRT, TENSORRT_RTX
    from . import memory, tensorrt

    try:
        if args.compile_check:
            rows = tensorrt.compile_check(
                args.out, capabilities, max_batch=args.trt_max_batch, workspace_gib=args.trt_workspace_gib
            )
            log.info("compile check: %d graphs compiled by TensorRT for RTX:\n%s", len(rows), _compile_table(rows))
            memory.record_compile_check(args.out, rows, args.trt_workspace_gib, args.trt_max_batch)
        for wanted, flavour in ((args.tensorrt_rtx, TENSORRT_RTX), (args.tensorrt, TENSORRT)):
            if not wanted:
                continue
            entries = tensorrt.build_engines(
                args.out,
                capabilities,
                flavour=flavour,
                workspace_gib=args.trt_workspace_gib,
                max_batch=args.trt_max_batch,
                precision=args.trt_precision,
                targets=args.rtx_targets,
            )
            path = manifest.write(args.out, entries)
            log.info(
                "wrote %s with %s engines (%s) in %.1f s",
                path,
                flavour.module,
                ", ".join(entries),
                time.perf_counter() - start,
            )
    except (BuildError, StartupError, EngineError, FileNotFoundError) as err:
        log.error("TensorRT: %s", err)
        return 1
    return 0


def _compile_table(rows: list[dict]) -> str:
    head = f"  {'graph':<34} {'precision':<13} {'build s':>8} {'engine MB':>10}"
    lines = [f"{head} {'weights MB':>11} {'activation MB':>14}"]
    for r in rows:
        weights, scratch = (r["memory"].get(k, 0) / 1e6 for k in ("weights_bytes", "activation_bytes"))
        lines.append(
            f"  {r['graph']:<34} {r['precision']:<13} {r['seconds']:>8.1f} {r['bytes'] / 1e6:>10.1f} "
            f"{weights:>11.1f} {scratch:>14.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
