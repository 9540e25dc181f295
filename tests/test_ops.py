"""The in-graph building blocks against the libraries they reproduce (scipy, torch; Pillow: test_pil_resize)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from vision_node.builder import argmax, ops, trt_rules


@pytest.mark.parametrize("chunk", [1, 7, 8, 150, 400])
def test_chunked_upsampled_argmax_equals_full_argmax(chunk):
    logits = torch.randn(2, 150, 9, 13, generator=torch.Generator().manual_seed(chunk))
    logits[:, 40] = logits[:, 3]  # exact ties: argmax must keep the first class
    want = F.interpolate(logits, size=(50, 71), mode="bilinear", align_corners=False).argmax(1)
    got = argmax.chunked_upsampled_argmax(logits, (50, 71), chunk)
    assert torch.equal(got, want)


def _smooth_logits(n, classes, h, w, seed):
    """Scores that vary smoothly, like a trained model's: few classes compete in most places."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, classes, max(h // 6, 2), max(w // 6, 2), generator=g) * 4
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) + 0.05 * torch.randn(
        n, classes, h, w, generator=g
    )


def _assert_is_argmax_of_upsampled(logits, size, got):
    full = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    want = full.argmax(1)
    assert got.shape == want.shape and got.dtype == argmax.CLASS_DTYPE
    wrong = got.long() != want
    # Only a float32 coincidence may differ: torch's own samples of two classes rounding to the same
    # value (torch rounds in another order; where the scores differ, the answer must be the same).
    gap = (full.gather(1, want[:, None]) - full.gather(1, got.long()[:, None]))[:, 0]
    assert int(wrong.sum()) <= 2 and bool((gap[wrong].abs() <= 1e-6 * full.abs().amax()).all())


# Frame sizes: larger, smaller and equal to the scores, odd, both aspect ratios, non-integer scales.
UPSAMPLE_SIZES = [(52, 52), (97, 61), (61, 200), (13, 17), (9, 6), (200, 33), (1, 1)]


# Tier capacities (see argmax.ARGMAX_TIERS): the shipped ones; so small that most frames overflow into the dense
# fallback; so large that every cell fits (random scores then go through the all-classes tier, not the fallback).
TIERS = {
    "shipped": argmax.ARGMAX_TIERS,
    "overflowing": ((2, 4, 4, 5, 2), (5, 8, 8, 3, 1), (9, None, None, 2, 1)),
    "roomy": ((2, 4, 4, 400, 1), (5, 8, 8, 400, 1), (9, None, None, 400, 1)),
}


@pytest.mark.parametrize("size", UPSAMPLE_SIZES)
@pytest.mark.parametrize("tiers", TIERS)
def test_upsampled_argmax_is_argmax_of_bilinear_upsampling(size, tiers, monkeypatch):
    monkeypatch.setattr(argmax, "ARGMAX_TIERS", TIERS[tiers])
    logits = torch.cat([_smooth_logits(1, 150, 13, 17, seed=1), torch.randn(1, 150, 13, 17)])
    logits[:, 40] = logits[:, 3]  # exact ties: the first class must win, as argmax's
    logits[0, 7, 5:9, 4:11] += 20.0  # a plateau where one class wins a whole block of cells
    logits[0, :, 0] = logits[0, :, 1]  # equal edge rows and columns: the clamped edges
    logits[0, :, :, -1] = logits[0, :, :, -2]
    got = argmax.upsampled_argmax(logits, size, chunk=7)
    _assert_is_argmax_of_upsampled(logits, size, got)


def _taken_fallback(monkeypatch):
    taken = []
    fallback = argmax._dense_fallback

    def spy(table, left_out, *rest):
        taken.append(bool(left_out.amax() > 0))
        return fallback(table, left_out, *rest)

    monkeypatch.setattr(argmax, "_dense_fallback", spy)
    return taken


@pytest.mark.parametrize("classes", [150, 5, 1])
def test_upsampled_argmax_takes_each_path_and_agrees_with_the_chunked_fold(classes, monkeypatch):
    # Smooth scores fill the tiers without overflowing them; random scores overflow the shipped tiers
    # (most cells have many candidates) and take the dense fallback; both equal the chunked fold.
    taken = _taken_fallback(monkeypatch)
    smooth = _smooth_logits(2, classes, 32, 32, seed=2)
    noise = torch.randn(1, classes, 128, 128, generator=torch.Generator().manual_seed(3))
    for logits, overflows in ((smooth, False), (noise, classes > 1)):
        for size in [(128, 128), (75, 133), (270, 480)]:
            want = argmax.chunked_upsampled_argmax(logits, size, 8)
            got = argmax.upsampled_argmax(logits, size, 8)
            _assert_is_argmax_of_upsampled(logits, size, got)
            assert (got.long() == want).float().mean() > 0.9999
            assert taken.pop() == overflows


def test_upsampled_argmax_exports_without_nonzero_and_its_fallback_runs_only_when_needed(tmp_path):
    import onnx
    import onnxruntime as ort

    class Op(torch.nn.Module):
        def forward(self, logits, frames):
            return argmax.upsampled_argmax(logits, frames.shape[1:3], 8)

    path = tmp_path / "op.onnx"
    example = (torch.zeros(1, 150, 16, 16), torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    dynamic = {"frames": {1: "h", 2: "w"}}
    torch.onnx.export(
        Op(),
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["logits", "frames"],
        output_names=["classes"],
        dynamic_axes=dynamic,
    )
    model = onnx.load(str(path))
    kinds = {node.op_type for node in model.graph.node}
    assert "NonZero" not in kinds and "If" in kinds and "Loop" not in kinds
    assert trt_rules.check(model) == []  # no float64 from the scripted fallback's scalars, among others
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for logits in (_smooth_logits(1, 150, 16, 16, seed=4), torch.randn(1, 150, 16, 16)):
        for hw in [(64, 64), (90, 161)]:
            frames = np.zeros((1, *hw, 3), np.uint8)
            got = torch.from_numpy(session.run(None, {"logits": logits.numpy(), "frames": frames})[0])
            _assert_is_argmax_of_upsampled(logits, hw, got)


@pytest.mark.parametrize("in_size", [4, 7, 16, 64, 128])
def test_no_cell_holds_more_output_pixels_than_its_span(in_size):
    # cell_span sizes the blocks of boundary pixels; a pixel past it would keep its cell's first class.
    for out_size in list(range(1, 600)) + [1080, 1920, 2160, 2624, 3008, 3840]:
        cell, weight, starts = argmax._bilinear_axis(in_size, out_size)
        assert int(torch.bincount(cell, minlength=in_size + 1).max()) <= int(argmax.cell_span(in_size, out_size))
        assert torch.equal(starts[cell] <= torch.arange(out_size), torch.ones(out_size, dtype=torch.bool))
        assert float(weight.min()) >= 0.0 and float(weight.max()) < 1.0


def test_gaussian_blur_matches_scipy_gaussian_filter():
    maps = torch.rand(3, 17, 16, 12, generator=torch.Generator().manual_seed(0))
    want = np.stack([[gaussian_filter(m, sigma=0.8, radius=(5, 5), axes=(0, 1)) for m in b] for b in maps.numpy()])
    got = ops.gaussian_blur(maps, 0.8, 5).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_normalise_folds_rescale_mean_and_std():
    x = torch.rand(1, 3, 4, 5) * 255
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    want = (x / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ops.normalise(x, 1 / 255, mean, std), want)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((37, 37), (25, 37)), ((37, 37), (66, 37)), ((25, 37), (400, 600)), ((20, 30), (7, 9))]
)
def test_resize_bicubic_is_torchs_bicubic_upsampling(in_hw, out_hw):
    x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.interpolate(x, size=out_hw, mode="bicubic", align_corners=False)
    got = ops.resize_bicubic(x, out_hw)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 5e-5  # float32 summation order (values up to ~4)
    assert torch.equal(ops.resize_bicubic(x, in_hw), x)  # the same size is the identity, exactly
