"""Torch building blocks that are traced into the exported graphs.

Everything here works on dynamic frame sizes (the ONNX exporter records the shape
arithmetic) and uses only operators that ONNX Runtime and TensorRT both run: MatMul,
elementwise maths, Resize, GridSample, ArgMax/ReduceMax, Gather. Segmentation's argmax is in ``argmax``,
the image processors' Pillow resize in ``pil_resize``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dim_size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.shape[dim]`` as a float tensor that stays dynamic in the exported graph.

    While tracing, shape entries are tensors and ``as_tensor`` keeps them so (the tracer's
    "registered as constants" warning does not apply: the graph computes it from ``Shape``).
    """
    return torch.as_tensor(x.shape[dim]).float()


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
