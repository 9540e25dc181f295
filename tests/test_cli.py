"""build_engines.py as an operator runs it: help, clear errors, a local save_pretrained model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_ROLES
from vision_node import manifest
from vision_node.builder import weights
from vision_node.builder.errors import BuildError
from vision_node.builder.specs import ShapeBounds

ROOT = Path(__file__).resolve().parents[1]


def build_engines(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, str(ROOT / "build_engines.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_help_lists_options_and_models():
    result = build_engines("--help")
    assert result.returncode == 0
    for text in (
        "--weights {hub,demo}",
        "--model ROLE=PATH",
        "--resolution CAP=HxW",
        "depth-anything-v2-base",
        "cc-by-nc-4.0",
    ):
        assert text in result.stdout


def test_unknown_capability_is_refused():
    result = build_engines("--capabilities", "depth,normals")
    assert result.returncode == 2 and "unknown capability 'normals'" in result.stderr


def test_missing_model_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = build_engines("--model", f"depth={missing}", "--capabilities", "depth", "--out", str(tmp_path / "e"))
    assert result.returncode == 1
    assert f"model directory {missing} does not exist" in result.stderr
    recorded = manifest.load(tmp_path / "e")  # nothing built, and the manifest says why
    assert recorded["capabilities"] == {} and f"model directory {missing} does not exist" in recorded["failed"]["depth"]


def test_unreachable_hub_says_so_and_points_to_demo(tmp_path):
    # An empty cache with HF_HUB_OFFLINE is what an unreachable hub looks like, minus the retries.
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = build_engines("--capabilities", "segmentation", "--out", str(tmp_path / "e"), env=env)
    assert result.returncode == 1
    assert "cannot load nvidia/segformer-b0-finetuned-ade-512-512 from the Hugging Face hub" in result.stderr
    assert "use --weights demo" in result.stderr


def test_local_save_pretrained_directory_builds_and_verifies(tmp_path):
    loaded = weights.load_demo(TINY_ROLES["segmentation"])
    model_dir = tmp_path / "my-segformer"
    loaded.model.save_pretrained(model_dir)
    loaded.processor.save_pretrained(model_dir)
    out = tmp_path / "engines"
    result = build_engines(
        "--model",
        f"segmentation={model_dir}",
        "--capabilities",
        "segmentation",
        "--out",
        str(out),
        "--max-size",
        "720x1280",
    )
    assert result.returncode == 0, result.stderr
    entry = manifest.load(out)["capabilities"]["segmentation"]
    assert entry["models"][0]["weights"] == "local" and entry["models"][0]["path"] == str(model_dir)
    assert entry["demo"] is False
    assert entry["graphs"][0]["resolution"] == [64, 64]  # taken from the saved processor config
    assert "pixel_agreement" in result.stderr  # the verification table is printed


def test_local_directory_without_processor_config_is_refused(tmp_path):
    loaded = weights.load_demo(TINY_ROLES["depth"])
    loaded.model.save_pretrained(tmp_path)
    with pytest.raises(BuildError, match="no preprocessor_config.json"):
        weights.load_local(TINY_ROLES["depth"], tmp_path)


def test_shape_bounds_refuse_out_of_bounds_frames():
    bounds = ShapeBounds()  # 1080p by default: 4K is --max-size 2160x3840 (issue 21: its memory)
    bounds.check(64, 64)
    bounds.check(1080, 1920, batch=4)
    refused = [(63, 64, 1), (64, 1921, 1), (1081, 100, 1), (1920, 1080, 1), (0, 0, 1), (-5, 100, 1), (100, 100, 5)]
    for h, w, n in refused:
        with pytest.raises(ValueError, match="outside"):
            bounds.check(h, w, batch=n)


def test_demo_weights_are_seeded_and_labelled():
    a, b = weights.load_demo(TINY_ROLES["depth"], seed=1), weights.load_demo(TINY_ROLES["depth"], seed=1)
    assert a.source == "demo" and a.revision is None
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert pa.equal(pb)


def test_tiny_build_needs_demo_weights_and_names_its_models_tiny(tmp_path):
    refused = build_engines("--tiny", "--out", str(tmp_path / "no"))
    assert refused.returncode == 1 and "--tiny" in refused.stderr and "--weights demo" in refused.stderr
    built = build_engines(
        "--weights", "demo", "--tiny", "--capabilities", "segmentation", "--no-fp16", "--out", str(tmp_path)
    )
    assert built.returncode == 0, built.stderr
    entry = manifest.load(tmp_path)["capabilities"]["segmentation"]
    assert entry["demo"] is True and [m["name"] for m in entry["models"]] == ["segformer-b0-ade-tiny"]
    assert "fp16" not in entry["graphs"][0]
    # The graph, and the copy ONNX Runtime optimised (what a CPU node loads).
    files = sorted(p.name for p in tmp_path.glob("*.onnx*"))
    assert files == ["segmentation-64x64.onnx", "segmentation-64x64.ort.onnx", "segmentation-64x64.trt.onnx"]
    assert entry["graphs"][0]["onnxruntime"]["path"] == "segmentation-64x64.ort.onnx"


def test_a_graph_that_misses_verification_leaves_no_file(tmp_path, monkeypatch):
    from tests.conftest import tiny_plan
    from vision_node.builder import pipeline, verify
    from vision_node.builder.recipes import recipe_for

    monkeypatch.setitem(verify.TOLERANCES, "depth", {"max_rel_err": 0.0, "mean_rel_err": 0.0})
    plan = tiny_plan(tmp_path, verify_sizes=((90, 160),))
    loaded = pipeline.load_models("depth", plan)
    recipe = recipe_for("depth")
    stem, sizing, make = next(recipe.graphs(plan, loaded))
    entry, optimised, checks = pipeline.export_verified(recipe, stem, "fp32", sizing, make, loaded, plan)
    assert entry is None and optimised is None and not all(c.ok for c in checks)
    assert list(tmp_path.iterdir()) == []  # no graph, variant, copy nor .partial: nothing that looks shippable


def test_revision_pins_a_roles_hub_weights():
    from vision_node.builder.cli import parser, plan_from_args

    args = parser().parse_args(
        ["--revision", "depth=0123abc", "--variant", "segmentation=segformer-b2-ade", "--revision", "segmentation=v1.0"]
    )
    plan = plan_from_args(args)
    assert plan.specs["depth"].revision == "0123abc" and plan.specs["depth"].name == "depth-anything-v2-small"
    assert plan.specs["segmentation"].revision == "v1.0" and plan.specs["segmentation"].name == "segformer-b2-ade"


def test_the_fp16_ladder_keeps_the_first_rung_that_verifies_or_ships_fp32_alone(tmp_path, monkeypatch, caplog):
    import logging

    from tests.conftest import tiny_plan
    from vision_node.builder import pipeline, verify

    real_verify, calls = pipeline.verify_graph, []

    def first_fp16_rung_misses(recipe, path, sizing, loaded, plan, tolerances=None, name=None, memo=None):
        checks = real_verify(recipe, path, sizing, loaded, plan, tolerances, name, memo)
        calls.append(name)
        if name.endswith(".fp16.onnx") and calls.count(name) == 1:
            for check in checks:
                check.value = float("nan")  # a miss on every check of the first fp16 rung
        return checks

    monkeypatch.setattr(pipeline, "verify_graph", first_fp16_rung_misses)
    caplog.set_level(logging.INFO, logger="build")
    entry = pipeline.build_capability("segmentation", tiny_plan(tmp_path / "a", verify_sizes=((90, 160),))).as_dict()
    graph = entry["graphs"][0]
    assert graph["fp16"]["precision"] == "fp16-norms32" and "fp16_missed" not in graph
    assert "the fp16 graph missed verification; trying the next rung" in caplog.text
    # Only the kept rung's checks are the manifest's: every one of them passed.
    fp16_checks = [c for c in entry["verification"]["checks"] if c["graph"] == graph["fp16"]["path"]]
    assert fp16_checks and all(c["ok"] for c in fp16_checks)

    monkeypatch.setitem(verify.FP16_TOLERANCES, "segmentation", {"pixel_agreement": 1.01})  # no rung can pass
    entry = pipeline.build_capability("segmentation", tiny_plan(tmp_path / "b", verify_sizes=((90, 160),))).as_dict()
    graph = entry["graphs"][0]
    assert "fp16" not in graph and [m.split(":")[0] for m in graph["fp16_missed"]] == ["fp16", "fp16-norms32"]
    shipped = sorted(p.name for p in (tmp_path / "b").iterdir())
    # the fp32 graph, ONNX Runtime's copy and TensorRT's variant
    assert shipped == ["segmentation-64x64.onnx", "segmentation-64x64.ort.onnx", "segmentation-64x64.trt.onnx"]
    assert "no fp16 graph passed verification" in caplog.text


def test_a_long_build_step_says_it_is_still_running(monkeypatch, caplog):
    import logging
    import time

    from vision_node.builder import pipeline

    monkeypatch.setattr(pipeline, "PROGRESS_EVERY_S", 0.1)
    caplog.set_level(logging.INFO, logger="build")
    with pipeline.step("verifying a slow graph"):
        time.sleep(0.35)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "verifying a slow graph ..." and lines[-1].startswith("verifying a slow graph: done in")
    assert sum("still running" in line for line in lines) >= 2


def test_flags_are_spelled_out_never_guessed():
    from vision_node.builder.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["--weight", "demo"])  # not --weights
    assert parser().parse_args(["--weights", "demo"]).weights == "demo"


def test_the_distribution_installs_its_console_scripts_and_no_module_named_node():
    """``pip install`` gives ``vision-node`` and ``vision-node-build``; the import package is ``vision_node`` (PyPI
    already has a ``node``), and ``python -m vision_node`` is the same command line."""
    from importlib import metadata

    scripts = {e.name: e for e in metadata.entry_points(group="console_scripts") if e.dist.name == "vision-node"}
    assert set(scripts) == {"vision-node", "vision-node-build"}
    assert scripts["vision-node"].load().__module__ == "vision_node.cli"
    assert scripts["vision-node-build"].load().__module__ == "vision_node.builder.cli"
    top_level = {path.parts[0] for path in metadata.files("vision-node") or [] if path.suffix == ".py"}
    assert "node" not in top_level
    shown = subprocess.run([sys.executable, "-m", "vision_node", "--help"], capture_output=True, text=True, cwd="/")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: vision-node ")
    absent = subprocess.run([sys.executable, "-c", "import node"], capture_output=True, text=True, cwd="/")
    assert "No module named 'node'" in absent.stderr
