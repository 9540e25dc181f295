"""Unit tests of the node's parts that need no server: codecs, capabilities' rendering, config, engines."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vision_node import manifest
from vision_node.capabilities.base import Rendered
from vision_node.capabilities.depth import Depth
from vision_node.capabilities.pose import COCO17, COLOURS, LIMBS, OPENPOSE18, Pose, openpose18
from vision_node.config import Config
from vision_node.contract import ShapeBounds
from vision_node.errors import FrameRejected, InputError, StartupError, UnsupportedMediaType
from vision_node.media import content_type, frames, maps
from vision_node.serving.engines import load
from vision_node.sizing import Sizing

BOUNDS = ShapeBounds(min_hw=(8, 8), max_hw=(100, 200))


# ---------------------------------------------------------------- codecs


def test_content_type_parameters_are_parsed():
    assert content_type.parse('Application/Octet-Stream; width=4; Height="3"') == (
        "application/octet-stream",
        {"width": "4", "height": "3"},
    )
    assert content_type.parse(None) == ("", {})
    with pytest.raises(InputError, match="no value"):
        content_type.parse("image/png; output")
    # quoted strings as RFC 9110 has them: a ; inside quotes, escapes, spaces around =; a trailing ; is harmless
    assert content_type.parse('image/jpeg; range="0;9" ; output = "raw"; x="a\\"b";') == (
        "image/jpeg",
        {"range": "0;9", "output": "raw", "x": 'a"b'},
    )
    for malformed in ('image/jpeg; output="raw', "image/jpeg; a=1 b=2", 'image/jpeg; a="x"y'):
        with pytest.raises(InputError, match="malformed"):
            content_type.parse(malformed)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA"])
def test_png_of_any_mode_decodes_to_rgb_uint8(mode):
    img = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    frame = frames.decode(out.getvalue(), "image/png", None, None, BOUNDS)
    assert frame.shape == (20, 30, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, np.asarray(img.convert("RGB")))


def test_cmyk_jpeg_decodes_to_rgb():
    out = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(out, format="JPEG")
    frame = frames.decode(out.getvalue(), "image/jpeg", None, None, BOUNDS)
    assert frame.shape == (16, 16, 3) and frame[..., 0].mean() > 200 and frame[..., 1].mean() < 50


def test_raw_frame_is_a_zero_copy_view_of_the_body():
    body = bytearray(np.arange(10 * 12 * 3, dtype=np.uint8).tobytes())
    frame = frames.decode(body, content_type.RAW, "12", "10", BOUNDS)
    assert frame.shape == (10, 12, 3) and np.shares_memory(frame, np.frombuffer(body, np.uint8))


def test_decode_errors_map_to_their_statuses():
    with pytest.raises(UnsupportedMediaType):
        frames.decode(b"x", "text/plain", None, None, BOUNDS)
    with pytest.raises(FrameRejected, match="outside"):
        frames.decode(b"\0" * 30, content_type.RAW, "5", "2", BOUNDS)
    with pytest.raises(InputError, match="300 bytes"):
        frames.decode(b"\0" * 30, content_type.RAW, "10", "10", BOUNDS)


def test_png_encoder_modes():
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert Image.open(io.BytesIO(maps.png(ids, 1))).mode == "L"
    assert Image.open(io.BytesIO(maps.png(ids, 1, palette=bytes(768)))).mode == "P"
    assert Image.open(io.BytesIO(maps.png(np.dstack([ids] * 3), 1))).mode == "RGB"
    deep = Image.open(io.BytesIO(maps.png(ids.astype(np.uint16) * 5000, 1)))
    np.testing.assert_array_equal(np.asarray(deep), ids.astype(np.uint16) * 5000)


# ---------------------------------------------------------------- capabilities


def test_depth_flat_frame_does_not_divide_by_zero():
    depth = Depth({})
    outputs = {"depth": np.full((1, 4, 5), 3.0, np.float32), "depth_min": np.array([3.0]), "depth_max": np.array([3.0])}
    rendered = depth.render(outputs, depth.parse_options({}), (4, 5))
    assert rendered.payload.dtype == np.uint8 and not rendered.payload.any()


def test_openpose18_reorders_coco17_and_adds_the_neck():
    kps = np.arange(17 * 2, dtype=np.float32).reshape(1, 17, 2)
    scores = np.linspace(0.1, 0.9, 17, dtype=np.float32)[None]
    xy, s = openpose18(kps, scores)
    assert xy.shape == (1, 18, 2) and s.shape == (1, 18)
    for j, name in enumerate(OPENPOSE18):
        if name == "neck":
            np.testing.assert_allclose(xy[0, j], (kps[0, 5] + kps[0, 6]) / 2)
            assert s[0, j] == pytest.approx(min(scores[0, 5], scores[0, 6]))
        else:
            np.testing.assert_array_equal(xy[0, j], kps[0, COCO17.index(name)])


def _person(points: dict[str, tuple[float, float]]):
    kps = np.zeros((1, 17, 2), np.float32)
    scores = np.zeros((1, 17), np.float32)
    for name, xy in points.items():
        kps[0, COCO17.index(name)] = xy
        scores[0, COCO17.index(name)] = 0.9
    return {
        "boxes": np.array([[0, 0, 100, 100]], np.float32),
        "box_scores": np.array([0.9], np.float32),
        "keypoints": kps,
        "keypoint_scores": scores,
        "frame_hw": (100, 120),
    }


def test_skeleton_draws_openpose_colours_limbs_at_60_percent_and_skips_invisible_points():
    people = _person({"left_shoulder": (80.0, 40.0), "right_shoulder": (40.0, 40.0), "nose": (60.0, 20.0)})
    pose = Pose({})
    encoded = pose.encode(Rendered(people), pose.parse_options({"output": "skeleton"}), 1)
    img = np.asarray(Image.open(io.BytesIO(encoded.body)).convert("RGB"))
    assert img.shape == (100, 120, 3)
    neck = OPENPOSE18.index("neck")
    assert tuple(img[40, 60]) == COLOURS[neck]  # the neck disc at the shoulders' midpoint
    assert tuple(img[40, 80]) == COLOURS[OPENPOSE18.index("left_shoulder")]
    limb = LIMBS.index((neck, OPENPOSE18.index("right_shoulder")))
    assert tuple(img[40, 50]) == tuple(int(c * 0.6) for c in COLOURS[limb])  # neck-right shoulder limb
    assert not img[90:, :].any() and not img[:, :30].any()  # nothing drawn where no keypoint is


def test_pose_json_zeroes_invisible_openpose_keypoints():
    people = _person({"nose": (10.0, 12.0)})
    pose = Pose({})
    body = json.loads(pose.encode(Rendered(people), pose.parse_options({}), 1).body)
    openpose = np.array(body["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    np.testing.assert_allclose(openpose[0], [10.0, 12.0, 0.9], atol=1e-3)
    assert not openpose[1:].any()


# ---------------------------------------------------------------- config


def test_config_reads_environment_and_flags_win():
    env = {"VISION_NODE_PORT": "9000", "VISION_NODE_CAPABILITIES": "depth,pose", "VISION_NODE_ACCESS_LOG": "true"}
    config = Config.load(env)
    assert config.port == 9000 and config.capabilities == ("depth", "pose") and config.access_log is True
    assert Config.load(env, port="9100").port == 9100
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1


@pytest.mark.parametrize(
    "env, words",
    [
        ({"VISION_NODE_PORT": "eighty"}, ["VISION_NODE_PORT", "'eighty'"]),
        ({"VISION_NODE_PORT": "70000"}, ["port"]),
        ({"VISION_NODE_CAPABILITIES": "depth,flow"}, ["capabilities", "flow"]),
        ({"VISION_NODE_DEVICE": "tpu"}, ["device", "tpu"]),
        ({"VISION_NODE_ACCESS_LOG": "maybe"}, ["VISION_NODE_ACCESS_LOG"]),
        ({"VISION_NODE_RUNNER_APPS": "flow=acme/flow"}, ["runner_apps", "CAP=APP", "flow=acme/flow"]),
        ({"VISION_NODE_CAPABILITY_NAMES": "depth="}, ["capability_names", "CAP=NAME", "depth="]),
        ({"VISION_NODE_CAPABILITY_NAMES": "depth"}, ["capability_names", "CAP=NAME", "'depth'"]),
        ({"VISION_NODE_COMBINATIONS": "depth"}, ["combinations", "'depth'"]),
        ({"VISION_NODE_COMBINATIONS": "depth+depth"}, ["combinations", "depth+depth"]),
        ({"VISION_NODE_COMBINATIONS": "depth+flow"}, ["combinations", "depth+flow"]),
    ],
)
def test_bad_configuration_names_the_key(env, words):
    with pytest.raises(StartupError) as err:
        Config.load(env)
    for word in words:
        assert word in str(err.value)


def test_capability_pairs_map_names_and_apps_with_defaults():
    config = Config.load(
        {"VISION_NODE_CAPABILITY_NAMES": "depth=vision-depth", "VISION_NODE_RUNNER_APPS": "pose=acme/pose=v2"}
    )
    assert config.registered_name("depth") == "vision-depth" and config.registered_name("pose") == "pose"
    assert config.runner_app("pose") == "acme/pose=v2" and config.runner_app("depth") == "vision/depth"


# ---------------------------------------------------------------- engines


@pytest.fixture
def engines_copy(tiny_build, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(tiny_build[0], out)
    return out


def test_engines_load_checks_and_describes_every_graph(engines_copy):
    served = load(engines_copy)
    assert list(served) == ["depth", "segmentation", "pose"]
    assert served["pose"].weights == "demo" and served["depth"].bounds.max_hw == (720, 1280)
    assert load(engines_copy, ("pose",)).keys() == {"pose"}


def test_a_flipped_byte_stops_start_up_naming_the_file(engines_copy):
    path = engines_copy / "depth-98x98-aspect.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(data)
    with pytest.raises(StartupError, match=r"depth-98x98-aspect\.onnx: SHA-256"):
        load(engines_copy)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "pose-128x128-3p.onnx").unlink(), ["pose-128x128-3p.onnx", "missing"]),
        (lambda d: (d / "segmentation-64x64.onnx").write_bytes(b"x"), ["segmentation-64x64.onnx", "bytes"]),
        (lambda d: (d / "manifest.json").unlink(), ["manifest.json", "not found", "vision-node-build"]),
        (lambda d: (d / "manifest.json").write_text("{"), ["manifest.json", "unreadable"]),
        (lambda d: shutil.rmtree(d), ["engines directory not found"]),
    ],
)
def test_missing_or_damaged_artefacts_stop_start_up_with_a_reason(engines_copy, damage, words):
    damage(engines_copy)
    with pytest.raises(StartupError) as err:
        load(engines_copy)
    for word in words:
        assert word in str(err.value)


def test_manifest_paths_outside_the_engines_directory_are_refused(engines_copy):
    data = json.loads((engines_copy / "manifest.json").read_text())
    data["capabilities"]["depth"]["graphs"][0]["path"] = "../../etc/passwd"
    (engines_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StartupError, match="outside the engines directory"):
        load(engines_copy)


def test_a_capability_missing_from_the_manifest_is_named(engines_copy):
    data = manifest.load(engines_copy)
    del data["capabilities"]["pose"]
    (engines_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StartupError, match="has no pose"):
        load(engines_copy, ("depth", "pose"))


def test_graph_for_picks_the_nearest_aspect_ratio(engines_copy):
    served = load(engines_copy)["depth"]
    square = served.graphs[0]
    square = dataclasses.replace(served.graphs[0], sizing=Sizing.fixed(518, 518))
    wide = dataclasses.replace(square, sizing=Sizing.fixed(518, 924))
    tall = dataclasses.replace(square, sizing=Sizing.fixed(924, 518))
    served = dataclasses.replace(served, graphs=(square, wide, tall))
    assert served.graph_for(720, 1280) is wide
    assert served.graph_for(1280, 720) is tall
    assert served.graph_for(500, 560) is square


def test_backend_refuses_a_manifest_with_unresolved_output_dimensions(tiny_build):
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend

    outputs = ({"name": "boxes", "dtype": "float32", "shape": ["batch", "TopKbox_scores_dim_1", 4]},)
    with pytest.raises(StartupError, match=r"pose\.onnx: output boxes has unresolved dimensions.*rebuild"):
        OnnxRuntimeBackend(tiny_build[0] / "pose.onnx", outputs, BOUNDS)


def test_backend_outputs_are_views_into_buffers_allocated_once(tiny_build):
    from vision_node.contract import FRAME_INPUT
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
    from vision_node.samples import frames

    served = load(tiny_build[0], ("segmentation",))["segmentation"]
    graph = served.graphs[0]
    with OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds) as backend:
        buffer = backend._buffers["classes"]
        assert buffer.size == 720 * 1280  # the largest frame the bounds allow, batch 1
        small = backend.infer({FRAME_INPUT: frames(64, 80)})["classes"]
        large = backend.infer({FRAME_INPUT: frames(200, 300)})["classes"]
        assert small.shape == (1, 64, 80) and large.shape == (1, 200, 300)
        assert np.shares_memory(large, buffer) and backend._buffers["classes"] is buffer
        with pytest.raises(ValueError, match="outside"):
            backend.infer({FRAME_INPUT: frames(32, 32)})
    assert backend.device == "closed"
    backend.__exit__(None, None, None)  # closing twice is safe


def test_outputs_the_caller_owns_are_new_arrays_the_next_frame_leaves_alone(tiny_build):
    from vision_node.contract import FRAME_INPUT
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
    from vision_node.samples import frames

    served = load(tiny_build[0], ("depth",))["depth"]
    graph = served.graphs[0]
    with OnnxRuntimeBackend(graph.path, graph.outputs, served.bounds) as backend:
        first, second = frames(64, 80, seed=1), frames(64, 80, seed=2)
        want = {k: v.copy() for k, v in backend.infer({FRAME_INPUT: first}).items()}
        got = backend.infer({FRAME_INPUT: first}, owned={"depth"})
        assert not np.shares_memory(got["depth"], backend._buffers["depth"]) and got["depth"].shape == (1, 64, 80)
        assert np.shares_memory(got["depth_max"], backend._buffers["depth_max"])  # the others: the buffers, as ever
        np.testing.assert_array_equal(got["depth"], want["depth"])
        other = backend.infer({FRAME_INPUT: second}, owned={"depth"})["depth"]
        backend.infer({FRAME_INPUT: second})
        assert not np.array_equal(other, want["depth"])  # the frames differ, so an overwrite would show
        np.testing.assert_array_equal(got["depth"], want["depth"])


@pytest.mark.parametrize(
    ("capability", "given", "name"),
    [("depth", {"output": "raw"}, "depth"), ("segmentation", {"output": "raw"}, "classes")],
)
def test_a_frame_is_rendered_from_the_requests_own_arrays_after_the_next_frame_ran(tiny_build, capability, given, name):
    """The session asks the backend for every output in arrays the request owns, so rendering runs after the worker
    has moved on: a request rendered after the next frame ran is its own frame's, not the next one's."""
    import asyncio
    import time

    from vision_node.capabilities import CAPABILITY_CLASSES
    from vision_node.contract import FRAME_INPUT
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
    from vision_node.samples import frames
    from vision_node.serving.session import CapabilitySession

    served = load(tiny_build[0], (capability,))[capability]
    capability = CAPABILITY_CLASSES[capability](served.options)
    options = capability.parse_options(given)
    session = CapabilitySession(served, capability, lambda g: OnnxRuntimeBackend(g.path, g.outputs, served.bounds), 4)
    session.open()
    first, second = frames(64, 80, seed=1)[0], frames(64, 80, seed=2)[0]
    try:
        with OnnxRuntimeBackend(served.graphs[0].path, served.graphs[0].outputs, served.bounds) as reference:
            want = reference.infer({FRAME_INPUT: first[None]})[name][0].copy()

        async def one_after_the_other():
            deadline = time.monotonic() + 60
            return await session.run(first, options, deadline), await session.run(second, options, deadline)

        answer, later = asyncio.run(one_after_the_other())
        rendered, rendered_later = session.render(answer, options), session.render(later, options)
    finally:
        session.close()
    assert not np.array_equal(rendered_later.payload, want)
    np.testing.assert_array_equal(rendered.payload, want)


def test_a_frame_outside_the_bounds_is_refused_by_the_session_and_never_counts_as_a_backend_failure(tiny_build):
    """Whoever hands the session a frame (the HTTP decoder, a live stream): outside the bounds is 422, and four such
    frames in a row leave the node as it was (a backend failure would count, and the third would stop the node)."""
    import asyncio
    import time

    from vision_node.capabilities import CAPABILITY_CLASSES
    from vision_node.runtime.onnxruntime import OnnxRuntimeBackend
    from vision_node.samples import frames
    from vision_node.serving.session import CapabilitySession

    served = load(tiny_build[0], ("depth",))["depth"]
    capability = CAPABILITY_CLASSES["depth"](served.options)
    fatal, failures = [], []
    session = CapabilitySession(
        served,
        capability,
        lambda g: OnnxRuntimeBackend(g.path, g.outputs, served.bounds),
        0,
        on_fatal=fatal.append,
        on_failure=failures.append,
    )
    session.open()
    options = capability.parse_options({})
    too_small, too_wide = frames(32, 32)[0], np.zeros((64, served.bounds.max_hw[1] + 2, 3), np.uint8)

    async def scenario():
        refused = []
        for frame in (too_small, too_wide, too_small, too_wide):
            with pytest.raises(FrameRejected, match="outside the graph's bounds") as caught:
                session.submit(frame, options, time.monotonic() + 10, streamed=True)
            refused.append(caught.value.status)
        # streamed frames are admitted with their stream, not by the request queue (here of size 0)
        jobs = [
            session.submit(frames(64, 80, seed=i)[0], options, time.monotonic() + 30, streamed=True) for i in range(3)
        ]
        outcomes = [await session.result(job) for job in jobs]
        return refused, outcomes

    try:
        refused, outcomes = asyncio.run(scenario())
    finally:
        session.close()
    assert refused == [422] * 4 and not fatal and not failures and session.failures == 0
    assert len(outcomes) == 3 and session.pending == 0 and session.streamed == 0


def test_an_unexpected_error_answers_an_incident_id_and_keeps_its_text_in_the_log(caplog):
    import asyncio

    from starlette.requests import Request

    from vision_node.http.errors import unexpected as _unexpected

    request = Request({"type": "http", "method": "POST", "path": "/infer/depth", "headers": []})
    response = asyncio.run(_unexpected(request, RuntimeError("/root/secret/path.onnx: bad thing")))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"] == "internal_error"
    assert "secret" not in body["detail"] and "RuntimeError" not in body["detail"]
    case = body["detail"].split("incident ")[1][:8]
    assert any(case in r.getMessage() and "bad thing" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
