"""Which parts of a graph run in fp16: the precision ladder of the exported graphs.

Strongly typed TensorRT (TensorRT 11, TensorRT for RTX, TensorRT 10 with the strongly typed
flag) builds what the graph's types say: an fp32 graph becomes an fp32 engine. The fp16 engine
therefore comes from an fp16 graph, made here at export time: the network body (the transformers
model) is copied, converted to half precision, fed a half input and its float outputs cast back
to fp32; everything around it that we wrote (resize, normalisation, upsampling, argmax, crops,
DARK refinement) stays fp32 and sees exactly what it sees in the fp32 graph.

The ladder, fastest first, ends in the fp32 graph. The build keeps the first rung whose graph
passes verification against transformers; the TensorRT gate falls back to the fp32 graph when
the fp16 engine misses on the GPU.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Normalisation layers kept in fp32 on the "fp16-norms32" rung: their mean/variance are the first
# things to lose precision (or overflow) in half. RTDetrFrozenBatchNorm2d is RT-DETR's own class.
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
_NORM_CLASS_NAMES = ("FrozenBatchNorm2d",)

# name -> (body dtype, keep norms in fp32); ordered from fastest to safest.
RUNGS = {
    "fp16": (torch.float16, False),
    "fp16-norms32": (torch.float16, True),
    "fp32": (torch.float32, False),
}
FP16_RUNGS = tuple(name for name, (dtype, _) in RUNGS.items() if dtype == torch.float16)
DESCRIPTIONS = {
    "fp16": "network body fp16; pre- and post-processing fp32",
    "fp16-norms32": "network body fp16 except its normalisation layers; pre- and post-processing fp32",
    "fp32": "everything fp32",
}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(_NORM_CLASS_NAMES)


def _to_float(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _to_half(module, args, output):
    return output.half() if torch.is_tensor(output) and output.is_floating_point() else output


class HalfBody(nn.Module):
    """A half-precision copy of ``model`` that takes and returns fp32 tensors.

    The copy leaves the original (the transformers reference) untouched. With ``fp32_norms`` the
    normalisation layers keep fp32 weights and compute in fp32 between two casts.
    """

    def __init__(self, model: nn.Module, fp32_norms: bool = False):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()
        if fp32_norms:
            for module in self.model.modules():
                if _is_norm(module):
                    module.float()
                    module.register_forward_pre_hook(_to_float)
                    module.register_forward_hook(_to_half)

    @property
    def config(self):
        return self.model.config

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values.half())
        for name, value in out.items():
            if torch.is_tensor(value) and value.is_floating_point():
                out[name] = value.float()
        return out


def body(model: nn.Module, rung: str) -> nn.Module:
    """The network body for ``rung``: the model itself for fp32, a half copy otherwise."""
    if rung not in RUNGS:
        raise ValueError(f"unknown precision {rung!r}; known: {', '.join(RUNGS)}")
    dtype, fp32_norms = RUNGS[rung]
    return model if dtype == torch.float32 else HalfBody(model, fp32_norms)
