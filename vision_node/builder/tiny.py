"""Tiny configurations of the real architectures: the same classes, processors and graph code, small sizes.

For the test suite, CI and benchmarks of the node's own overhead (``build_engines.py --tiny``):
every model builds and verifies in seconds, with seeded demo weights only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .specs import SPECS

TINY_CONFIGS: dict[str, dict[str, Any]] = {  # model -> the ModelSpec fields it changes
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
# Named "<model>-tiny" so that a manifest, /capabilities and X-Metadata never pass them off as the real model.
TINY_SPECS = {name: dataclasses.replace(SPECS[name], name=f"{name}-tiny", **cfg) for name, cfg in TINY_CONFIGS.items()}
TINY_ROLES = {
    "depth": TINY_SPECS["depth-anything-v2-small"],
    "segmentation": TINY_SPECS["segformer-b0-ade"],
    "pose": TINY_SPECS["vitpose-base-simple"],
    "detector": TINY_SPECS["rtdetr-r18"],
}
# Small verification frames, fast on two CPU cores: 16:9 at two sizes, square, portrait, 4:3, a small
# awkward one. For the tiny depth processor (98x98, multiples of 14) each gets its own model resolution.
TINY_VERIFY_SIZES = ((90, 160), (128, 128), (150, 100), (96, 128), (180, 320), (67, 93))
