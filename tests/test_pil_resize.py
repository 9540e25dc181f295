"""The graphs' resize against Pillow itself: equal to the last bit, in eager torch and through ONNX Runtime."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from skimage import data

from vision_node import samples
from vision_node.builder import pil_resize

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}

# (input h×w, output h×w): the graphs' own pairs (16:9 frames to SegFormer's square and to Depth
# Anything's keep-aspect size), portrait frames (Pillow goes vertical-first), upscaling, 1:1, the 4K
# edge of the bounds, and odd sizes.
CASES = [
    ((1080, 1920), (512, 512)),
    ((720, 1280), (518, 924)),
    ((1920, 1080), (512, 512)),
    ((1280, 720), (924, 518)),
    ((150, 100), (98, 98)),
    ((64, 64), (640, 640)),
    ((97, 131), (518, 518)),
    ((512, 512), (512, 512)),
    ((2160, 3840), (518, 924)),
    ((333, 517), (700, 1000)),
]


def pillow(frame: np.ndarray, out_hw, name: str) -> np.ndarray:
    """Pillow's resize of an HWC uint8 frame, as CHW."""
    return np.asarray(Image.fromarray(frame).resize(out_hw[::-1], FILTERS[name])).transpose(2, 0, 1)


def photo(in_hw) -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize(in_hw[::-1], Image.BICUBIC))


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize(("in_hw", "out_hw"), CASES)
def test_resize_like_pil_equals_pillow_bit_for_bit(in_hw, out_hw, name):
    for frame in (photo(in_hw), samples.frame(*in_hw, seed=3)):
        got = pil_resize.resize_like_pil(torch.from_numpy(frame.copy())[None], out_hw, name)[0]
        assert np.array_equal(got.numpy(), pillow(frame, out_hw, name))


@pytest.mark.parametrize("name", FILTERS)
def test_resize_equals_pillow_at_random_size_pairs(name):
    rng = np.random.default_rng(11)
    for seed in range(40):
        in_hw, out_hw = tuple(rng.integers(8, 300, 2)), tuple(rng.integers(8, 300, 2))
        frame = samples.frame(*in_hw, seed=seed)
        got = pil_resize.resize_like_pil(torch.from_numpy(frame)[None], out_hw, name)[0]
        assert np.array_equal(got.numpy(), pillow(frame, out_hw, name)), (in_hw, out_hw)


def test_the_pass_order_is_pillows_and_it_matters():
    # A portrait frame shrinks its height by more than twice its width: Pillow 13 goes vertical-first.
    frame, out_hw = photo((1920, 1080)), (512, 512)
    want = pillow(frame, out_hw, "bilinear")
    x = torch.from_numpy(frame.copy())[None].float()
    size = (torch.tensor(512), torch.tensor(512))
    vertical = pil_resize._resize(x, *size, 2, torch.tensor(True))[0].numpy()
    horizontal = pil_resize._resize(x, *size, 2, torch.tensor(False))[0].numpy()
    assert np.array_equal(vertical, want)
    assert (horizontal != want).mean() > 0.01  # the other order rounds its intermediate differently


def test_taps_are_pillows_fixed_point_coefficients():
    for (in_size, out_size), support_x2 in [((1920, 512), 2), ((512, 1920), 2), ((1080, 518), 4), ((512, 512), 2)]:
        index, kk = pil_resize.taps(torch.tensor(in_size), torch.tensor(out_size), support_x2)
        assert index.min() >= 0 and index.max() < in_size
        # rounded one by one, each row sums to 2^22 within half a unit per tap
        assert (kk.sum(dim=1) - (1 << 22)).abs().max() <= kk.shape[1] / 2
    index, kk = pil_resize.taps(torch.tensor(64), torch.tensor(64), 2)
    assert torch.equal(kk.max(dim=1).values, torch.full((64,), 1 << 22))  # 1:1 is the identity
    assert torch.equal(index.gather(1, kk.argmax(dim=1, keepdim=True))[:, 0], torch.arange(64))


def test_exported_resize_equals_pillow_in_onnx_runtime_for_every_frame_shape(tmp_path):
    class Resize(torch.nn.Module):
        def forward(self, frames):
            return pil_resize.resize_like_pil(frames, (512, 512), "bilinear")

    path = tmp_path / "resize.onnx"
    example = torch.zeros((1, 720, 1280, 3), dtype=torch.uint8)
    axes = {"frames": {0: "batch", 1: "height", 2: "width"}}
    torch.onnx.export(
        Resize(),
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["frames"],
        output_names=["x"],
        dynamic_axes=axes,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for in_hw in [(1080, 1920), (1920, 1080), (300, 500), (512, 512)]:  # both orders, up and down, 1:1
        frames = np.stack([photo(in_hw), samples.frame(*in_hw, seed=5)])
        got = session.run(None, {"frames": frames})[0]
        assert np.array_equal(got, np.stack([pillow(f, (512, 512), "bilinear") for f in frames])), in_hw


def test_filter_name_refuses_filters_the_graph_cannot_run():
    assert pil_resize.filter_name(3) == "bicubic"
    assert pil_resize.filter_name(Image.BILINEAR) == "bilinear"
    with pytest.raises(ValueError, match="not supported in-graph"):
        pil_resize.filter_name(Image.LANCZOS)
