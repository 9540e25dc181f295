"""The in-graph building blocks against the libraries they reproduce (Pillow, scipy, torch)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from node import samples
from node.builder import ops

PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


# (input, output, filter, whether Pillow 13 resamples horizontally first for that size pair)
RESIZE_CASES = [
    ((360, 640), (98, 98), "bicubic", True),
    ((1080, 1920), (518, 924), "bicubic", True),
    ((97, 131), (518, 518), "bicubic", True),
    ((720, 1280), (512, 512), "bilinear", True),
    ((64, 64), (640, 640), "bilinear", True),
    ((150, 100), (98, 98), "bicubic", False),
]


@pytest.mark.parametrize(("in_hw", "out_hw", "name", "same_order"), RESIZE_CASES)
def test_resize_like_pil_matches_pillow_within_rounding(in_hw, out_hw, name, same_order):
    frame = samples.frame(*in_hw, seed=3)
    want = np.asarray(Image.fromarray(frame).resize(out_hw[::-1], PIL_FILTERS[name])).astype(np.float32)
    got = ops.resize_like_pil(torch.from_numpy(frame)[None], out_hw, name)[0].permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    diff = np.abs(got - want)
    if same_order:  # only Pillow's 22-bit fixed-point coefficients and ties differ
        assert diff.max() <= 2 and (diff > 0).mean() < 0.05
    else:  # the known deviation: Pillow went vertical-first, intermediate rounding differs
        assert diff.mean() < 0.3 and (diff > 2).mean() < 0.001


def test_resample_matrix_rows_are_normalised_and_identity_at_scale_one():
    for in_size, out_size in [(100, 37), (37, 100), (64, 64)]:
        weights = ops.pil_resample_matrix(torch.tensor(float(in_size)), out_size, "bicubic")
        assert weights.shape == (out_size, in_size)
        torch.testing.assert_close(weights.sum(1), torch.ones(out_size))
    torch.testing.assert_close(ops.pil_resample_matrix(torch.tensor(64.0), 64, "bilinear"), torch.eye(64))


@pytest.mark.parametrize("chunk", [1, 7, 8, 150, 400])
def test_chunked_upsampled_argmax_equals_full_argmax(chunk):
    logits = torch.randn(2, 150, 9, 13, generator=torch.Generator().manual_seed(chunk))
    logits[:, 40] = logits[:, 3]  # exact ties: argmax must keep the first class
    want = F.interpolate(logits, size=(50, 71), mode="bilinear", align_corners=False).argmax(1)
    got = ops.chunked_upsampled_argmax(logits, (50, 71), chunk)
    assert torch.equal(got, want)


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


def test_pil_filter_name_refuses_filters_the_graph_cannot_run():
    assert ops.pil_filter_name(3) == "bicubic"
    assert ops.pil_filter_name(Image.BILINEAR) == "bilinear"
    with pytest.raises(ValueError, match="not supported in-graph"):
        ops.pil_filter_name(Image.LANCZOS)


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
