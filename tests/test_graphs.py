"""Each capability's exported graph, run in ONNX Runtime, against the transformers reference.

The session fixture ``tiny_build`` runs the real build (demo weights of tiny configurations,
real export, real verification); these tests then check the artefacts independently, on
frame sizes, aspect ratios and batch sizes the build's own verification did not use.
"""

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import TINY_BOUNDS, TINY_ROLES
from vision_node import samples
from vision_node.builder import reference, verify, weights
from vision_node.builder.specs import FRAME_INPUT, OUTPUTS
from vision_node.contract import FRAME_PARAMETERS
from vision_node.sizing import Sizing

# Sizes and batches beyond the build's own verification set.
EXTRA_BATCHES = [(3, (100, 200)), (1, (200, 90)), (1, TINY_BOUNDS.min_hw), (1, (333, 500))]


def _session(out, entry):
    return ort.InferenceSession(str(out / entry["graphs"][0]["path"]), providers=["CPUExecutionProvider"])


def _sizing(entry) -> Sizing:
    return Sizing.from_dict(entry["graphs"][0]["sizing"])


def _run(session, capability, frames, **parameters):
    """The graph's outputs; a per-frame parameter not given takes its default (pose: every slot served)."""
    names = OUTPUTS[capability]
    feeds = {i.name: np.full(len(frames), FRAME_PARAMETERS[i.name], np.float32) for i in session.get_inputs()[1:]}
    return dict(zip(names, session.run(list(names), {FRAME_INPUT: frames, **feeds, **parameters})))


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
    want = reference.depth(loaded.model, loaded.processor, frames, _sizing(entries["depth"]))
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
    want = reference.segmentation(loaded.model, loaded.processor, frames, _sizing(entries["segmentation"]))
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


def test_pose_graph_runs_the_keypoint_model_on_the_persons_each_frame_keeps_and_zeros_the_rest(tiny_build):
    out, entries = tiny_build
    pose = weights.load_demo(TINY_ROLES["pose"])
    session = _session(out, entries["pose"])
    frames = samples.frames(100, 200, 3, seed=14)
    scores = _run(session, "pose", frames)["box_scores"]
    # Frame 0 keeps its best two, frame 1 its best one, frame 2 nobody: the model runs on the first two slots.
    threshold = np.array([scores[0, 1], scores[1, 0], 2.0], np.float32)
    got = _run(session, "pose", frames, person_threshold=threshold)
    kept = (got["box_scores"] >= threshold[:, None]).sum(axis=1)
    assert kept.tolist()[2] == 0 and kept.max() >= 2, kept
    k = int(kept.max())
    want = reference.keypoints(pose.model, pose.processor, frames, got["boxes"][:, :k])
    err = np.linalg.norm(got["keypoints"][:, :k] - want["keypoints"], axis=-1)
    assert np.median(err) <= verify.TOLERANCES["pose"]["keypoint_err_median_px"]
    np.testing.assert_allclose(got["keypoint_scores"][:, :k], want["keypoint_scores"], atol=5e-3)
    assert not got["keypoints"][:, k:].any() and not got["keypoint_scores"][:, k:].any()
    nobody = _run(session, "pose", frames, person_threshold=np.full(3, 2.0, np.float32))
    assert not nobody["keypoints"].any() and not nobody["keypoint_scores"].any()
    np.testing.assert_array_equal(nobody["boxes"], got["boxes"])  # the detector's answer does not change


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
    # The per-frame threshold that decides which slots the keypoint model runs on.
    assert entries["pose"]["graphs"][0]["inputs"][1] == {
        "name": "person_threshold",
        "dtype": "float32",
        "shape": ["batch"],
    }


# ------------------------------------------------------- the fp16 graphs (what TensorRT engines are built from)


def _fp16_session(out, entry):
    return ort.InferenceSession(str(out / entry["graphs"][0]["fp16"]["path"]), providers=["CPUExecutionProvider"])


def test_every_capability_has_an_fp16_graph_with_fp16_weights_verified_by_its_own_checks(tiny_build):
    out, entries = tiny_build
    for capability, entry in entries.items():
        graph = entry["graphs"][0]
        fp16 = graph["fp16"]
        assert fp16["precision"] == "fp16" and (out / fp16["path"]).is_file(), capability
        weights_ = fp16["float_weights"]
        assert weights_["float16"] / sum(weights_.values()) > 0.95, (capability, weights_)  # the body is half
        assert graph["float_weights"] == {"float32": sum(weights_.values())}  # the fp32 graph stays fp32
        checks = [c for c in entry["verification"]["checks"] if c["graph"] == fp16["path"]]
        compared = {c["frames"] for c in checks if not c["skipped"]}
        assert compared >= {"1x90x160", "1x128x128", "1x150x100", "1x67x93", "2x90x160"}, capability
        assert all(c["ok"] for c in checks) and checks[0]["limit"] in verify.FP16_TOLERANCES[capability].values()
        # Same inputs, same outputs: the server and TensorRT bind either graph by the same names and types.
        plain, half = _session(out, entry), _fp16_session(out, entry)
        assert [(i.name, i.type) for i in plain.get_inputs()] == [(i.name, i.type) for i in half.get_inputs()]
        assert [(o.name, o.type) for o in plain.get_outputs()] == [(o.name, o.type) for o in half.get_outputs()]


@pytest.mark.parametrize("capability", ["depth", "segmentation", "pose"])
def test_fp16_graphs_match_transformers_on_sizes_the_build_did_not_verify(tiny_build, capability):
    from vision_node.builder.pipeline import reference_outputs

    out, entries = tiny_build
    roles = ("detector", "pose") if capability == "pose" else (capability,)
    loaded = {role: weights.load_demo(TINY_ROLES[role]) for role in roles}
    session, sizing = _fp16_session(out, entries[capability]), _sizing(entries[capability])
    checks = []
    for batch, hw in EXTRA_BATCHES:
        frames = samples.frames(*hw, batch, seed=21)
        got = _run(session, capability, frames)
        want = reference_outputs(capability, loaded, frames, sizing, got)
        checks += verify.compare(capability, f"{batch}x{hw}", got, want, verify.FP16_TOLERANCES)
    assert all(c.ok for c in checks), verify.table(checks)


def test_the_fp16_body_is_a_half_copy_that_leaves_the_reference_model_fp32():
    import torch

    from vision_node.builder import precision

    model = weights.load_demo(TINY_ROLES["segmentation"]).model
    half = precision.body(model, "fp16-norms32")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the transformers reference is untouched
    dtypes = {type(m).__name__: next(m.parameters()).dtype for m in half.model.modules() if list(m.parameters(False))}
    assert dtypes["Conv2d"] == torch.float16 and dtypes["LayerNorm"] == torch.float32
    pixels = torch.rand(1, 3, 64, 64)
    assert half(pixel_values=pixels).logits.dtype == torch.float32  # fp32 in, fp32 out: our pre/post stay fp32
    assert precision.body(model, "fp32") is model
    with pytest.raises(ValueError, match="unknown precision"):
        precision.body(model, "int8")
