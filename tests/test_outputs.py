"""Every output the node writes, read back by two independent decoders (Pillow and OpenCV), equals the map
the node rendered: pixel for pixel for PNG and raw, within a stated error for JPEG.

The rendered maps come from the real code path: the tiny build's graphs through ONNX Runtime in this
process, then the capability's own ``render``; the answers come over HTTP from a node on the same build.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.nodes import frame, in_process_backends, metadata, post
from vision_node.capabilities.depth import Depth
from vision_node.capabilities.pose import SKELETON_PALETTE, Pose, skeleton
from vision_node.capabilities.segmentation import _PALETTE, Segmentation
from vision_node.contract import FRAME_INPUT, ShapeBounds
from vision_node.errors import InputError
from vision_node.media import frames, png

CAPABILITIES = {"depth": Depth, "segmentation": Segmentation, "pose": Pose}
POSE_OPTIONS = {"person_threshold": "0", "keypoint_threshold": "0"}  # random weights: draw every person


@pytest.fixture(scope="module")
def rendered(tiny_build):
    """rendered(capability, options) -> the Rendered result the node's own code makes of frame()."""
    with in_process_backends(tiny_build[0]) as opened:

        def render(name: str, given: dict):
            capability = CAPABILITIES[name]({})
            options = capability.parse_options(given)
            f = frame()
            outputs = {k: v.copy() for k, v in opened[name][0].infer({FRAME_INPUT: f[None]}).items()}
            return capability.render(outputs, options, f.shape[:2]), options

        yield render


def pillow(body: bytes, mode: str | None = None) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    return np.asarray(image.convert(mode) if mode else image)


def opencv(body: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), flags)
    assert decoded is not None, "OpenCV could not decode the body"
    return decoded[..., ::-1] if decoded.ndim == 3 else decoded  # BGR -> RGB


def rgb_map(name: str, rendered, options) -> np.ndarray:
    """The RGB picture a consumer should see."""
    if name == "depth":
        return np.repeat(rendered.payload[..., None], 3, axis=2)
    if name == "segmentation":
        return _PALETTE[rendered.payload]
    return SKELETON_PALETTE[np.asarray(skeleton(rendered.payload, options))]


@pytest.mark.parametrize(
    "name, output, given",
    [
        ("depth", "controlnet", {}),  # channels=3 by default: a grey-palette PNG that loads as RGB
        ("segmentation", "palette", {}),
        ("pose", "skeleton", POSE_OPTIONS),
    ],
)
def test_rgb_png_outputs_load_as_the_rendered_rgb_map_in_pillow_and_opencv(client, rendered, name, output, given):
    r = post(client, f"/infer/{name}/{output}", frame(), **given)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    result, options = rendered(name, {"output": output, **given})
    want = rgb_map(name, result, options)
    assert Image.open(io.BytesIO(r.content)).mode == "P"  # indexed: one byte a pixel on the wire
    np.testing.assert_array_equal(pillow(r.content, "RGB"), want)
    np.testing.assert_array_equal(opencv(r.content), want)  # OpenCV expands the palette itself
    np.testing.assert_array_equal(opencv(r.content, cv2.IMREAD_COLOR), want)


@pytest.mark.parametrize(
    "name, output, given, dtype",
    [
        ("depth", "controlnet", {"channels": "1"}, np.uint8),
        ("depth", "png16", {}, np.uint16),
        ("segmentation", "classes", {}, np.uint8),
    ],
)
def test_single_channel_png_outputs_decode_to_the_rendered_map(client, rendered, name, output, given, dtype):
    r = post(client, f"/infer/{name}/{output}", frame(), **given)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    want = rendered(name, {"output": output, **given})[0].payload
    assert want.dtype == dtype and want.any()
    np.testing.assert_array_equal(pillow(r.content).astype(dtype), want)
    got = opencv(r.content)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_depth_raw8_is_the_rendered_8_bit_map_uncompressed(client, rendered):
    r = post(client, "/infer/depth/raw8", frame())
    meta = metadata(r)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert meta["dtype"] == "uint8" and meta["shape"] == [120, 160]
    want = rendered("depth", {"output": "raw8"})[0].payload
    np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(120, 160), want)
    # the same map as the ControlNet PNG's
    np.testing.assert_array_equal(pillow(post(client, "/infer/depth/controlnet", frame()).content, "L"), want)


@pytest.mark.parametrize(
    "name, given, mean_error",
    [
        ("depth", {}, 2.0),  # measured 0.57 (the tiny model's map at quality 90)
        ("depth", {"quality": "50"}, 4.0),  # measured 1.61
        ("pose", POSE_OPTIONS, 10.0),  # measured 6.36: thin coloured lines, chroma at half resolution
    ],
)
def test_jpeg_outputs_decode_alike_in_pillow_and_opencv_and_near_the_rendered_map(
    client, rendered, name, given, mean_error
):
    r = post(client, f"/infer/{name}/jpeg", frame(), **given)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    result, options = rendered(name, {"output": "jpeg", **given})
    want = rgb_map(name, result, options).astype(np.int16)
    by_pillow, by_opencv = pillow(r.content, "RGB").astype(np.int16), opencv(r.content, cv2.IMREAD_COLOR)
    assert np.abs(by_pillow - by_opencv).max() <= 1  # two libjpeg builds: at most rounding apart
    assert np.abs(by_pillow - want).mean() <= mean_error


def test_lower_jpeg_quality_means_fewer_bytes(client):
    sizes = [len(post(client, "/infer/depth/jpeg", frame(), quality=q).content) for q in (95, 60, 20)]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize(
    "path, given, words",
    [
        ("/infer/depth/png16", {"quality": "80"}, ["quality is for output=jpeg"]),
        ("/infer/depth/raw", {"channels": "1"}, ["channels is for output=controlnet"]),
        ("/infer/depth/jpeg", {"quality": "0"}, ["quality", "1..100"]),
        ("/infer/pose/skeleton", {"quality": "80"}, ["quality is for output=jpeg"]),
        ("/infer/segmentation/jpeg", {}, ["output", "palette, classes, raw"]),  # never class ids in JPEG
    ],
)
def test_output_options_that_do_not_apply_are_refused_by_name(client, path, given, words):
    r = post(client, path, frame(), **given)
    assert r.status_code == 400
    for word in words:
        assert word in r.json()["detail"]


# ---------------------------------------------------------------- the PNG writer itself


@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (61, 83)])
def test_png_writer_round_trips_every_layout_in_two_decoders(level, shape):
    rng = np.random.default_rng(level + shape[0])
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    deep = rng.integers(0, 65536, shape, dtype=np.uint16)
    colour = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for array in (grey, deep, colour):
        body = png.encode(array, level)
        np.testing.assert_array_equal(pillow(body).astype(array.dtype), array)
        np.testing.assert_array_equal(opencv(body), array)
    indexed = png.encode(grey, level, _PALETTE.tobytes())
    np.testing.assert_array_equal(pillow(indexed), grey)  # Pillow keeps the indices
    np.testing.assert_array_equal(pillow(indexed, "RGB"), _PALETTE[grey])
    np.testing.assert_array_equal(opencv(indexed), _PALETTE[grey])


def test_higher_png_levels_write_smaller_files():
    smooth = (np.add.outer(np.arange(300), np.arange(400)) // 4 % 256).astype(np.uint8)
    stored, fast, small = (len(png.encode(smooth, level)) for level in (0, 1, 9))
    assert stored > smooth.size > fast > small


def test_png_writer_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="no PNG layout"):
        png.encode(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="palette"):
        png.encode(np.zeros((4, 4), np.uint8), 1, bytes(769))
    with pytest.raises(ValueError, match="palette needs"):
        png.encode(np.zeros((4, 4), np.uint16), 1, png.GREY_PALETTE)


# ---------------------------------------------------------------- JPEG in, through libjpeg-turbo


BOUNDS = ShapeBounds(min_hw=(8, 8), max_hw=(400, 400))


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_frames_decode_to_the_same_pixels_as_pillow(progressive, subsampling):
    out = io.BytesIO()
    Image.fromarray(frame(90, 130)).save(out, "JPEG", quality=85, subsampling=subsampling, progressive=progressive)
    np.testing.assert_array_equal(
        frames.decode(out.getvalue(), "image/jpeg", None, None, BOUNDS), pillow(out.getvalue(), "RGB")
    )


def test_grey_jpeg_frame_decodes_to_rgb():
    out = io.BytesIO()
    Image.fromarray(frame(40, 50)[..., 0]).save(out, "JPEG")
    got = frames.decode(out.getvalue(), "image/jpeg", None, None, BOUNDS)
    assert got.shape == (40, 50, 3)
    np.testing.assert_array_equal(got, pillow(out.getvalue(), "RGB"))


def test_jpeg_that_is_not_one_or_is_cut_short_is_a_400_before_decoding():
    out = io.BytesIO()
    Image.fromarray(frame(90, 130)).save(out, "JPEG")
    with pytest.raises(InputError, match="not a JPEG"):
        frames.decode(png.encode(frame(9, 9)), "image/jpeg", None, None, BOUNDS)
    with pytest.raises(InputError, match="could not be decoded"):
        frames.decode(out.getvalue()[: len(out.getvalue()) // 2], "image/jpeg", None, None, BOUNDS)


@pytest.mark.parametrize("name", list(CAPABILITIES))
def test_every_output_answers_with_the_media_type_the_api_document_lists(client, name):
    capability = CAPABILITIES[name]
    documented = client.get("/openapi.json").json()["paths"][f"/infer/{name}/{{output}}"]["post"]
    listed = set(documented["responses"]["200"]["content"])
    for output in capability.outputs:
        r = post(client, f"/infer/{name}/{output}", frame(), **(POSE_OPTIONS if name == "pose" else {}))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == capability.media_types[output] and r.headers["content-type"] in listed
