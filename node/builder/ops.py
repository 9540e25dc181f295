"""Torch building blocks that are traced into the exported graphs.

Everything here works on dynamic frame sizes (the ONNX exporter records the shape
arithmetic) and uses only operators that ONNX Runtime and TensorRT both run: MatMul,
elementwise maths, Resize, GridSample, ArgMax/ReduceMax, Gather. Segmentation's argmax is in ``argmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PIL's filters (src/libImaging/Resample.c): bicubic uses a = -0.5, bilinear is a triangle.
_PIL_FILTERS = {"bicubic": 2.0, "bilinear": 1.0}
_PIL_RESAMPLE_IDS = {2: "bilinear", 3: "bicubic"}


def pil_filter_name(resample) -> str:
    """Map a transformers/PIL ``resample`` value (int or enum) to a filter name."""
    name = _PIL_RESAMPLE_IDS.get(int(resample))
    if name is None:
        raise ValueError(f"resample={resample!r} is not supported in-graph (only bilinear=2, bicubic=3)")
    return name


def dim_size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.shape[dim]`` as a float tensor that stays dynamic in the exported graph.

    While tracing, shape entries are tensors and ``as_tensor`` keeps them so (the tracer's
    "registered as constants" warning does not apply: the graph computes it from ``Shape``).
    """
    return torch.as_tensor(x.shape[dim]).float()


def _pil_kernel(x: torch.Tensor, name: str) -> torch.Tensor:
    ax = x.abs()
    if name == "bilinear":
        return torch.clamp(1.0 - ax, min=0.0)
    a = -0.5
    near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
    return torch.where(ax < 1.0, near, torch.where(ax < 2.0, far, torch.zeros_like(ax)))


def pil_resample_matrix(in_size: torch.Tensor, out_size: int, name: str) -> torch.Tensor:
    """Dense ``[out_size, in_size]`` weights of PIL's antialiased resampling along one axis.

    Mirrors ``precompute_coeffs`` in Pillow: when shrinking, the filter is stretched by the
    scale (that is the antialiasing), each output sample uses the window PIL uses, and every
    row is normalised to sum to one. ``in_size`` comes from ``dim_size`` so it stays dynamic.
    """
    support = _PIL_FILTERS[name]
    src = torch.arange(in_size, dtype=torch.float32)
    scale = in_size / out_size
    filter_scale = torch.clamp(scale, min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float32)[:, None] + 0.5) * scale
    reach = support * filter_scale
    in_window = (src[None, :] >= torch.floor(centre - reach + 0.5)) & (src[None, :] < torch.floor(centre + reach + 0.5))
    weights = _pil_kernel((src[None, :] - centre + 0.5) / filter_scale, name) * in_window.float()
    return weights / weights.sum(dim=1, keepdim=True)


def pil_resample_taps(in_size, out_size, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each ``[out_size, K]``: the nonzero band of ``pil_resample_matrix``.

    Same window, kernel and normalisation as the dense matrix, for only the taps an output sample
    reaches: a window of ``2 × reach`` samples holds at most ``ceil(2 × reach)`` of them, plus one
    spare against the rounding of ``centre``. Taps past the window get weight 0 (their index is
    clamped into the axis). ``K`` follows the scale, so it is computed in the graph too, from the
    integer sizes: TensorRT bounds integer shape arithmetic, not a ``ceil`` of floats.
    ``in_size`` and ``out_size``: ints or int64 scalars (traced from the frame's shape).
    """
    support = _PIL_FILTERS[name]
    in_int, out_int = torch.as_tensor(in_size), torch.as_tensor(out_size)
    reach_x2 = int(2 * support)  # 2 × support, a whole number for both filters
    taps = torch.div(reach_x2 * in_int + out_int - 1, out_int, rounding_mode="floor")  # ceil(2 × reach) ...
    taps = torch.maximum(taps, torch.as_tensor(reach_x2)) + 1  # ... or 2 × support; TensorRT clips only floats
    in_f = in_int.float()
    scale = in_f / out_int.float()
    filter_scale = torch.clamp(scale, min=1.0)
    reach = support * filter_scale
    centre = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    first = torch.clamp(torch.floor(centre - reach + 0.5), min=0.0)
    end = torch.minimum(torch.floor(centre + reach + 0.5), in_f)
    src = first[:, None] + torch.arange(taps).float()[None, :]
    weights = _pil_kernel((src - centre[:, None] + 0.5) / filter_scale, name) * (src < end[:, None]).float()
    index = torch.minimum(src, in_f - 1.0).long()
    return index, weights / weights.sum(dim=1, keepdim=True)


def resize_like_pil(frames: torch.Tensor, size, name: str) -> torch.Tensor:
    """Resize uint8-valued NHWC frames to ``size`` (h, w) the way Pillow does; returns NCHW float.

    ``size`` may be traced (computed from the frame's shape in the graph): every shape below is
    then taken from a tensor, never from ``size`` as a Python number.

    Pillow resamples horizontally, rounds to uint8, then vertically and rounds again; doing the
    same (rounding half up, as its fixed-point maths does) keeps the graph within a rounding
    step of the reference image processor. Pillow 13 goes vertical-first for some size pairs;
    there about a fifth of the pixels differ by one level (see ``verify.TOLERANCES``). Both
    passes gather the few taps each output sample needs (``pil_resample_taps``) and sum them: the
    dense ``[width, model width]`` matrix product this replaces did ~120× the work at 1080p.
    """
    n, h, w, c = frames.shape
    out_h, out_w = size
    x = frames.float().permute(0, 1, 3, 2)  # N,H,C,W: the taps gathered along the last axis
    index, weights = pil_resample_taps(torch.as_tensor(frames.shape[2]), out_w, name)
    x = (x.index_select(3, index.reshape(-1)).reshape(n, h, c, -1, index.shape[1]) * weights).sum(dim=4)
    x = torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)  # N,H,C,out_w
    index, weights = pil_resample_taps(torch.as_tensor(frames.shape[1]), out_h, name)
    x = x.index_select(1, index.reshape(-1)).reshape(n, -1, index.shape[1], c, x.shape[3])
    x = (x * weights[:, :, None, None]).sum(dim=2)  # N,out_h,C,out_w
    x = torch.clamp(torch.floor(x + 0.5), 0.0, 255.0)
    return x.permute(0, 2, 1, 3)


def _torch_cubic_taps(in_size: torch.Tensor, out_size) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each ``[out_size, 4]``: torch's bicubic upsampling along one axis.

    As ``upsample_bicubic2d`` computes it (align_corners=False, A = -0.75, no antialiasing):
    source x = (i + 0.5) * in/out - 0.5, four taps around floor(x) clamped to the edge.
    """
    a = -0.75
    x = (torch.arange(out_size, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5
    x0 = torch.floor(x)
    t = (x - x0)[:, None]
    taps = x0[:, None] + torch.tensor([-1.0, 0.0, 1.0, 2.0])
    index = torch.minimum(torch.clamp(taps, min=0.0), in_size - 1).long()
    near = torch.cat([t, 1.0 - t], dim=1)  # distances to the two inner taps
    far = torch.cat([t + 1.0, 2.0 - t], dim=1)  # and to the two outer ones
    w_near = ((a + 2.0) * near - (a + 3.0)) * near * near + 1.0
    w_far = ((a * far - 5.0 * a) * far + 8.0 * a) * far - 4.0 * a
    weights = torch.stack([w_far[:, 0], w_near[:, 0], w_near[:, 1], w_far[:, 1]], dim=1)
    return index, weights


def resize_bicubic(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bicubic", align_corners=False)`` for NCHW, as four-tap gathers.

    Same arithmetic as torch's kernel, one axis at a time. ONNX Runtime's cubic Resize runs single
    threaded and unvectorised on CPUs (93 ms of a 580 ms depth frame, measured); gathers and a
    weighted sum cost a fraction of that there, and stay plain Gather/Mul/ReduceSum for TensorRT.
    ``size`` may be traced.
    """
    out_h, out_w = size
    n, c = x.shape[0], x.shape[1]
    index, weights = _torch_cubic_taps(dim_size(x, 3), out_w)
    x = x.index_select(3, index.reshape(-1))
    x = (x.reshape(n, c, x.shape[2], -1, 4) * weights).sum(dim=4)  # N,C,H,out_w
    index, weights = _torch_cubic_taps(dim_size(x, 2), out_h)
    x = x.index_select(2, index.reshape(-1))
    return (x.reshape(n, c, -1, 4, x.shape[3]) * weights[:, :, None]).sum(dim=3)  # N,C,out_h,out_w


def normalise(x: torch.Tensor, rescale: float, mean, std) -> torch.Tensor:
    """``(x * rescale - mean) / std`` folded into one multiply-add per channel (NCHW)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x * (rescale / std_t) - mean_t / std_t


def gaussian_kernel_1d(sigma: float, radius: int) -> torch.Tensor:
    """scipy.ndimage's truncated, normalised Gaussian."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def reflect_index(n: int, radius: int) -> torch.Tensor:
    """Indices that pad an axis of length ``n`` the way scipy's ``mode='reflect'`` does (d c b a | a b c d)."""
    idx = []
    for i in range(-radius, n + radius):
        j = i
        while j < 0 or j >= n:
            j = -j - 1 if j < 0 else 2 * n - j - 1
        idx.append(j)
    return torch.tensor(idx, dtype=torch.long)


def gaussian_blur(maps: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` maps, scipy ``gaussian_filter`` semantics."""
    b, c, h, w = maps.shape
    kernel = gaussian_kernel_1d(sigma, radius)
    x = maps.reshape(b * c, 1, h, w)
    x = x.index_select(3, reflect_index(w, radius))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = x.index_select(2, reflect_index(h, radius))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)
