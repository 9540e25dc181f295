"""A pytrickle frame processor: one capability of the node on every frame of a live stream.

For Livepeer's trickle streaming (``pip install -e ".[stream]"``): pytrickle hands frames as float
tensors ``[1, H, W, 3]`` in [0, 1]; each becomes a uint8 frame, runs through the same session,
graph and rendering as ``/infer``, and goes back as a uint8 image ``[1, H, W, C]`` (depth
ControlNet map, ADE20K palette or class ids, OpenPose skeleton). ``update_params`` switches the
capability and its options per stream, with the same names as the HTTP options. With depth's
``smooth``, the stream keeps the range the last frame used and sends it back with the next one,
exactly as an HTTP client does: the state lives in the stream, not in the node.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import torch
from pytrickle.frame_processor import FrameProcessor

from ..config import Config
from ..errors import InputError
from ..service import Node

# What a stream can carry: images, so each capability's image-shaped output by default.
STREAM_DEFAULTS = {
    "depth": {"output": "controlnet"},
    "segmentation": {"output": "palette"},
    "pose": {"output": "skeleton"},
}


class ConditioningProcessor(FrameProcessor):
    def __init__(self, engines: Path | str = "engines", capability: str = "depth", backend: str = "onnxruntime", **kw):
        super().__init__(**kw)
        self.config = Config(engines=Path(engines), backend=backend)
        self.capability = capability
        self.options: dict = {}
        self.depth_range: list[float] | None = None  # the stream's smoothing state (depth with smooth=...)
        self.node: Node | None = None
        self._lifespan = None

    async def load_model(self, **kwargs):
        """Load and warm every capability of the engines directory (the node's own start-up)."""
        self.node = Node(self.config)
        self._lifespan = self.node.lifespan(None)
        await self._lifespan.__aenter__()
        while not (self.node.warm or self.node.error):
            await asyncio.sleep(0.01)
        if self.node.error:
            raise RuntimeError(f"vision node did not start: {self.node.error}")
        await self.update_params({"capability": self.capability, **kwargs})

    async def close(self) -> None:
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)
            self._lifespan = None

    async def update_params(self, params: dict):
        """``capability`` and that capability's options (strings or JSON values); invalid ones raise InputError."""
        params = {k: str(v) for k, v in params.items() if v is not None}
        capability = params.pop("capability", self.capability)
        session = self.node.session(capability)  # NotFound names what is served
        images = session.capability.stream_outputs
        options = session.capability.parse_options({"output": images[0], **params})
        if options["output"] not in images:
            raise InputError(f"a stream carries images: {capability} output must be one of {', '.join(images)}")
        if capability != self.capability or options.get("range") is not None:
            self.depth_range = None  # a new capability, or a range the client set: start from it
        self.capability, self.options = capability, options

    async def process_video_async(self, frame):
        pixels = (frame.tensor[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        session = self.node.session(self.capability)
        deadline = time.monotonic() + self.config.request_timeout_s
        options = self.options
        if options.get("smooth") is not None and self.depth_range is not None:
            options = {**options, "range": tuple(self.depth_range)}  # what an HTTP client would send back
        outcome = await session.run(np.ascontiguousarray(pixels), options, deadline)
        if options.get("smooth") is not None:
            self.depth_range = outcome.rendered.meta["depth_range"]
        image = session.capability.image(outcome.rendered, options)
        return frame.replace_tensor(torch.from_numpy(np.ascontiguousarray(image))[None])

    async def process_audio_async(self, frame):
        return [frame]  # conditioning maps are video only: audio passes through
