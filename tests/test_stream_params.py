"""A stream's params (vision_node.streams.params): the HTTP option names from JSON, the video's own, the bounds."""

from __future__ import annotations

import pytest

from vision_node.capabilities import Depth, Pose, Segmentation
from vision_node.contract import ShapeBounds
from vision_node.errors import InputError
from vision_node.streams import params

BOUNDS = ShapeBounds(min_hw=(64, 64), max_hw=(720, 1280))


def test_json_values_become_the_capabilitys_own_options_and_each_update_merges_over_the_last():
    depth = Depth({})
    first = params.parse(depth, BOUNDS, {"smooth": 0.5, "range": [0, 10], "width": 512, "height": 288})
    assert first.options["smooth"] == 0.5 and first.options["range"] == (0.0, 10.0)
    assert first.options["output"] == "controlnet" and first.size == (288, 512) and first.max_framerate == 24.0
    second = params.parse(depth, BOUNDS, {"max_framerate": "30", "range": None}, first)  # null: back to default
    assert second.options["smooth"] == 0.5 and second.options["range"] is None and second.max_framerate == 30.0
    assert second.size == (288, 512)
    pose = params.parse(Pose({}), BOUNDS, {"keypoint_threshold": 0.2, "person_threshold": 0})
    assert pose.options["output"] == "skeleton" and pose.options["keypoint_threshold"] == 0.2
    assert params.parse(Segmentation({}), BOUNDS, None).options["output"] == "palette"


@pytest.mark.parametrize(
    "given, words",
    [
        ({"output": "raw"}, "output=raw: a stream carries video"),
        ({"output": "json"}, "expected one of controlnet"),  # depth has no json output: its own parser says so
        ({"sharpness": 3}, "unknown option sharpness"),
        ({"width": 512}, "come together"),
        ({"width": 511, "height": 288}, "even"),
        ({"width": 4096, "height": 2160}, "outside the graph's bounds"),
        ({"max_framerate": 0}, "1..60"),
        ({"smooth": {"a": 1}}, "expected a string or a number"),
        ([1, 2], "JSON object"),
    ],
)
def test_a_bad_param_is_an_input_error_that_names_it(given, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(".", r"\.")):
        params.parse(Depth({}), BOUNDS, given)


def test_a_refused_update_leaves_the_streams_params_as_they_were():
    before = params.parse(Depth({}), BOUNDS, {"smooth": 0.5})
    with pytest.raises(InputError):
        params.parse(Depth({}), BOUNDS, {"smooth": 5}, before)
    assert before.given == {"smooth": "0.5"}


@pytest.mark.parametrize(
    "size, fitted",
    [
        ((720, 1280), (720, 1280)),  # within the bounds: as it is
        ((289, 403), (288, 404)),  # odd sizes: even ones (4:2:0 video), a pixel off at most
        ((1080, 1920), (720, 1280)),  # too large: scaled down, aspect kept
        ((1440, 1920), (720, 960)),
        ((32, 48), (64, 96)),  # too small: scaled up
        ((64, 4000), None),  # no size within the bounds keeps this aspect
    ],
)
def test_an_input_outside_the_bounds_is_fitted_into_them_keeping_its_aspect(size, fitted):
    assert params.fit(*size, BOUNDS) == fitted
