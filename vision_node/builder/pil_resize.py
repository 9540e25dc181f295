"""Pillow's 8-bit resampling, bit for bit, as graph operations (the image processors' resize).

Pillow (``src/libImaging/Resample.c``) resamples one axis, rounds to uint8, then the other axis, in
22-bit fixed point: each tap's weight is the filter's value normalised over its window and rounded to
an integer ``kk`` (``PRECISION_BITS``), and a sample is ``clip8((2^21 + Σ pixel·kk) >> 22)``. Pillow 13
runs the vertical pass first when the height shrinks by more than twice what the width does.

Here, every step is that arithmetic, exactly:
- ``kk`` from integer arithmetic: the filter at a tap is a ratio of integers (its position is
  ``n / (2·max(in, out))``), so ``kk = round(k_i · 2^22 / Σ k)`` is a long division in int64, the same
  integer Pillow's doubles round to (its fraction is never within a double's error of one half);
- the weighted sums in float32 without rounding: ``kk`` is split into two 11-bit halves, so every
  product and partial sum is an integer below 2^24 (also through TF32 on a GPU: 11 significant bits);
- one pass is a gather of whole rows (the resampled axis outermost) and a batched MatMul, which
  ONNX Runtime runs at memory speed (an element-wise gather along the last axis cost 28 ms of 58 at 1080p);
- the pass order is chosen per frame shape, under an ONNX ``If``: the two orders round differently.

It is scripted (``torch.jit.script``) so that the order survives the trace as an ``If``. Sizes are
int64 scalars taken from the frame's shape, so the graph stays dynamic.
"""

from __future__ import annotations

import torch

_RESAMPLE_IDS = {2: "bilinear", 3: "bicubic"}  # Pillow's Resampling values the graphs reproduce
# Twice each filter's support (Resample.c: bilinear 1.0, bicubic 2.0); bicubic uses a = -0.5.
SUPPORT_X2 = {"bilinear": 2, "bicubic": 4}
# Resample.c: PRECISION_BITS = 32 - 8 - 2 = 22. The scripted code below spells its powers out, since
# TorchScript takes no module constants: 2^11 = 2048 (half the bits), 2^12 = 4096, 2^21 = 2097152 (one
# half), 2^22 = 4194304 (one).


def filter_name(resample) -> str:
    """Map a transformers/PIL ``resample`` value (int or enum) to a filter name."""
    name = _RESAMPLE_IDS.get(int(resample))
    if name is None:
        raise ValueError(f"resample={resample!r} is not supported in-graph (only bilinear=2, bicubic=3)")
    return name


@torch.jit.script
def _filter_scaled(n: torch.Tensor, d: torch.Tensor, support_x2: int) -> torch.Tensor:
    """The filter at ``t = n / d`` times ``d`` (bilinear) or ``2·d³`` (bicubic): an exact integer (int64)."""
    a = n.abs()
    if support_x2 == 2:
        return torch.maximum(d - a, torch.zeros_like(a))
    near = 3 * a * a * a - 5 * a * a * d + 2 * d * d * d
    far = -a * a * a + 5 * a * a * d - 8 * a * d * d + 4 * d * d * d
    return torch.where(a < d, near, torch.where(a < 2 * d, far, torch.zeros_like(a)))


@torch.jit.script
def taps(in_size: torch.Tensor, out_size: torch.Tensor, support_x2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index ``[out, K]``, kk ``[out, K]`` int64): Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``.

    ``K`` covers the widest window (``ceil(support·scale)·2 + 1`` in Pillow; here the count that can be
    nonzero, plus one against rounding); taps past a window get 0 (their index clamped into the axis).
    """
    i, o = in_size.long(), out_size.long()
    k = torch.maximum(torch.div(support_x2 * i + o - 1, o, rounding_mode="floor"), torch.tensor(support_x2)) + 1
    m = torch.maximum(i, o)  # filterscale·out: the filter is stretched when shrinking
    centre2 = (2 * torch.arange(int(o))[:, None] + 1) * i  # 2·out·centre
    lowest = centre2 - support_x2 * m + o
    first = torch.div(torch.maximum(lowest, torch.zeros_like(lowest)), 2 * o, rounding_mode="floor")
    end = torch.minimum(torch.div(centre2 + support_x2 * m + o, 2 * o, rounding_mode="floor"), i)
    src = first + torch.arange(int(k))[None, :]
    weight = _filter_scaled((2 * src + 1) * o - centre2, 2 * m, support_x2) * (src < end).long()
    total = weight.sum(dim=1, keepdim=True)
    # round half away from zero of |w|·2^22 / total, as two exact steps of 2^11 and 2^12 (no int64 overflow)
    upper = weight.abs() * 2048
    q1 = torch.div(upper, total, rounding_mode="floor")
    q2 = torch.div((upper - q1 * total) * 4096, total, rounding_mode="floor")
    twice = q1 * 4096 + q2  # floor(2·|w|·2^22 / total)
    kk = torch.div(twice + 1, 2, rounding_mode="floor") * torch.sign(weight)
    return torch.minimum(src, i - 1), kk


@torch.jit.script
def _pass(x: torch.Tensor, in_size: torch.Tensor, out_size: torch.Tensor, support_x2: int) -> torch.Tensor:
    """Resample ``x`` ``[N, L, M]`` (float32 holding 0..255) along L to ``[N, out, M]``, rounded as Pillow does."""
    index, kk = taps(in_size, out_size, support_x2)
    high = torch.div(kk, 2048, rounding_mode="floor")
    halves = torch.stack([high, kk - high * 2048], dim=1).float()  # [out, 2, K]: kk = high·2^11 + low
    rows = x.index_select(1, index.reshape(-1)).reshape(x.shape[0], index.shape[0], index.shape[1], x.shape[2])
    sums = torch.matmul(halves, rows)  # [N, out, 2, M], every value an integer below 2^24
    high_sum, low_sum = sums[:, :, 0], sums[:, :, 1]
    q = torch.floor(high_sum / 2048)
    rest = (high_sum - q * 2048) * 2048 + low_sum + 2097152
    return torch.clamp(q + torch.floor(rest / 4194304), torch.tensor(0.0), torch.tensor(255.0))  # float32 bounds


@torch.jit.script
def _resize(x: torch.Tensor, out_h: torch.Tensor, out_w: torch.Tensor, support_x2: int, vertical_first: torch.Tensor):
    """``x``: NHWC uint8 -> NCHW float32 at (out_h, out_w), in the order Pillow takes.

    The frame is laid out for its first pass while still uint8 (a quarter of the bytes: ONNX Runtime
    transposed a 1080p frame in 12 ms so, 18 as float32; TensorRT casts first, ``selects``)."""
    n, h, w, c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    if bool(vertical_first):
        x = _pass(x.reshape(n, h, w * c).float(), torch.tensor(h), out_h, support_x2)
        x = x.reshape(n, -1, w, c).permute(0, 2, 1, 3).reshape(n, w, -1)
        x = _pass(x, torch.tensor(w), out_w, support_x2)  # N, out_w, out_h*C
        return x.reshape(n, x.shape[1], -1, c).permute(0, 3, 2, 1)
    x = _pass(x.permute(0, 2, 1, 3).reshape(n, w, h * c).float(), torch.tensor(w), out_w, support_x2)
    x = x.reshape(n, -1, h, c).permute(0, 2, 1, 3).reshape(n, h, -1)
    x = _pass(x, torch.tensor(h), out_h, support_x2)  # N, out_h, out_w*C
    return x.reshape(n, x.shape[1], -1, c).permute(0, 3, 1, 2)


def resize_like_pil(frames: torch.Tensor, size, name: str) -> torch.Tensor:
    """uint8-valued NHWC ``frames`` resized to ``size`` (h, w; ints or traced int64 scalars) as Pillow
    resizes with filter ``name``; returns NCHW float32 holding Pillow's uint8 values."""
    out_h, out_w = (torch.as_tensor(v).long() for v in size)
    shrink_h = torch.as_tensor(frames.shape[1]) - out_h
    shrink_w = torch.as_tensor(frames.shape[2]) - out_w
    vertical_first = (shrink_h > 0) & (shrink_h > 2 * shrink_w)  # Resample.c, Pillow 13
    return _resize(frames, out_h, out_w, SUPPORT_X2[name], vertical_first)
