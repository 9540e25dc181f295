"""Model directories the build must accept or refuse, and a failed capability that costs no other."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import TINY_BOUNDS, TINY_ROLES, tiny_plan
from vision_node import manifest
from vision_node.builder import cli, graphs, pipeline, pose_graph, tiny, weights
from vision_node.builder.errors import BuildError
from vision_node.errors import StartupError
from vision_node.serving.engines import load
from vision_node.sizing import Sizing

SIZES = ((90, 160), (128, 128))


def _save(loaded: weights.LoadedModel, directory, **processor_settings):
    loaded.model.save_pretrained(directory)
    for name, value in processor_settings.items():
        setattr(loaded.processor, name, value)
    loaded.processor.save_pretrained(directory)
    return directory


def test_a_segformer_saved_with_do_reduce_labels_builds_and_matches_transformers(tmp_path):
    # ADE20K fine-tunes save do_reduce_labels=True; transformers applies it to label maps only.
    directory = _save(weights.load_demo(TINY_ROLES["segmentation"]), tmp_path / "segformer", do_reduce_labels=True)
    assert json.loads((directory / "preprocessor_config.json").read_text())["do_reduce_labels"] is True
    plan = tiny_plan(tmp_path / "out", local={"segmentation": str(directory)}, verify_sizes=SIZES, fp16=False)
    entry = pipeline.build_capability("segmentation", plan)
    checks = entry.verification.checks
    assert checks and all(c["ok"] and not c["skipped"] for c in checks)
    assert entry.models[0].weights == "local"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("resample", 0, r"resample=0 is not supported in-graph \(only bilinear=2, bicubic=3\)"),
        ("do_pad", True, r"do_pad=True: not supported in-graph"),
        ("do_resize", False, r"do_resize=False: not supported in-graph"),
    ],
)
def test_processor_settings_the_graph_cannot_reproduce_are_refused_by_name(setting, value, message):
    loaded = weights.load_demo(TINY_ROLES["depth"])
    setattr(loaded.processor, setting, value)
    sizing = Sizing.of_processor(loaded.processor)
    with pytest.raises(BuildError, match=message):
        graphs.DepthGraph(loaded.model, loaded.processor, sizing, TINY_BOUNDS)


def test_a_label_set_the_palette_does_not_cover_is_refused():
    spec = TINY_ROLES["segmentation"]
    loaded = weights.load_demo(dataclasses.replace(spec, demo_config={**spec.demo_config, "num_labels": 151}))
    with pytest.raises(BuildError, match=r"num_labels=151; the ADE20K palette .* colours 150 classes"):
        sizing = Sizing.of_processor(loaded.processor)
        graphs.SegmentationGraph(loaded.model, loaded.processor, sizing, TINY_BOUNDS, 8)


def test_a_pose_head_without_17_keypoints_is_refused_and_the_others_still_build(tmp_path, monkeypatch, caplog):
    spec = TINY_ROLES["pose"]
    two_keypoints = dataclasses.replace(spec, demo_config={**spec.demo_config, "num_labels": 2})  # VitPoseConfig()'s
    monkeypatch.setitem(tiny.TINY_ROLES, "pose", two_keypoints)
    out = tmp_path / "engines"
    argv = ["--weights", "demo", "--tiny", "--no-fp16", "--capabilities", "segmentation,pose", "--out", str(out)]
    monkeypatch.setattr(tiny, "TINY_VERIFY_SIZES", SIZES)
    status = cli.main(argv)

    assert status == 1  # a capability failed: the build says so
    recorded = manifest.load(out)
    assert list(recorded["capabilities"]) == ["segmentation"]  # the other one is built and listed
    assert "num_labels=2" in recorded["failed"]["pose"] and "COCO-17" in recorded["failed"]["pose"]
    assert "build failed for pose" in caplog.text
    # The node serves what was built and names the failure when asked for the rest.
    assert list(load(out)) == ["segmentation"]
    with pytest.raises(StartupError, match=r"has no pose .*pose failed to build: .*num_labels=2"):
        load(out, ("segmentation", "pose"))


def test_a_capability_built_again_clears_its_recorded_failure(tmp_path):
    manifest.write(tmp_path, {}, failed={"pose": "num_labels=2"})
    nothing = manifest.Verification(reference="", backend="", tolerances={}, checks=[])
    pose = manifest.CapabilityEntry(
        capability="pose",
        graphs=[],
        models=[],
        demo=True,
        opset=17,
        bounds=TINY_BOUNDS,
        options={},
        verification=nothing,
    )
    manifest.write(tmp_path, {"pose": pose})
    recorded = manifest.load(tmp_path)
    assert "failed" not in recorded and "pose" in recorded["capabilities"]
    manifest.write(tmp_path, {}, failed={"pose": "broken again"})
    assert "pose" not in manifest.load(tmp_path)["capabilities"]  # nothing stale served in its name


def test_a_pose_processor_without_the_affine_crop_is_refused():
    det, pose = weights.load_demo(TINY_ROLES["detector"]), weights.load_demo(TINY_ROLES["pose"])
    pose.processor.do_affine_transform = False
    with pytest.raises(BuildError, match=r"do_affine_transform=False: not supported in-graph"):
        pose_graph.PoseGraph(
            det.model, det.processor, pose.model, pose.processor, 3, Sizing.of_processor(det.processor), TINY_BOUNDS
        )
