"""The pytrickle adapter with pytrickle's own VideoFrame, on the tiny engines (CPU, ONNX Runtime)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("pytrickle", reason="the stream extra: pip install -e '.[stream]'")
import torch  # noqa: E402
from pytrickle.frames import VideoFrame  # noqa: E402

from node.capabilities.segmentation import ADE20K_PALETTE  # noqa: E402
from node.contract import FRAME_INPUT  # noqa: E402
from node.errors import InputError, NotFound  # noqa: E402
from node.livepeer.streaming import ConditioningProcessor  # noqa: E402
from tests.nodes import in_process_backends  # noqa: E402


def test_frames_become_conditioning_maps_and_params_switch_per_stream(tiny_build):
    pixels = np.random.default_rng(0).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    frame = VideoFrame(torch.from_numpy(pixels).float() / 255, timestamp=3000, time_base=Fraction(1, 90000))

    async def scenario():
        processor = ConditioningProcessor(tiny_build[0], capability="segmentation")
        await processor.ensure_model_loaded()
        try:
            palette = await processor.process_video_async(frame)
            await processor.update_params({"output": "classes"})
            classes = await processor.process_video_async(frame)
            await processor.update_params({"capability": "depth", "channels": 1})
            depth = await processor.process_video_async(frame)
            await processor.update_params({"capability": "pose", "person_threshold": 0, "keypoint_threshold": 0})
            pose = await processor.process_video_async(frame)
            with pytest.raises(InputError, match="stream carries images"):
                await processor.update_params({"capability": "depth", "output": "raw"})
            with pytest.raises(NotFound):
                await processor.update_params({"capability": "optical-flow"})
            assert processor.capability == "pose"  # a refused update changes nothing
            return palette, classes, depth, pose
        finally:
            await processor.close()

    palette, classes, depth, pose = asyncio.run(scenario())
    with in_process_backends(tiny_build[0]) as direct:
        want = direct["segmentation"][0].infer({FRAME_INPUT: pixels})["classes"][0]
    assert classes.timestamp == 3000 and classes.time_base == Fraction(1, 90000)
    assert classes.tensor.dtype == torch.uint8 and tuple(classes.tensor.shape) == (1, 96, 128, 1)
    np.testing.assert_array_equal(classes.tensor[0, ..., 0].numpy(), want)
    np.testing.assert_array_equal(palette.tensor[0].numpy(), np.array(ADE20K_PALETTE, np.uint8)[want])
    assert tuple(depth.tensor.shape) == (1, 96, 128, 1) and depth.tensor.max() == 255 and depth.tensor.min() == 0
    assert tuple(pose.tensor.shape) == (1, 96, 128, 3) and pose.tensor.any()  # skeletons drawn


def test_depth_smoothing_keeps_its_state_in_the_stream(tiny_build):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (1, 96, 128, 3), dtype=np.uint8) for _ in range(2)]
    frames = [VideoFrame(torch.from_numpy(p).float() / 255, timestamp=i, time_base=Fraction(1, 30))
              for i, p in enumerate(pixels)]  # fmt: skip

    async def scenario():
        processor = ConditioningProcessor(tiny_build[0], capability="depth")
        await processor.ensure_model_loaded()
        try:
            await processor.update_params({"smooth": 0.5})
            ranges = []
            for f in frames:
                await processor.process_video_async(f)
                ranges.append(list(processor.depth_range))
            await processor.update_params({"capability": "segmentation"})
            return ranges, processor.depth_range
        finally:
            await processor.close()

    ranges, after_switch = asyncio.run(scenario())
    with in_process_backends(tiny_build[0]) as direct:
        own = []
        for p in pixels:  # the backend's outputs are views into its buffers: read each before the next frame
            out = direct["depth"][0].infer({FRAME_INPUT: p})
            own.append([float(out["depth_min"][0]), float(out["depth_max"][0])])
    assert ranges[0] == pytest.approx(own[0])  # the first frame: its own range
    assert ranges[1] == pytest.approx([0.5 * a + 0.5 * b for a, b in zip(own[0], own[1])])  # then moved halfway
    assert after_switch is None  # another capability: the state goes
