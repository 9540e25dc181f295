"""Shared fixtures: tiny configurations of the real architectures, built offline with seeded weights.

The tiny specs are the production specs with a smaller ``demo_config`` and resolution: the same
transformers classes, processors, graph wrappers and export path run; only the sizes shrink.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from node.build.specs import SPECS, ShapeBounds

TINY_CONFIGS = {
    "depth-anything-v2-small": dict(
        processor_defaults={**SPECS["depth-anything-v2-small"].processor_defaults, "size": {"height": 98, "width": 98}},
        demo_config={
            "model_type": "depth_anything",
            "neck_hidden_sizes": [8, 16, 32, 32],
            "fusion_hidden_size": 16,
            "head_hidden_size": 8,
            "reassemble_factors": [4, 2, 1, 0.5],
            "reassemble_hidden_size": 32,
            "depth_estimation_type": "relative",
            "backbone_config": {
                "model_type": "dinov2",
                "hidden_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 4,
                "patch_size": 14,
                "image_size": 98,
                "out_indices": [1, 2, 3, 4],
                "reshape_hidden_states": False,
            },
        },
    ),
    "segformer-b0-ade": dict(
        processor_defaults={**SPECS["segformer-b0-ade"].processor_defaults, "size": {"height": 64, "width": 64}},
        demo_config={
            "model_type": "segformer",
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [8, 16, 32, 64],
            "num_attention_heads": [1, 1, 2, 2],
            "decoder_hidden_size": 32,
            "num_labels": 150,
        },
    ),
    "vitpose-base-simple": dict(
        processor_defaults={"size": {"height": 64, "width": 48}},
        demo_config={
            **SPECS["vitpose-base-simple"].demo_config,
            "backbone_config": {
                **SPECS["vitpose-base-simple"].demo_config["backbone_config"],
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": [64, 48],
                "out_indices": [2],
            },
        },
    ),
    "rtdetr-r18": dict(
        processor_defaults={"size": {"height": 128, "width": 128}},
        demo_config={
            "model_type": "rt_detr",
            "num_labels": 80,
            "d_model": 32,
            "encoder_in_channels": [16, 32, 64],
            "encoder_hidden_dim": 32,
            "decoder_in_channels": [32, 32, 32],
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "decoder_layers": 1,
            "num_queries": 30,
            "hidden_expansion": 0.5,
            "backbone_config": {
                "model_type": "rt_detr_resnet",
                "depths": [1, 1, 1, 1],
                "hidden_sizes": [8, 16, 32, 64],
                "embedding_size": 8,
                "layer_type": "basic",
                "out_features": ["stage2", "stage3", "stage4"],
            },
        },
    ),
}
TINY_SPECS = {name: dataclasses.replace(SPECS[name], **cfg) for name, cfg in TINY_CONFIGS.items()}
TINY_ROLES = {
    "depth": TINY_SPECS["depth-anything-v2-small"],
    "segmentation": TINY_SPECS["segformer-b0-ade"],
    "pose": TINY_SPECS["vitpose-base-simple"],
    "detector": TINY_SPECS["rtdetr-r18"],
}
# Small verification frames: several sizes and aspect ratios, fast on two CPU cores.
TINY_VERIFY_SIZES = ((90, 160), (128, 128), (150, 100), (67, 93))
TINY_BOUNDS = ShapeBounds(min_hw=(64, 64), max_hw=(720, 1280), opt_hw=(128, 128), max_batch=4)


def tiny_plan(out, **overrides):
    from node.build.pipeline import BuildPlan

    fields = dict(
        out=out,
        weights="demo",
        specs=dict(TINY_ROLES),
        bounds=TINY_BOUNDS,
        max_persons=3,
        verify_sizes=TINY_VERIFY_SIZES,
    )
    fields.update(overrides)
    return BuildPlan(**fields)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """All three capabilities built once with tiny demo models: (out dir, manifest entries)."""
    from node import manifest
    from node.build import pipeline

    logging.getLogger("build").setLevel(logging.INFO)
    out = tmp_path_factory.mktemp("engines")
    entries = pipeline.build(["depth", "segmentation", "pose"], tiny_plan(out))
    manifest.write(out, entries)
    return out, entries
