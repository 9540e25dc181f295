"""Torch building blocks that are traced into the exported graphs.

Everything here works on dynamic frame sizes (the ONNX exporter records the shape
arithmetic) and uses only operators that ONNX Runtime and TensorRT both run: MatMul,
elementwise maths, Resize, GridSample, ArgMax/ReduceMax, Gather.
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


def chunked_upsampled_argmax(logits: torch.Tensor, size, chunk: int) -> torch.Tensor:
    """``argmax(interpolate(logits, size, bilinear), dim=1)`` without the full C×H×W tensor.

    Classes are interpolated ``chunk`` at a time and folded into a running (best score,
    best class) pair, so peak memory is ``chunk × H × W`` floats instead of ``C × H × W``.
    Strict ``>`` keeps the first class on ties, as ``argmax`` does. Every class at every pixel:
    the reference for ``upsampled_argmax``, which does the same work only near class boundaries.
    """
    num_classes = logits.shape[1]
    best_score = best_class = None
    for start in range(0, num_classes, chunk):
        part = F.interpolate(logits[:, start : start + chunk], size=size, mode="bilinear", align_corners=False)
        score, index = part.max(dim=1)
        index = index + start
        if best_score is None:
            best_score, best_class = score, index
        else:
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_class = torch.where(better, index, best_class)
    return best_class


_EMPTY_SLOT = -1.0e30  # score of an unused candidate slot: below any logit, finite so that 0 × it stays 0
# Rounding slack of the dominance test, relative to the frame's largest |score|: a bilinear sample is
# a few float32 roundings (~2.4e-7 relative) away from its exact value, so a class is dropped only
# when another one beats it by far more than that at all four corners.
_DOMINANCE_SLACK = 1e-5


def _bilinear_axis(in_size: int, out_size):
    """Torch's bilinear sampling along one axis (align_corners=False), arranged in cells.

    Returns, per output index, the weight of its second tap and its cell, and each cell's first
    output index (``in_size + 2`` of them, the last is ``out_size``). Cells are the spans between
    neighbouring samples of the axis padded with one replicated sample at each end: cell ``a``
    interpolates padded samples ``a`` and ``a + 1``; cell 0 is the clamped edge (weight 0, as torch
    clamps the source position there) and cell ``in_size`` the far edge (both taps the last sample).
    """
    out_f = torch.as_tensor(out_size).float()
    src = (torch.arange(out_size, dtype=torch.float32) + 0.5) * (in_size / out_f) - 0.5
    cell = (torch.floor(src) + 1).long()
    clamped = src.clamp(min=0.0)
    weight = clamped - torch.floor(clamped)
    starts = (cell[None, :] < torch.arange(in_size + 2)[:, None]).sum(dim=1)
    return cell, weight, starts


def cell_span(in_size: int, out_size):
    """Most output indices one cell of ``_bilinear_axis`` holds: floor(out / in) + 1 (ceil is not
    enough: float rounding of the source position moves a boundary by one where out/in is whole)."""
    return torch.div(torch.as_tensor(out_size), in_size, rounding_mode="floor") + 1


def _blocks(cells: torch.Tensor, starts: torch.Tensor, weight: torch.Tensor, span, out_size):
    """For listed cells ``[M]``: their output indices ``[M, span]`` (clamped), which are inside, and weights."""
    index = starts[cells][:, None] + torch.arange(span)[None, :]
    inside = index < starts[cells + 1][:, None]
    index = torch.minimum(index, torch.as_tensor(out_size) - 1)
    return index, inside, weight[index]


def _score_blocks(corners: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """Bilinear scores ``[M, S, by, bx]`` from corner scores ``[M, S, 4]`` (rows then columns, as torch)."""
    wx, wy = wx[:, None, :], wy[:, None, :, None]
    top = corners[:, :, 0:1] * (1.0 - wx) + corners[:, :, 1:2] * wx
    bottom = corners[:, :, 2:3] * (1.0 - wx) + corners[:, :, 3:4] * wx
    return top[:, :, None, :] * (1.0 - wy) + bottom[:, :, None, :] * wy


# Cells that need more than their first candidate, listed per frame by TopK in fixed-size passes (static shapes:
# TensorRT for RTX has no NonZero). (lowest count, highest count, candidate slots, cells per pass, passes); the
# last tier interpolates every class. The demo build's photographs need up to ~7,400 cells of 2-4 candidates,
# ~90 of 5-8, ~10 of more (of 16,641); a frame that needs more takes the dense fold (``_dense_fallback``).
ARGMAX_TIERS = ((2, 4, 4, 3840, 2), (5, 8, 8, 1024, 1), (9, None, None, 128, 1))


@torch.jit.script
def _bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch's bilinear taps along one axis (align_corners=False): first, second and the second's weight."""
    scale = torch.tensor(float(in_size)) / torch.tensor(float(out_size))
    # relu, not clamp(min=0.0): TorchScript exports that 0.0 as a float64 constant, which TensorRT has not.
    src = torch.relu((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5)
    first = torch.floor(src)
    second = torch.clamp(first + 1.0, max=float(in_size - 1))
    return first.long(), second.long(), src - first


@torch.jit.script
def _fold_chunk_if(
    overflow: torch.Tensor, best: tuple[torch.Tensor, torch.Tensor], part: torch.Tensor, start: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``overflow``, fold the bilinear upsampling of ``part``'s classes into ``best`` (score, class).

    Scripted so that each chunk is an ONNX ``If`` that runs only for the frames that need it (ONNX Runtime
    skips the branch; it is the dense cost only where the tiers overflow). One If per chunk, unrolled:
    TensorRT for RTX 1.7 fails with an internal error on a Loop, inside an If or not. Bilinear taps and
    weighted sums in torch's own order (no Resize), so that it is torch's argmax bit for bit but for ties
    of a float32 rounding.
    """
    best_score, best_class = best
    if bool(overflow):
        y0, y1, wy = _bilinear_taps(part.shape[2], best_score.shape[1])
        x0, x1, wx = _bilinear_taps(part.shape[3], best_score.shape[2])
        wy = wy[:, None]
        part = part.index_select(3, x0) * (1.0 - wx) + part.index_select(3, x1) * wx
        part = part.index_select(2, y0) * (1.0 - wy) + part.index_select(2, y1) * wy
        score, index = part.max(dim=1)
        better = score > best_score
        return torch.where(better, score, best_score), torch.where(better, index.float() + start, best_class)
    return best_score, best_class


def _dense_fallback(overflow: torch.Tensor, sparse: torch.Tensor, logits: torch.Tensor, chunk: int) -> torch.Tensor:
    """``sparse``, or where ``overflow`` the dense fold of ``chunked_upsampled_argmax``, ``chunk`` classes at a time."""
    best = (torch.full_like(sparse, -1.0e30), sparse)  # the first chunk overwrites every pixel
    for start in range(0, logits.shape[1], chunk):
        best = _fold_chunk_if(overflow, best, logits[:, start : start + chunk], float(start))
    return best[1]


def _list_cells(key: torch.Tensor, per_pass: int, passes: int):
    """Up to ``per_pass × passes`` cells per frame where ``key`` is 1 (``[N, cells]``), as ``[N, K]`` indices.

    TopK in passes (its k is at most 3840 in TensorRT); a pass with fewer such cells fills up with others,
    which the caller must handle harmlessly. Also returns whether any such cell was left out.
    """
    k = min(per_pass, key.shape[1])
    picks = []
    for _ in range(passes):
        index = key.topk(k, dim=1).indices
        picks.append(index)
        key = key.scatter(1, index, torch.zeros_like(index, dtype=key.dtype))
    return torch.cat(picks, dim=1), key.amax() > 0


def upsampled_argmax(logits: torch.Tensor, size, chunk: int = 8) -> torch.Tensor:
    """``argmax(interpolate(logits, size, bilinear, align_corners=False), dim=1)``, working only where it can change.

    Every output pixel lies in one cell between four neighbouring logit samples, and its scores
    are convex combinations of theirs. So within a cell a class ``c`` can never win (nor tie) where
    another class ``d`` beats it at all four corners: ``s_d - s_c`` is positive at the corners, hence
    everywhere between them. Per cell, the classes the dominator does not beat that way are its candidates.
    - one candidate (most cells): the whole cell takes that class, as a gather;
    - more: the cell is listed in its tier (``ARGMAX_TIERS``) and its pixels interpolate that many
      candidate slots (in class order, empty slots never win, ties fall to the first), or every class;
    - more listed cells than a tier holds (random scores, not photographs): the whole frame takes the
      dense fold, ``chunk`` classes at a time, under an ONNX ``If`` (ONNX Runtime runs only that branch).
    Exact for any scores; on photographs the work follows the boundary cells, not classes × pixels.
    All shapes are static given the frame's size, so TensorRT builds it (no NonZero).
    """
    n, num_classes, h, w = logits.shape
    out_h, out_w = size
    k = min(ARGMAX_TIERS[1][1], num_classes)  # candidate slots kept per cell
    # Classes last: the slices below copy whole runs and the per-cell reductions run along contiguous memory
    # (ONNX Runtime spent ~2x as long on the class-first layout). Pad one replicated sample at each end, so
    # that every cell has four corners (edges included).
    padded = logits.permute(0, 2, 3, 1).index_select(1, torch.tensor([0, *range(h), h - 1]))
    padded = padded.index_select(2, torch.tensor([0, *range(w), w - 1]))  # N,h+2,w+2,C
    # The four corners of every cell, as shifted views (top-left, top-right, bottom-left, bottom-right).
    corners = [padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]]
    slack = _DOMINANCE_SLACK * logits.abs().amax(dim=(1, 2, 3)).reshape(n, 1, 1, 1)
    # One dominator per cell, the class with the highest minimum over its corners: on the demo build's
    # photographs it leaves at most 7-11 candidates (adding the corners' winners as dominators cut that
    # to 8 but cost four times the work).
    lowest = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3]))
    dominator = lowest.argmax(dim=3, keepdim=True)
    gaps = [corner.gather(3, dominator) - corner for corner in corners]
    # c may win somewhere in the cell unless the dominator beats it by more than the slack at all corners.
    alive = torch.minimum(torch.minimum(gaps[0], gaps[1]), torch.minimum(gaps[2], gaps[3])) <= slack
    order = (num_classes - torch.arange(num_classes)).float()
    # The first candidates in class order, one more than the slots: a cell has at least m candidates where
    # the m-th ranked score is positive (cheaper than counting all classes).
    cells = (h + 1) * (w + 1)
    ranked, slots = (alive.float() * order).topk(min(k + 1, num_classes), dim=3)
    ranked, slots = ranked.reshape(n, cells, -1), slots.reshape(n, cells, -1)

    def at_least(m):  # [N, cells]: has the cell m candidates or more?
        return ranked[:, :, m - 1] > 0 if m <= ranked.shape[2] else torch.zeros_like(ranked[:, :, 0], dtype=torch.bool)

    used = ranked[:, :, :k] > 0
    slots = slots[:, :, :k]

    row_cell, wy_all, row_starts = _bilinear_axis(h, out_h)
    col_cell, wx_all, col_starts = _bilinear_axis(w, out_w)
    # Every pixel first takes its cell's first candidate: the answer wherever there is only one.
    first_class = slots[:, :, 0].float().reshape(n, h + 1, w + 1)
    out = first_class.index_select(1, row_cell).index_select(2, col_cell)  # N,H,W
    flat = torch.cat([out.reshape(-1), torch.zeros(1)])  # + a sink for the padding of the blocks
    sink = torch.as_tensor(n * out_h * out_w)  # flat's last element
    span_h, span_w = cell_span(h, out_h), cell_span(w, out_w)
    padded_flat = padded.reshape(-1)
    corner_offsets = torch.tensor([0, 1, w + 2, w + 3]) * num_classes

    def blocks(listed):  # [N, K] cell indices -> flat corner offsets, weights and output targets of their pixels
        b = torch.arange(n)[:, None].expand_as(listed).reshape(-1)
        listed = listed.reshape(-1)
        a, c = listed // (w + 1), listed % (w + 1)
        rows, rows_in, wy = _blocks(a, row_starts, wy_all, span_h, out_h)
        cols, cols_in, wx = _blocks(c, col_starts, wx_all, span_w, out_w)
        target = (b[:, None, None] * out_h + rows[:, :, None]) * out_w + cols[:, None, :]
        target = torch.where(rows_in[:, :, None] & cols_in[:, None, :], target, sink)
        return ((b * (h + 2) + a) * (w + 2) + c) * num_classes, wy, wx, target.reshape(-1)

    def corner_scores(first, class_ids):  # [M, S, 4] from the padded logits
        index = first[:, None, None] + class_ids[:, :, None] + corner_offsets
        return padded_flat[index]

    # Tiers in increasing order of candidates: a cell a tier lists as filler with more candidates than its
    # slots is rewritten by its own tier later; with fewer, its empty slots never win, so it comes out right.
    overflow = torch.zeros((), dtype=torch.bool)
    for low, high, width, per_pass, passes in ARGMAX_TIERS:
        if low > num_classes:
            break
        wanted = at_least(low) if high is None else at_least(low) & ~at_least(high + 1)
        listed, left_out = _list_cells(wanted.float(), per_pass, passes)
        overflow = overflow | left_out
        first, wy, wx, target = blocks(listed)
        if width is not None:
            width = min(width, k)
            cell_slots = slots.gather(1, listed[:, :, None].expand(-1, -1, k))[:, :, :width].reshape(-1, width)
            cell_used = used.gather(1, listed[:, :, None].expand(-1, -1, k))[:, :, :width].reshape(-1, width)
            scores = torch.where(cell_used[:, :, None], corner_scores(first, cell_slots), torch.as_tensor(_EMPTY_SLOT))
            best = _score_blocks(scores, wy, wx).argmax(dim=1)  # M,by,bx: the first of equal scores
            values = cell_slots.float().gather(1, best.flatten(1))
        else:  # every class, folded ``chunk`` at a time (strict > keeps the first)
            best_score = values = None
            for start in range(0, num_classes, chunk):
                ids = torch.arange(start, min(start + chunk, num_classes))[None, :].expand(first.shape[0], -1)
                score, index = _score_blocks(corner_scores(first, ids), wy, wx).max(dim=1)
                index = (index + start).float()
                if best_score is None:
                    best_score, values = score, index
                else:
                    better = score > best_score
                    best_score, values = torch.where(better, score, best_score), torch.where(better, index, values)
        flat = flat.scatter(0, target, values.reshape(-1))
    return _dense_fallback(overflow, flat[:-1].reshape(n, out_h, out_w), logits, chunk)


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
