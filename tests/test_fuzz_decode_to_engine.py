"""Property-based fuzzing (Hypothesis) of the frame path: bytes -> decode -> graph -> render -> encode.

Whatever the body and its labels, decoding either refuses it with a 4xx error or yields a frame
inside the bounds, which every capability's real graph (ONNX Runtime) runs with finite outputs
and every output format renders and encodes. No other exception may escape.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.nodes import in_process_backends
from vision_node.capabilities import CAPABILITY_CLASSES
from vision_node.contract import FRAME_INPUT
from vision_node.errors import NodeError
from vision_node.media import content_type, frames
from vision_node.serving.engines import load

MEDIA = ("image/jpeg", "image/png", content_type.RAW)


@pytest.fixture(scope="module")
def graphs(tiny_build):
    """{capability: (backend, capability object, bounds)} with the tiny graphs open."""
    served = load(tiny_build[0])
    with in_process_backends(tiny_build[0]) as opened:
        yield {
            name: (backend, CAPABILITY_CLASSES[name](served[name].options), served[name].bounds)
            for name, (backend, _) in opened.items()
        }


@st.composite
def bodies(draw):
    """(body, media type, width, height): images of any size, damaged or mislabelled, raw frames that lie, noise."""
    h, w = draw(st.integers(1, 800)), draw(st.integers(1, 1400))
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), np.uint8)
    kind = draw(st.sampled_from(("JPEG", "PNG", "raw", "noise")))
    if kind == "raw":
        body = pixels.tobytes()
        width = draw(st.one_of(st.just(str(w)), st.integers(-(2**40), 2**40).map(str), st.text(max_size=6)))
        height = draw(st.one_of(st.just(str(h)), st.integers(-(2**40), 2**40).map(str), st.text(max_size=6)))
        return body, content_type.RAW, width, height
    if kind == "noise":
        return draw(st.binary(max_size=4096)), draw(st.sampled_from(MEDIA)), None, None
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=kind)
    body = bytearray(out.getvalue())
    if draw(st.booleans()):  # damage: cut it, or flip bytes past the signature
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))]
        else:
            for _ in range(draw(st.integers(1, 8))):
                body[draw(st.integers(8, len(body) - 1))] = draw(st.integers(0, 255))
    media = draw(st.sampled_from(MEDIA)) if draw(st.integers(0, 4)) == 0 else f"image/{kind.lower()}"
    return bytes(body), media, None, None


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(case=bodies())
def test_any_body_is_refused_with_a_4xx_or_runs_through_every_graph_and_output(graphs, case):
    body, media, width, height = case
    bounds = next(iter(graphs.values()))[2]
    try:
        frame = frames.decode(body, media, width, height, bounds)
    except NodeError as err:
        assert 400 <= err.status < 500, err
        event(f"refused: {err.status}")
        return
    event("decoded: ran every graph and output")
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    bounds.check(*frame.shape[:2])
    for name, (backend, capability, _) in graphs.items():
        outputs = backend.infer({FRAME_INPUT: frame[None]})
        for key, value in outputs.items():
            assert value.dtype.kind != "f" or np.isfinite(value).all(), f"{name}: {key} not finite"
        for output in capability.outputs:
            options = capability.parse_options({"output": output})
            rendered = capability.render(outputs, options, frame.shape[:2])
            encoded = capability.encode(rendered, options, 1)
            assert len(encoded.body) > 0
