"""One class per capability: request options, rendering of the graph's outputs, encoding."""

from __future__ import annotations

from .base import Capability
from .depth import Depth
from .pose import Pose
from .segmentation import Segmentation

CAPABILITY_CLASSES: dict[str, type[Capability]] = {c.name: c for c in (Depth, Segmentation, Pose)}
