"""The model resolution per frame: the processor's rule, in the node (Python) and in the graph (ONNX)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers.models.dpt.image_processing_pil_dpt import get_resize_output_image_size

from tests.conftest import TINY_BOUNDS
from vision_node.builder.errors import BuildError
from vision_node.builder.model_size import ModelSize
from vision_node.contract import ShapeBounds
from vision_node.sizing import Sizing

DEPTH_ANYTHING = Sizing(518, 518, keep_aspect_ratio=True, multiple=14)  # its preprocessor_config.json
TINY_DEPTH = Sizing(98, 98, keep_aspect_ratio=True, multiple=14)


def _processor(sizing: Sizing, height: int, width: int) -> tuple[int, int]:
    """transformers' own function (what DPTImageProcessor resizes to)."""
    size = get_resize_output_image_size(
        np.empty((3, height, width), np.uint8), (sizing.height, sizing.width), sizing.keep_aspect_ratio, sizing.multiple
    )
    return size.height, size.width


def test_the_issue_examples():
    assert DEPTH_ANYTHING.model_size(300, 451) == (350, 518)
    assert DEPTH_ANYTHING.model_size(360, 640) == (294, 518)
    assert DEPTH_ANYTHING.model_size(1080, 1920) == (518, 924)
    assert Sizing.fixed(518, 518).model_size(1080, 1920) == (518, 518)


@pytest.mark.parametrize("sizing", [DEPTH_ANYTHING, TINY_DEPTH, Sizing(384, 384, True, 32), Sizing(392, 518, True, 14)])
def test_node_sizes_equal_the_processor_on_random_frames(sizing):
    rng = np.random.default_rng(0)
    sizes = list(zip(rng.integers(1, 2161, 3000).tolist(), rng.integers(1, 3841, 3000).tolist()))
    assert [sizing.model_size(h, w) for h, w in sizes] == [_processor(sizing, h, w) for h, w in sizes]


def _size_graph(sizing: Sizing, bounds: ShapeBounds, path) -> tuple[ModelSize, ort.InferenceSession]:
    """ModelSize alone, exported as the depth graph exports it: frames in, (height, width) out."""

    class Sizes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.size = ModelSize(sizing, bounds)

        def forward(self, frames):
            h, w = self.size(frames)
            return torch.stack([h, w])

    module = Sizes()
    torch.onnx.export(
        module,
        (torch.zeros(1, 64, 64, 3, dtype=torch.uint8),),
        str(path),
        dynamo=False,
        input_names=["frames"],
        dynamic_axes={"frames": {1: "height", 2: "width"}},
    )
    return module.size, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("sizing", [DEPTH_ANYTHING, TINY_DEPTH])
def test_the_graph_picks_the_processors_size_at_every_half_and_elsewhere(sizing, tmp_path):
    size, session = _size_graph(sizing, TINY_BOUNDS, tmp_path / "size.onnx")
    corrected = [(k // size.key_stride, k % size.key_stride) for k in size.keys.tolist()]
    assert corrected, "exact halves exist in these bounds: the float64 processor rounds some of them oddly"
    rng = np.random.default_rng(1)
    (min_h, min_w), (max_h, max_w) = TINY_BOUNDS.min_hw, TINY_BOUNDS.max_hw
    sampled = list(zip(rng.integers(min_h, max_h + 1, 300).tolist(), rng.integers(min_w, max_w + 1, 300).tolist()))
    corners = [(min_h, min_w), (min_h, max_w), (max_h, min_w), (max_h, max_w)]
    for h, w in corrected + sampled + corners:
        got = tuple(session.run(None, {"frames": np.zeros((1, h, w, 3), np.uint8)})[0].tolist())
        assert got == _processor(sizing, h, w), (h, w)


def test_the_integer_rule_alone_would_miss_the_halves_the_corrections_fix():
    size = ModelSize(DEPTH_ANYTHING, ShapeBounds())
    h, w = divmod(size.keys[0].item(), size.key_stride)
    rule = tuple(int(v) for v in size.rule(torch.tensor(h), torch.tensor(w)))
    assert rule != _processor(DEPTH_ANYTHING, h, w) == DEPTH_ANYTHING.model_size(h, w)
    assert len(size.keys) < 1000  # a few hundred frame sizes among the ~8 million the bounds allow


def test_bounds_that_allow_a_zero_pixel_side_are_refused():
    with pytest.raises(BuildError, match=r"allow a 64x\d+ frame, for which the processor.*zero-pixel side"):
        ModelSize(DEPTH_ANYTHING, ShapeBounds(min_hw=(64, 64), max_hw=(128, 8192)))


def test_a_fixed_sizing_ignores_the_frame():
    size = ModelSize(Sizing.fixed(64, 96), TINY_BOUNDS)
    assert size(torch.zeros(1, 300, 100, 3, dtype=torch.uint8)) == (64, 96) and size.keys.numel() == 0


def test_sizing_round_trips_through_the_manifest():
    for sizing in (DEPTH_ANYTHING, Sizing.fixed(518, 924)):
        assert Sizing.from_dict(sizing.as_dict()) == sizing


def test_a_fixed_depth_resolution_stays_an_option_and_is_reported(tmp_path):
    from tests.conftest import tiny_plan
    from vision_node import manifest
    from vision_node.builder import pipeline
    from vision_node.serving.engines import describe, load

    plan = tiny_plan(tmp_path, resolutions={"depth": [(98, 98)]}, verify_sizes=((90, 160), (150, 100)), fp16=False)
    entry = pipeline.build_capability("depth", plan)
    assert all(c["ok"] and not c["skipped"] for c in entry.verification.checks)
    assert entry.graphs[0].path == "depth-98x98.onnx"
    assert entry.as_dict()["graphs"][0]["sizing"] == {"mode": "fixed", "size": [98, 98], "multiple": 1}
    manifest.write(tmp_path, {"depth": entry})
    served = load(tmp_path)["depth"]
    assert served.graph_for(90, 160).model_size(90, 160) == (98, 98)
    assert describe(served)["graphs"][0]["resolution_mode"] == "fixed"


BUDGETED = Sizing(518, 518, keep_aspect_ratio=True, multiple=14, max_patches=2 * 37 * 37)  # the default build's
TINY_BUDGETED = Sizing(98, 98, keep_aspect_ratio=True, multiple=14, max_patches=2 * 7 * 7)


def test_the_patch_budget_caps_the_frames_the_processor_would_run_at_full_width():
    # The issue's frame: the processor keeps its 518-pixel side and runs at 518x3836 (10,138 patches).
    assert _processor(BUDGETED, 518, 3840) == (518, 3836)
    assert BUDGETED.model_size(518, 3840) == (266, 1988) and BUDGETED.budget_applies(518, 3840)
    assert BUDGETED.model_size(3840, 518) == (1988, 266)  # portrait: the same rule on the other axis
    for h, w in [(1080, 1920), (720, 1280), (2160, 3840), (299, 1920), (64, 1920)]:  # within the budget
        assert BUDGETED.model_size(h, w) == _processor(BUDGETED, h, w) and not BUDGETED.budget_applies(h, w)


def test_over_the_budget_the_size_keeps_the_aspect_ratio_and_fills_the_budget():
    rng = np.random.default_rng(2)
    sizes = list(zip(rng.integers(64, 2161, 4000).tolist(), rng.integers(64, 3841, 4000).tolist()))
    over = [(h, w) for h, w in sizes if BUDGETED.budget_applies(h, w)]
    assert len(over) > 100
    for h, w in over:
        mh, mw = BUDGETED.model_size(h, w)
        n, k = max(mh, mw) // 14, min(mh, mw) // 14
        long, short = max(h, w), min(h, w)
        assert n * k <= BUDGETED.max_patches and n * n * short <= BUDGETED.max_patches * long
        assert (n + 1) ** 2 * short > BUDGETED.max_patches * long  # n is the largest that fits
        assert k == max(n * short // long, 1) and (mh >= mw) == (h > w)
        assert n * k > 0.9 * BUDGETED.max_patches  # the budget is used, not squandered


@pytest.mark.parametrize("sizing", [BUDGETED, TINY_BUDGETED])
def test_the_graph_applies_the_patch_budget_exactly_as_the_node_reports_it(sizing, tmp_path):
    size, session = _size_graph(sizing, TINY_BOUNDS, tmp_path / "size.onnx")
    rng = np.random.default_rng(3)
    (min_h, min_w), (max_h, max_w) = TINY_BOUNDS.min_hw, TINY_BOUNDS.max_hw
    sampled = list(zip(rng.integers(min_h, max_h + 1, 300).tolist(), rng.integers(min_w, max_w + 1, 300).tolist()))
    examples = sizing.budget_examples(TINY_BOUNDS.max_hw)
    assert examples
    capped = 0
    for h, w in examples + sampled + [(min_h, max_w), (max_h, min_w), (sizing.height, max_w)]:
        got = tuple(session.run(None, {"frames": np.zeros((1, h, w, 3), np.uint8)})[0].tolist())
        assert got == sizing.model_size(h, w), (h, w)
        capped += sizing.budget_applies(h, w)
    assert capped >= 2


def test_a_budgeted_sizing_round_trips_and_says_so():
    assert Sizing.from_dict(BUDGETED.as_dict()) == BUDGETED and BUDGETED.as_dict()["max_patches"] == 2738
    assert "at most 2738 patches of 14x14" in BUDGETED.describe()
    assert "max_patches" not in DEPTH_ANYTHING.as_dict() and not Sizing.fixed(518, 518).budgeted
