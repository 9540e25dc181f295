"""Model specs as data: one small entry per model, nothing else.

A spec says where the weights come from (Hugging Face id, pinned revision, licence), how to
build the architecture without the hub (``demo_config``), and the graph's contract (input and
output names). The resolution a model runs at comes from its image processor. Shape bounds are build options shared by
every capability (``ShapeBounds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contract import CAPABILITIES, FRAME_INPUT, OUTPUTS, ShapeBounds  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ModelSpec:
    """One model the build knows by name."""

    name: str
    capability: str
    hf_id: str
    # Pinned revision; ``None`` means the hub's default branch, resolved and recorded at build time.
    revision: str | None
    licence: str
    model_class: str  # transformers class that loads the checkpoint
    processor_class: str  # transformers image processor (PIL backend: no torchvision needed)
    demo_config: dict[str, Any]  # config of the real architecture, for --weights demo
    processor_defaults: dict[str, Any] = field(default_factory=dict)  # for --weights demo
    note: str = ""


# Configs are written out rather than downloaded so that --weights demo and the tests build
# the real architectures offline. They follow the published config.json of each checkpoint.
_DINOV2_SMALL = {
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_attention_heads": 6,
    "num_hidden_layers": 12,
    "patch_size": 14,
    "image_size": 518,
    "out_indices": [3, 6, 9, 12],
    "reshape_hidden_states": False,
    "layerscale_value": 1.0,
}
_DINOV2_BASE = {**_DINOV2_SMALL, "hidden_size": 768, "num_attention_heads": 12}
_DINOV2_LARGE = {
    **_DINOV2_SMALL,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "out_indices": [5, 12, 18, 24],
}

_DPT_PROCESSOR = {
    "size": {"height": 518, "width": 518},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "resample": 3,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
_SEGFORMER_PROCESSOR = {
    "size": {"height": 512, "width": 512},
    "resample": 2,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def _depth_anything(name, hf_id, licence, backbone, neck, fusion, note=""):
    return ModelSpec(
        name=name,
        capability="depth",
        hf_id=hf_id,
        revision=None,
        licence=licence,
        model_class="DepthAnythingForDepthEstimation",
        processor_class="DPTImageProcessorPil",
        demo_config={
            "model_type": "depth_anything",
            "backbone_config": backbone,
            "neck_hidden_sizes": neck,
            "fusion_hidden_size": fusion,
            "reassemble_factors": [4, 2, 1, 0.5],
            "reassemble_hidden_size": backbone["hidden_size"],
            "depth_estimation_type": "relative",
            "head_hidden_size": 32,
        },
        processor_defaults=_DPT_PROCESSOR,
        note=note,
    )


def _segformer(name, hf_id, depths, hidden_sizes, decoder):
    return ModelSpec(
        name=name,
        capability="segmentation",
        hf_id=hf_id,
        revision=None,
        licence="other (NVIDIA SegFormer licence)",
        model_class="SegformerForSemanticSegmentation",
        processor_class="SegformerImageProcessorPil",
        demo_config={
            "model_type": "segformer",
            "depths": depths,
            "hidden_sizes": hidden_sizes,
            "decoder_hidden_size": decoder,
            "num_labels": 150,
        },
        processor_defaults=_SEGFORMER_PROCESSOR,
        note="ADE20K, 150 classes. NVIDIA's SegFormer weights carry a research/non-commercial licence: check it.",
    )


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _depth_anything(
            "depth-anything-v2-small",
            "depth-anything/Depth-Anything-V2-Small-hf",
            "apache-2.0",
            _DINOV2_SMALL,
            [48, 96, 192, 384],
            64,
        ),
        _depth_anything(
            "depth-anything-v2-base",
            "depth-anything/Depth-Anything-V2-Base-hf",
            "cc-by-nc-4.0",
            _DINOV2_BASE,
            [96, 192, 384, 768],
            128,
            note="CC-BY-NC-4.0: not for commercial use.",
        ),
        _depth_anything(
            "depth-anything-v2-large",
            "depth-anything/Depth-Anything-V2-Large-hf",
            "cc-by-nc-4.0",
            _DINOV2_LARGE,
            [256, 512, 1024, 1024],
            256,
            note="CC-BY-NC-4.0: not for commercial use.",
        ),
        _segformer(
            "segformer-b0-ade", "nvidia/segformer-b0-finetuned-ade-512-512", [2, 2, 2, 2], [32, 64, 160, 256], 256
        ),
        _segformer(
            "segformer-b2-ade", "nvidia/segformer-b2-finetuned-ade-512-512", [3, 4, 6, 3], [64, 128, 320, 512], 768
        ),
        ModelSpec(
            name="vitpose-base-simple",
            capability="pose",
            hf_id="usyd-community/vitpose-base-simple",
            revision=None,
            licence="apache-2.0",
            model_class="VitPoseForPoseEstimation",
            processor_class="VitPoseImageProcessorPil",
            demo_config={
                "model_type": "vitpose",
                "use_simple_decoder": True,
                "scale_factor": 4,
                "num_labels": 17,
                "backbone_config": {
                    "model_type": "vitpose_backbone",
                    "hidden_size": 768,
                    "num_hidden_layers": 12,
                    "num_attention_heads": 12,
                    "image_size": [256, 192],
                    "patch_size": [16, 16],
                    "out_indices": [12],
                },
            },
            processor_defaults={"size": {"height": 256, "width": 192}},
            note="COCO-17 keypoints, top-down: runs on the person boxes of the detector below.",
        ),
        ModelSpec(
            name="rtdetr-r18",
            capability="detector",
            hf_id="PekingU/rtdetr_r18vd_coco_o365",
            revision=None,
            licence="apache-2.0",
            model_class="RTDetrForObjectDetection",
            processor_class="RTDetrImageProcessorPil",
            demo_config={
                "model_type": "rt_detr",
                "num_labels": 80,
                "encoder_in_channels": [128, 256, 512],
                "encoder_ffn_dim": 1024,
                "hidden_expansion": 0.5,
                "decoder_layers": 3,
                "backbone_config": {
                    "model_type": "rt_detr_resnet",
                    "depths": [2, 2, 2, 2],
                    "hidden_sizes": [64, 128, 256, 512],
                    "layer_type": "basic",
                    "out_features": ["stage2", "stage3", "stage4"],
                },
            },
            processor_defaults={"size": {"height": 640, "width": 640}},
            note="Person detector for pose (COCO class 0).",
        ),
    )
}

DEFAULT_MODELS = {
    "depth": "depth-anything-v2-small",
    "segmentation": "segformer-b0-ade",
    "pose": "vitpose-base-simple",
    "detector": "rtdetr-r18",
}


def roles_for(capability: str) -> tuple[str, ...]:
    """The models a capability's graph is made of: pose needs the person detector too."""
    return ("detector", "pose") if capability == "pose" else (capability,)


def spec_for(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(SPECS))}") from None
