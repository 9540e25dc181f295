"""The GPU check: what of the node's GPU path a machine with an NVIDIA GPU but no TensorRT can prove, in one command.

    python -m benchmarks.gpucheck --download .whl          # on a machine with PyPI: the wheels to carry (~31 MB)
    python -m benchmarks.gpucheck --wheels .whl --out OUT  # on the GPU machine (no network needed): the report

(``python -m benchmarks gpu-check`` is the same where the node's own dependencies are installed; this module
imports none of them before it has installed what it needs.)

It installs what is missing from the carried wheels into a temporary folder (pycuda from its sdist, built
there against the machine's CUDA; nvImageCodec with nvJPEG; simplejpeg and isal), then:

1. runs ``tests/test_cuda_device.py``: the TensorRT backend's buffers, stream, copies and fault
   classification on real CUDA, with a STAND-IN kernel in place of the engine (not TensorRT);
2. times the backend's copies at 720p and 1080p (``benchmarks.cuda_copies``);
3. decodes JPEG photographs-like frames with nvImageCodec straight into the backend's input buffer
   (``--gpu-decode``'s path, ``TensorRTBackend.infer_jpeg``) and compares the pixels the stand-in engine
   saw with libjpeg-turbo's CPU decode, and times both paths at 720p and 1080p;
4. runs ``benchmarks.cores`` on the machine's cores (the node with the stand-in engine pinned to 1, 2, 4, 8
   and 16 cores, driven by wrk; the GIL-held time per request with py-spy): ``cores.md``, ``.json`` and
   ``.png`` beside the rest. wrk comes from PATH or from the Debian packages ``--download`` carries, py-spy
   from its carried wheel; it uses the stand-in manifest committed in ``benchmarks/standin_manifest.json``
   (no engines needed). ``--no-cores`` skips it, ``--only-cores`` runs it alone (no GPU needed). It is a
   measurement: its failure is reported, not the check's exit status.

Without a GPU it stops at once (exit 2) saying so. It writes ``gpu-check.md`` and ``gpu-check.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the GPU machine may lack, for CPython 3.12 on x86-64 Linux (the lent machine's).
WHEELS = (
    "pytools",
    "platformdirs",
    "mako",
    "markupsafe",
    "siphash24",
    "simplejpeg",
    "isal",
    "nvidia-nvimgcodec-cu13",
    "nvidia-nvjpeg",
    "py-spy",
)
WRK_DEBS = ("wrk", "libluajit-5.1-2", "libluajit-5.1-common")  # Debian's wrk, for benchmarks.cores
# The cores run on the GPU machine (16 cores): about 4 minutes.
CORES_ARGS = (
    "--cores",
    "1,2,4,8,16",
    "--concurrency",
    "1,4,16,32",
    "--duration",
    "2",
    "--cases",
    "depth/controlnet,depth/jpeg,segmentation/palette",
    "--profile-cases",
    "depth/controlnet,depth/jpeg,segmentation/palette",
    "--profile-cores",
    "1,8",
    "--profile-concurrency",
    "1,16",
    "--profile-seconds",
    "3",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SIZES = ((720, 1280), (1080, 1920))
TOLERANCE = {"max": 8, "mean": 0.5}  # nvJPEG's IDCT is not libjpeg-turbo's: a few levels on few pixels


def progress(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check, from the driver itself (no package needed), or None."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"no NVIDIA driver here (libcuda.so.1: {err})"
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return "the NVIDIA driver found no usable GPU (cuInit/cuDeviceGetCount failed)"
    return None if count.value > 0 else "the NVIDIA driver sees no GPU"


def download(folder: Path) -> int:
    """The wheels the check carries to a machine without network (run where PyPI is reachable)."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder)]
    subprocess.run([*pip, "--no-binary=pycuda", "pycuda==2026.1"], check=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [*pip, "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platforms, *WHEELS],
        check=True,
    )
    if shutil.which("apt-get"):  # wrk for the cores run, where the GPU machine has none
        done = subprocess.run(["apt-get", "download", *WRK_DEBS], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            progress(f"apt-get download {' '.join(WRK_DEBS)} failed: {done.stderr.strip()[-300:]}")
    else:
        progress("no apt-get here: the GPU machine's cores run needs its own wrk")
    size = sum(f.stat().st_size for f in folder.iterdir())
    progress(f"{folder}: {len(list(folder.iterdir()))} files, {size / 2**20:.1f} MiB (a device run carries 64 MiB)")
    return 0


def install(folder: Path | None, target: Path) -> None:
    """Install the carried wheels that this Python cannot import yet into ``target``, and put it on the path."""
    missing = [m for m in ("pycuda", "nvidia.nvimgcodec", "simplejpeg", "isal") if not _importable(m)]
    if not missing:
        return
    if folder is None or not folder.is_dir():
        raise SystemExit(f"gpu-check: {', '.join(missing)} missing and no --wheels folder: run --download first")
    files = sorted(str(f) for f in folder.iterdir() if f.suffix in (".whl", ".gz"))
    progress(f"installing {len(files)} carried files into {target} (pycuda builds from source: about a minute)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            *files,
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), os.environ.get("PYTHONPATH", "")])


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def device_tests() -> dict:
    progress("tests/test_cuda_device.py (real CUDA, STAND-IN engine)")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda_device.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return {"exit": done.returncode, "summary": tail, "output": done.stdout[-4000:]}


def decode_check(frames: int) -> dict:
    """nvImageCodec into the backend's input buffer against libjpeg-turbo on the CPU, same JPEGs, same backend."""
    import numpy as np
    import simplejpeg

    from vision_node import samples
    from vision_node.contract import FRAME_INPUT
    from vision_node.runtime.cuda import SharedScratch, gpu_identity, load_pycuda
    from vision_node.runtime.gpu_decode import GpuJpegDecoder

    from .cuda_copies import compile_kernel, open_backend

    cuda, context = load_pycuda()
    context.push()
    rows = []
    try:
        gpu = gpu_identity(cuda)
        scratch = SharedScratch(cuda, context)
        with tempfile.TemporaryDirectory() as tmp, GpuJpegDecoder() as decoder:
            backend = open_backend(cuda, scratch, compile_kernel(), tmp)
            try:
                for h, w in SIZES:
                    data = simplejpeg.encode_jpeg(samples.frame(h, w), 90, colorsubsampling="420")
                    rows.append(_compare(backend, decoder, data, h, w, frames, np, simplejpeg, FRAME_INPUT))
                    progress(f"{h}x{w}: {rows[-1]}")
            finally:
                backend.__exit__(None, None, None)
                scratch.free()
    finally:
        cuda.Context.pop()
    return {"gpu": gpu, "rows": rows}


def _compare(backend, decoder, data, h, w, frames, np, simplejpeg, frame_input) -> dict:
    def gpu_path():
        out = backend.infer_jpeg(data, h, w, decoder)
        if out is None:
            raise RuntimeError(f"nvImageCodec could not decode the {h}x{w} JPEG")
        return out

    def cpu_path():
        return backend.infer({frame_input: simplejpeg.decode_jpeg(data)[None]})

    seen_gpu = 255 - gpu_path()["inverted"][0].astype(np.int16)  # the stand-in engine writes 255 - its input
    seen_cpu = 255 - cpu_path()["inverted"][0].astype(np.int16)
    diff = np.abs(seen_gpu - seen_cpu)
    timed = {}
    for name, path in (("gpu decode + run", gpu_path), ("cpu decode + copy + run", cpu_path)):
        for _ in range(5):
            path()
        samples_ms = []
        for _ in range(frames):
            start = time.perf_counter()
            path()
            samples_ms.append((time.perf_counter() - start) * 1000)
        timed[name] = {"p50 ms": float(np.percentile(samples_ms, 50)), "p99 ms": float(np.percentile(samples_ms, 99))}
    return {
        "frame": f"{h}x{w}",
        "jpeg KiB": len(data) / 1024,
        "max abs diff": int(diff.max()),
        "mean abs diff": float(diff.mean()),
        "pixels equal %": float((diff == 0).mean() * 100),
        "within tolerance": bool(diff.max() <= TOLERANCE["max"] and diff.mean() <= TOLERANCE["mean"]),
        **{f"{name} {k}": v for name, t in timed.items() for k, v in t.items()},
    }


def copies() -> str:
    progress("benchmarks.cuda_copies at 720p and 1080p")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cuda_copies", "--frames", "200", "--sizes", *(f"{h}x{w}" for h, w in SIZES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return done.stdout if done.returncode == 0 else f"failed ({done.returncode}):\n{done.stderr[-2000:]}"


def pyspy(folder: Path | None, target: Path) -> str | None:
    """py-spy on PATH, or installed by ``install`` into ``target``, or from its carried wheel now."""
    for found in (shutil.which("py-spy"), target / "bin" / "py-spy", target / "py-spy" / "bin" / "py-spy"):
        if found and Path(found).is_file():
            return str(found)
    wheels = sorted(folder.glob("py_spy-*.whl")) if folder and folder.is_dir() else []
    if not wheels:
        return None
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(target / "py-spy"),
            str(wheels[-1]),
        ],
        check=True,
    )
    found = target / "py-spy" / "bin" / "py-spy"
    return str(found) if found.is_file() else None


def cores_check(args, out: Path, site: Path) -> dict:
    """benchmarks.cores on this machine's cores: its report beside gpu-check's."""
    progress(f"benchmarks.cores {' '.join(CORES_ARGS)} (about 4 minutes)")
    command = [
        sys.executable,
        "-m",
        "benchmarks.cores",
        *CORES_ARGS,
        "--engines",
        str(args.cores_engines),
        "--json",
        str(out / "cores.json"),
        "--markdown",
        str(out / "cores.md"),
    ]
    if args.wheels and args.wheels.is_dir():
        command += ["--wrk-debs", str(args.wheels)]
    spy = pyspy(args.wheels, site)
    if spy:
        command += ["--py-spy", spy]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired as err:
        return {"exit": "timeout", "output": str(err.stderr or "")[-3000:]}
    return {"exit": done.returncode, "output": (done.stdout + done.stderr)[-3000:]}


def run(args) -> int:
    if args.download:
        return download(args.download)
    if args.only_cores:  # no GPU needed: the host path's scaling only
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as site:
            cores = cores_check(args, out, Path(site))
        progress(f"cores: exit {cores['exit']}; {out / 'cores.md'}")
        return 0 if cores["exit"] == 0 else 1
    why = no_gpu_reason()
    if why:
        progress(f"{why}. Nothing was checked: run it on a machine with an NVIDIA GPU.")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as site:
        install(args.wheels, Path(site))
        report = {"python": platform.python_version(), "tests": device_tests(), "copies": copies()}
        try:
            report["decode"] = decode_check(args.frames)
        except Exception as err:  # reported, not hidden: the rest of the report still stands
            report["decode"] = {"error": f"{type(err).__name__}: {err}"}
        if not args.no_cores:
            report["cores"] = cores_check(args, out, Path(site))
    report["seconds"] = time.perf_counter() - started
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu-check.md").write_text(_markdown(report))
    progress(f"wrote {out / 'gpu-check.md'} in {report['seconds']:.0f} s")
    decoded = report["decode"].get("rows", [])
    ok = report["tests"]["exit"] == 0 and decoded and all(r["within tolerance"] for r in decoded)
    return 0 if ok else 1


def _markdown(report: dict) -> str:
    lines = [
        "# GPU check (no TensorRT: a STAND-IN kernel in place of the engine)",
        "",
        "Command: `python -m benchmarks.gpucheck --wheels .whl --out OUT`",
        "",
        f"## tests/test_cuda_device.py: {report['tests']['summary']}",
        "",
        "## Copies (benchmarks.cuda_copies)",
        "",
        report["copies"],
        "",
        "## nvImageCodec into the input buffer",
        "",
    ]
    decode = report["decode"]
    if "error" in decode:
        lines.append(f"failed: {decode['error']}")
    else:
        lines.append(f"GPU: {decode['gpu']['name']}; tolerance: max {TOLERANCE['max']}, mean {TOLERANCE['mean']}")
        rows = decode["rows"]
        lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
        lines += [
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows
        ]
    if "cores" in report:
        cores = report["cores"]
        failed = f"failed ({cores['exit']}):\n\n```\n{cores['output']}\n```"
        lines += [
            "",
            "## Cores (benchmarks.cores, stand-in engine)",
            "",
            "See cores.md." if cores["exit"] == 0 else failed,
        ]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--wheels", type=Path, default=Path(".whl"), help="the carried wheels and the pycuda sdist (default: .whl)"
    )
    p.add_argument("--download", type=Path, metavar="DIR", help="only download the wheels to carry into DIR")
    p.add_argument("--out", default="gpu-check", help="folder for gpu-check.md and .json (default: gpu-check)")
    p.add_argument("--frames", type=int, default=100, help="timed frames per path and size (default: 100)")
    p.add_argument("--no-cores", action="store_true", help="skip the cores run (benchmarks.cores)")
    p.add_argument("--only-cores", action="store_true", help="only the cores run (no GPU needed)")
    p.add_argument(
        "--cores-engines",
        type=Path,
        default=ROOT / "benchmarks" / "standin_manifest.json",
        help="the manifest the cores run's stand-in serves (default: benchmarks/standin_manifest.json)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return run(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
