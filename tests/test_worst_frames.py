"""Bounded cost at every admitted frame (issue 21): the costliest frames the bounds admit, through a real node.

A ``python -m vision_node serve`` process on the tiny build. For every capability: the largest frame, the
frames of the most extreme aspect ratios, and for depth the frames its patch budget caps (without the
budget, a frame as tall as the model's square and as wide as the bounds would run at the full width).
Each, as random noise (segmentation's work follows class boundaries: noise has the most), must be
answered 200 within the node's request timeout, and X-Metadata must say when the budget applied.
"""

from __future__ import annotations

import time

import httpx
import numpy as np

from tests.nodes import metadata, raw_type, start_node, stop, wait_for_http
from vision_node.builder.memory import costliest_frames
from vision_node.serving.engines import load

TIMEOUT_S = 10.0  # the node's default --request-timeout-s


def _worst(served) -> list[tuple[int, int]]:
    (min_h, min_w), (max_h, max_w) = served.bounds.min_hw, served.bounds.max_hw
    extremes = [(max_h, max_w), (min_h, max_w), (max_h, min_w), (min_h, min_w)]
    return list(dict.fromkeys(costliest_frames(served.graphs[0].sizing, served.bounds) + extremes))


def test_the_costliest_admitted_frames_of_every_capability_are_answered_within_the_timeout(tiny_build, tmp_path):
    log = tmp_path / "node.log"
    served = load(tiny_build[0])
    proc, url = start_node(tiny_build[0], log, VISION_NODE_REQUEST_TIMEOUT_S=str(TIMEOUT_S))
    rng = np.random.default_rng(21)
    answered = {}
    try:
        wait_for_http(f"{url}/ready", proc, log)
        with httpx.Client(base_url=url, timeout=2 * TIMEOUT_S) as client:
            for capability, entry in served.items():
                for h, w in _worst(entry):
                    f = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    started = time.perf_counter()
                    r = client.post(f"/infer/{capability}", content=f.tobytes(), headers={"content-type": raw_type(f)})
                    took = time.perf_counter() - started
                    assert r.status_code == 200, (capability, h, w, r.status_code, r.text[:300])
                    assert took < TIMEOUT_S, (capability, h, w, took)
                    answered[capability, h, w] = (took, metadata(r))
    finally:
        stop(proc)
    sizing = served["depth"].graphs[0].sizing
    assert sizing.budgeted, "the default build puts a patch budget on depth"
    capped = sizing.budget_examples(served["depth"].bounds.max_hw)
    assert capped, "the tiny bounds hold frames over the budget"
    for (capability, h, w), (_, meta) in answered.items():
        if capability != "depth":
            assert "patch_budget_applied" not in meta  # fixed-size models have no budget
            continue
        model_h, model_w = meta["graph_resolution"]
        assert meta["patch_budget_applied"] == ((h, w) in capped or sizing.budget_applies(h, w))
        assert (model_h // sizing.multiple) * (model_w // sizing.multiple) <= sizing.max_patches, (h, w, meta)
    slowest = max(answered.items(), key=lambda item: item[1][0])
    print(f"slowest: {slowest[0]} in {slowest[1][0]:.2f} s")
