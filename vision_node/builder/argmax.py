"""Segmentation's upsampled argmax, traced into its graph: transformers' bilinear upsampling of every
class score to the frame, then argmax, with the work only where the answer can change.

``upsampled_argmax`` is the graph's; ``chunked_upsampled_argmax`` is the dense fold it falls back to
(and the reference its tests compare with).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunked_upsampled_argmax(logits: torch.Tensor, size, chunk: int) -> torch.Tensor:
    """``argmax(interpolate(logits, size, bilinear), dim=1)`` without the full C×H×W tensor.

    Classes are interpolated ``chunk`` at a time and folded into a running (best score,
    best class) pair, so peak memory is ``chunk × H × W`` floats instead of ``C × H × W``.
    Strict ``>`` keeps the first class on ties, as ``argmax`` does. Every class at every pixel:
    the reference for ``upsampled_argmax``, which does the same work only near class boundaries.
    """
    num_classes = logits.shape[1]
    best_score: torch.Tensor | None = None
    best_class: torch.Tensor | None = None
    for start in range(0, num_classes, chunk):
        part = F.interpolate(logits[:, start : start + chunk], size=size, mode="bilinear", align_corners=False)
        score, index = part.max(dim=1)
        index = index + start
        if best_score is None or best_class is None:
            best_score, best_class = score, index
        else:
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_class = torch.where(better, index, best_class)
    assert best_class is not None  # a model has classes
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
    a workaround. TensorRT for RTX fails with an internal error on a Loop, inside an If or not (seen on
    1.7.1.116: makeScopeNodesContiguous), and one If around every chunk cost it 1,031 MiB of activations at
    1080p bounds (581 so). Remove when its builder builds a Loop (tests/test_workarounds.py fails then) and the
    Loop costs no more. ONNX Runtime's copy of the graph has the chain merged into one If
    (``passes.merged_ifs``): it copied the pair out of every skipped one.
    Bilinear taps and weighted sums in torch's own order (no Resize), so that it is torch's argmax bit
    for bit but for ties of a float32 rounding.
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


def _candidates(logits: torch.Tensor, k: int):
    """Per cell between four logit samples, its candidate classes: (padded logits, ranked, slots).

    ``slots`` [N, cells, k+1] are the first candidates in class order and ``ranked`` their keys: a cell
    has at least m candidates where the m-th key is positive (cheaper than counting all classes).
    """
    n, num_classes, h, w = logits.shape
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
    cells = (h + 1) * (w + 1)
    ranked, slots = (alive.float() * order).topk(min(k + 1, num_classes), dim=3)
    return padded, ranked.reshape(n, cells, -1), slots.reshape(n, cells, -1)


def _candidate_winners(corners_of, wy, wx, slots, used, listed, width: int) -> torch.Tensor:
    """The winning class of every pixel of the ``listed`` cells among their first ``width`` candidates
    (an empty slot scores ``_EMPTY_SLOT`` at every corner, so it never wins)."""
    k = slots.shape[2]
    cell_slots = slots.gather(1, listed[:, :, None].expand(-1, -1, k))[:, :, :width].reshape(-1, width)
    cell_used = used.gather(1, listed[:, :, None].expand(-1, -1, k))[:, :, :width].reshape(-1, width)
    scores = torch.where(cell_used[:, :, None], corners_of(cell_slots), torch.as_tensor(_EMPTY_SLOT))
    best = _score_blocks(scores, wy, wx).argmax(dim=1)  # M,by,bx: the first of equal scores
    return cell_slots.float().gather(1, best.flatten(1))


def _every_class(score_blocks, rows: int, num_classes: int, chunk: int) -> torch.Tensor:
    """The winning class of every pixel of ``rows`` blocks over all classes, ``chunk`` at a time
    (strict > keeps the first); ``score_blocks(class_ids [rows, c])`` scores a chunk."""
    best_score: torch.Tensor | None = None
    values: torch.Tensor | None = None
    for start in range(0, num_classes, chunk):
        ids = torch.arange(start, min(start + chunk, num_classes))[None, :].expand(rows, -1)
        score, index = score_blocks(ids).max(dim=1)
        index = (index + start).float()
        if best_score is None or values is None:
            best_score, values = score, index
        else:
            better = score > best_score
            best_score, values = torch.where(better, score, best_score), torch.where(better, index, values)
    assert values is not None  # a model has classes
    return values


def upsampled_argmax(logits: torch.Tensor, size, chunk: int = 8) -> torch.Tensor:
    """``argmax(interpolate(logits, size, bilinear, align_corners=False), dim=1)``, working only where it can change:
    ``tiered_argmax``, or where its tiers overflow, the dense fold."""
    classes, overflow = tiered_argmax(logits, size, chunk)
    return _dense_fallback(overflow, classes, logits, chunk)


def tiered_argmax(logits: torch.Tensor, size, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The class of every pixel (float, [N, H, W]) where the tiers hold every cell that needs one, and whether
    any frame had more such cells than they hold (then its classes are not all right: ``upsampled_argmax``).

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
    padded, ranked, slots = _candidates(logits, k)

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

        def corners_of(ids, first=first):  # [M, S] class ids -> their scores at the cells' corners [M, S, 4]
            return corner_scores(first, ids)

        if width is not None:
            values = _candidate_winners(corners_of, wy, wx, slots, used, listed, min(width, k))
        else:
            values = _every_class(
                lambda ids, wy=wy, wx=wx: _score_blocks(corners_of(ids), wy, wx), first.shape[0], num_classes, chunk
            )
        flat = flat.scatter(0, target, values.reshape(-1))
    return flat[:-1].reshape(n, out_h, out_w), overflow
