"""Each capability's exported graph, run in ONNX Runtime, against the transformers reference.

The session fixture ``tiny_build`` runs the real build (demo weights of tiny configurations,
real export, real verification); these tests then check the artefacts independently, on
frame sizes, aspect ratios and batch sizes the build's own verification did not use.
"""

import numpy as np
import onnxruntime as ort
import pytest

from node import samples
from node.builder import reference, verify, weights
from node.builder.specs import FRAME_INPUT, OUTPUTS
from tests.conftest import TINY_BOUNDS, TINY_ROLES

# Sizes and batches beyond the build's own verification set.
EXTRA_BATCHES = [(3, (100, 200)), (1, (200, 90)), (1, TINY_BOUNDS.min_hw), (1, (333, 500))]


def _session(out, entry):
    return ort.InferenceSession(str(out / entry["graphs"][0]["path"]), providers=["CPUExecutionProvider"])


def _run(session, capability, frames):
    names = OUTPUTS[capability]
    return dict(zip(names, session.run(list(names), {FRAME_INPUT: frames})))


def test_build_verified_every_capability_on_several_sizes_and_a_batch(tiny_build):
    _, entries = tiny_build
    for capability, entry in entries.items():
        checks = entry["verification"]["checks"]
        assert checks and all(c["ok"] for c in checks), capability
        # Skipped checks count as ok, so make sure every batch also had real comparisons.
        compared = {c["frames"] for c in checks if not c["skipped"]}
        assert compared >= {"1x90x160", "1x128x128", "1x150x100", "1x67x93", "2x90x160"}, capability


@pytest.mark.parametrize(("batch", "hw"), EXTRA_BATCHES)
def test_depth_graph_matches_transformers(tiny_build, batch, hw):
    out, entries = tiny_build
    loaded = weights.load_demo(TINY_ROLES["depth"])
    frames = samples.frames(*hw, batch, seed=11)
    got = _run(_session(out, entries["depth"]), "depth", frames)
    want = reference.depth(loaded.model, loaded.processor, frames, entries["depth"]["graphs"][0]["resolution"])
    assert got["depth"].shape == (batch, *hw) and got["depth"].dtype == np.float32
    np.testing.assert_allclose(got["depth_min"], got["depth"].reshape(batch, -1).min(1))
    np.testing.assert_allclose(got["depth_max"], got["depth"].reshape(batch, -1).max(1))
    checks = verify.compare("depth", f"{batch}x{hw}", got, want)
    assert all(c.ok for c in checks), verify.table(checks)


@pytest.mark.parametrize(("batch", "hw"), EXTRA_BATCHES)
def test_segmentation_graph_matches_transformers(tiny_build, batch, hw):
    out, entries = tiny_build
    loaded = weights.load_demo(TINY_ROLES["segmentation"])
    frames = samples.frames(*hw, batch, seed=12)
    got = _run(_session(out, entries["segmentation"]), "segmentation", frames)
    resolution = entries["segmentation"]["graphs"][0]["resolution"]
    want = reference.segmentation(loaded.model, loaded.processor, frames, resolution)
    assert got["classes"].shape == (batch, *hw) and got["classes"].dtype == np.uint8
    assert (got["classes"] == want["classes"]).mean() >= verify.TOLERANCES["segmentation"]["pixel_agreement"]


@pytest.mark.parametrize(("batch", "hw"), EXTRA_BATCHES)
def test_pose_graph_keypoints_match_transformers_for_the_same_boxes(tiny_build, batch, hw):
    out, entries = tiny_build
    pose = weights.load_demo(TINY_ROLES["pose"])
    frames = samples.frames(*hw, batch, seed=13)
    got = _run(_session(out, entries["pose"]), "pose", frames)
    k = entries["pose"]["options"]["max_persons"]
    assert got["boxes"].shape == (batch, k, 4) and got["box_scores"].shape == (batch, k)
    assert got["keypoints"].shape == (batch, k, 17, 2) and got["keypoint_scores"].shape == (batch, k, 17)
    assert np.all(np.diff(got["box_scores"], axis=1) <= 0), "person slots must be ordered best first"
    want = reference.keypoints(pose.model, pose.processor, frames, got["boxes"])
    err = np.linalg.norm(got["keypoints"] - want["keypoints"], axis=-1)
    limits = verify.TOLERANCES["pose"]
    assert np.median(err) <= limits["keypoint_err_median_px"]
    assert (err <= 1.0).mean() >= limits["keypoints_within_1px"]
    np.testing.assert_allclose(got["keypoint_scores"], want["keypoint_scores"], atol=5e-3)


def test_graphs_accept_the_largest_frame_of_their_bounds(tiny_build):
    out, entries = tiny_build
    frames = samples.frames(*TINY_BOUNDS.max_hw, 1)
    for capability, entry in entries.items():
        got = _run(_session(out, entry), capability, frames)
        first = got[OUTPUTS[capability][0]]
        assert first.shape[0] == 1 and np.isfinite(first.astype(np.float32)).all()
    classes = _run(_session(out, entries["segmentation"]), "segmentation", frames)["classes"]
    assert classes.shape == (1, *TINY_BOUNDS.max_hw)


def test_exported_graph_dims_are_named_and_dynamic(tiny_build):
    _, entries = tiny_build
    graph = entries["depth"]["graphs"][0]
    assert graph["inputs"] == [{"name": FRAME_INPUT, "dtype": "uint8", "shape": ["batch", "height", "width", 3]}]
    assert {o["name"]: o["shape"] for o in graph["outputs"]} == {
        "depth": ["batch", "height", "width"],
        "depth_min": ["batch"],
        "depth_max": ["batch"],
    }
    pose_outputs = {o["name"]: o["shape"] for o in entries["pose"]["graphs"][0]["outputs"]}
    assert pose_outputs["keypoints"] == ["batch", 3, 17, 2]
