"""The comparison logic that judges a graph (and later a TensorRT engine): it must be able to fail."""

import numpy as np
import pytest

from vision_node.builder import verify


def _depth(value=0.0):
    depth = np.tile(np.linspace(0, 10, 8 * 8, dtype=np.float32).reshape(1, 8, 8), (2, 1, 1))  # range 10 per frame
    return {
        "depth": depth + value,
        "depth_min": depth.reshape(2, -1).min(1) + value,
        "depth_max": depth.reshape(2, -1).max(1) + value,
    }


def test_identical_outputs_pass():
    assert all(c.ok for c in verify.compare("depth", "2x8x8", _depth(), _depth()))


def test_tolerance_miss_reports_the_max_error():
    checks = verify.compare("depth", "2x8x8", _depth(1.0), _depth())
    failed = [c for c in checks if not c.ok]
    assert {c.metric for c in failed} == {"max_rel_err", "mean_rel_err"}
    assert failed[0].value == pytest.approx(0.1, rel=1e-3)  # Δ 1 over a range of 10
    with pytest.raises(verify.VerificationError, match=r"max_rel_err = 0\.1"):
        verify.judge(checks)


def test_shape_mismatch_is_fatal_and_named():
    got = _depth()
    got["depth"] = got["depth"][:, :4]
    checks = verify.compare("depth", "2x8x8", got, _depth())
    assert len(checks) == 1 and not checks[0].ok and "expected (2, 8, 8)" in checks[0].detail


def test_nan_is_a_failure():
    got = _depth()
    got["depth"][0, 0, 0] = np.nan
    assert not any(c.ok for c in verify.compare("depth", "2x8x8", got, _depth()))


def test_segmentation_agreement_and_every_failure_collected():
    want = {"classes": np.zeros((1, 10, 10), np.uint8)}
    got = {"classes": want["classes"].copy()}
    got["classes"][0, :5] = 3  # half the pixels disagree
    checks = verify.compare("segmentation", "a", got, want) + verify.compare("segmentation", "b", got, want)
    with pytest.raises(verify.VerificationError) as err:
        verify.judge(checks)
    assert len(err.value.failed) == 2 and "pixel_agreement = 0.5" in str(err.value)


def test_pose_boxes_match_up_to_order_and_keypoint_error_in_pixels():
    boxes = np.array([[[0, 0, 10, 20], [5, 5, 15, 25]]], np.float32)
    want = {
        "boxes": boxes,
        "box_scores": np.array([[0.9, 0.8]], np.float32),
        "keypoints": np.zeros((1, 2, 17, 2), np.float32),
        "keypoint_scores": np.ones((1, 2, 17), np.float32),
    }
    got = {**want, "boxes": boxes[:, ::-1].copy(), "keypoints": want["keypoints"] + 3.0}
    checks = {c.metric: c for c in verify.compare("pose", "1", got, want)}
    assert checks["box_err_px"].ok and checks["box_err_px"].value == 0
    assert not checks["keypoint_err_median_px"].ok
    assert checks["keypoint_err_median_px"].value == pytest.approx(np.hypot(3, 3))
    assert not checks["keypoints_within_1px"].ok and checks["keypoints_within_1px"].value == 0


def test_tied_detector_queries_are_reported_as_skipped_not_passed():
    want = {
        "boxes": np.zeros((1, 1, 4), np.float32),
        "box_scores": np.ones((1, 1), np.float32),
        "tied_queries": np.array([True]),
    }
    got = {"boxes": np.full((1, 1, 4), 50, np.float32), "box_scores": np.zeros((1, 1), np.float32)}
    checks = verify.compare("pose", "1", got, want)
    assert all(c.skipped for c in checks) and "skipped" in verify.table(checks)


def test_fp16_tolerances_replace_the_limits_not_the_metrics():
    rng = np.random.default_rng(0)
    want = {"classes": rng.integers(0, 150, (1, 40, 50)).astype(np.uint8)}
    got = {"classes": want["classes"].copy()}
    got["classes"][0, :1, :] = 0  # 2 % of pixels differ
    default = verify.compare("segmentation", "1x40x50", got, want)
    fp16 = verify.compare("segmentation", "1x40x50", got, want, verify.FP16_TOLERANCES)
    assert [c.metric for c in default] == [c.metric for c in fp16] and default[0].value == fp16[0].value
    pose_limits = {c.metric: c.limit for c in verify.compare("pose", "f", *_pose_pair(), verify.FP16_TOLERANCES)}
    assert pose_limits == verify.FP16_TOLERANCES["pose"]


def _pose_pair():
    boxes = np.array([[[10, 10, 50, 80]]], np.float32)
    got = {
        "boxes": boxes,
        "box_scores": np.array([[0.9]], np.float32),
        "keypoints": np.zeros((1, 1, 17, 2), np.float32),
        "keypoint_scores": np.full((1, 1, 17), 0.5, np.float32),
    }
    return got, {k: v.copy() for k, v in got.items()}
