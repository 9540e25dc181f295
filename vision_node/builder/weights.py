"""Where a model's weights come from: the hub (pinned), a local directory, or demo (seeded random)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, PreTrainedModel

from .errors import BuildError
from .specs import ModelSpec


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: PreTrainedModel  # the spec's transformers model class
    processor: object
    source: str  # "hub" | "local" | "demo"
    revision: str | None  # the commit actually loaded, where known
    path: str | None = None  # local directory, for source == "local"


def _classes(spec: ModelSpec):
    return getattr(transformers, spec.model_class), getattr(transformers, spec.processor_class)


def demo_init(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights that give the graphs something to disagree about.

    transformers' own initialisation leaves the Depth Anything head at ~1e-8 (ReLU of near-zero
    convolutions) and makes many detector scores tie, so a parity check on it proves little.
    Fan-in scaled normal weights and small random biases give spread-out outputs instead.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / param[0].numel()) ** 0.5)
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def load_demo(spec: ModelSpec, seed: int = 0) -> LoadedModel:
    model_cls, processor_cls = _classes(spec)
    torch.manual_seed(seed)
    model = model_cls(AutoConfig.for_model(**spec.demo_config))
    demo_init(model, seed)
    return LoadedModel(spec, model.eval(), processor_cls(**spec.processor_defaults), "demo", None)


def load_local(spec: ModelSpec, path: str | os.PathLike) -> LoadedModel:
    """A directory written by ``save_pretrained`` (model + image processor config)."""
    directory = Path(path)
    if not directory.is_dir():
        raise BuildError(f"model directory {directory} does not exist")
    for required in ("config.json", "preprocessor_config.json"):
        if not (directory / required).is_file():
            raise BuildError(
                f"{directory} has no {required}: expected a directory written by save_pretrained "
                "(model.save_pretrained and image_processor.save_pretrained)"
            )
    model_cls, processor_cls = _classes(spec)
    try:
        model = model_cls.from_pretrained(directory)
        processor = processor_cls.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as err:
        raise BuildError(f"cannot load {spec.model_class} from {directory}: {err}") from err
    return LoadedModel(spec, model.eval(), processor, "local", None, str(directory))


def load_hub(spec: ModelSpec) -> LoadedModel:
    """From Hugging Face at the pinned revision; honours HF_HOME, HF_HUB_OFFLINE and the cache."""
    model_cls, processor_cls = _classes(spec)
    try:
        model = model_cls.from_pretrained(spec.hf_id, revision=spec.revision)
        processor = processor_cls.from_pretrained(spec.hf_id, revision=spec.revision)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BuildError(
            f"cannot load {spec.hf_id} from the Hugging Face hub ({reason}); "
            "use --weights demo for seeded random weights, or --model CAPABILITY=PATH "
            "for a local directory"
        ) from err
    revision = getattr(model.config, "_commit_hash", None) or spec.revision
    return LoadedModel(spec, model.eval(), processor, "hub", revision)
