"""Segmentation's upsampled argmax, traced into its graph: transformers' bilinear upsampling of every
class score to the frame, then argmax, with the work only where the answer can change.

``upsampled_argmax`` is the graph's; ``chunked_upsampled_argmax`` is the plain dense fold (the reference
its tests compare with). Its memory on TensorRT for RTX is in docs/measurements.md.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _cell_weights(starts: torch.Tensor, weight: torch.Tensor, span, out_size) -> torch.Tensor:
    """Every cell's second-tap weights ``[cells, span]`` along one axis, its pixels in order (past the cell's own
    size they are other pixels' weights, whose values the table holds but ``_frame`` never reads)."""
    index = starts[:-1, None] + torch.arange(span)[None, :]
    return weight[torch.minimum(index, torch.as_tensor(out_size) - 1)]


def _score_blocks(corners: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """Bilinear scores ``[M, S, by, bx]`` from corner scores ``[M, S, 4]`` (rows then columns, as torch)."""
    wx, wy = wx[:, None, :], wy[:, None, :, None]
    top = corners[:, :, 0:1] * (1.0 - wx) + corners[:, :, 1:2] * wx
    bottom = corners[:, :, 2:3] * (1.0 - wx) + corners[:, :, 3:4] * wx
    return top[:, :, None, :] * (1.0 - wy) + bottom[:, :, None, :] * wy


# Cells that need more than their first candidate, listed per frame by TopK in fixed-size passes (static shapes:
# TensorRT for RTX has no NonZero). (lowest count, highest count, candidate slots, cells per pass, passes); the
# last tier interpolates every class. The demo build's photographs need up to ~7,400 cells of 2-4 candidates,
# ~90 of 5-8, ~10 of more (of 16,641); the cells a tier leaves out take the dense fallback (``_dense_fallback``).
ARGMAX_TIERS = ((2, 4, 4, 3840, 2), (5, 8, 8, 1024, 1), (9, None, None, 128, 1))


def _list_cells(key: torch.Tensor, count: int):
    """Up to ``count`` cells per frame where ``key`` is 1 (``[N, cells]``), as ``[N, count]`` indices, and ``key``
    with them zeroed (what is left to list). TopK (its k is at most 3840 in TensorRT): with fewer such cells,
    others fill up the list, which the caller must handle harmlessly."""
    index = key.topk(min(count, key.shape[1]), dim=1).indices
    return index, key.scatter(1, index, torch.zeros_like(index, dtype=key.dtype))


# The cell table's class ids (below 2,048: exact in float16), half the bytes of float32: the table, the fallback's
# blocks and the frame laid out from them are each frame-sized (4.8 MB at 1080p from 128x128 logits).
CLASS_DTYPE = torch.float16

# Bands of rows of cells the candidate test runs in, one after the other: its class-wide tensors (cells x
# classes, 10 MB each at 128x128 logits, several of them) are then a band's, not the frame's (TensorRT for RTX,
# 1080p bounds, the test and the first candidates laid out as the frame: 59.9 MB in one band, 41.3 in 4, 32.6 in 8,
# 23.9 in 16).
CANDIDATE_BANDS = 16


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
    slack = _DOMINANCE_SLACK * logits.abs().amax(dim=(1, 2, 3)).reshape(n, 1, 1, 1)
    order = (num_classes - torch.arange(num_classes)).float()
    band = -(-(int(h) + 1) // CANDIDATE_BANDS)  # int(): the logits' size is the model's, not the frame's
    ranked, slots = [], []
    for top in range(0, int(h) + 1, band):
        r, s = _band_candidates(padded[:, top : min(top + band + 1, int(h) + 2)], slack, order, k)
        ranked.append(r)
        slots.append(s)
    cells = (h + 1) * (w + 1)
    return padded, torch.cat(ranked, dim=1).reshape(n, cells, -1), torch.cat(slots, dim=1).reshape(n, cells, -1)


def _band_candidates(padded: torch.Tensor, slack: torch.Tensor, order: torch.Tensor, k: int):
    """``_candidates`` of the cells between the rows of ``padded`` ([N, rows + 1, w+2, C])."""
    # The four corners of every cell, as shifted views (top-left, top-right, bottom-left, bottom-right).
    corners = [padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]]
    # One dominator per cell, the class with the highest minimum over its corners: on the demo build's
    # photographs it leaves at most 7-11 candidates (adding the corners' winners as dominators cut that
    # to 8 but cost four times the work).
    lowest = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3]))
    dominator = lowest.argmax(dim=3, keepdim=True)
    gaps = [corner.gather(3, dominator) - corner for corner in corners]
    # c may win somewhere in the cell unless the dominator beats it by more than the slack at all corners.
    alive = torch.minimum(torch.minimum(gaps[0], gaps[1]), torch.minimum(gaps[2], gaps[3])) <= slack
    ranked, slots = (alive.float() * order).topk(min(k + 1, order.shape[0]), dim=3)
    return ranked.flatten(1, 2), slots.flatten(1, 2)


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


# Cells per conditional of the dense fallback: each ``If`` scores every class over this many cells at once (at 1080p
# from 128x128 logits: 256 cells x 150 classes x 144 pixels, 22 MB of float32). The argmax alone on TensorRT for
# RTX at 1080p bounds (python -m benchmarks.trt_conditionals argmax --fallback-cells 128,256): 256 cells, 65 Ifs:
# activation 85.1 MB, engine 88.4 MB, built in 71 s; 128 cells, 130 Ifs: 74.0 MB, 160.9 MB, 169 s.
FALLBACK_CELLS = 256


@torch.jit.script
def _every_class_if(
    take: torch.Tensor,
    kept: torch.Tensor,
    padded: torch.Tensor,
    wy_rows: torch.Tensor,
    wx_cols: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """Where ``take``, the class of every pixel of the cells ``start ...`` (``kept``'s [N, cells, span_h, span_w])
    over all classes of ``padded`` ([N, h+2, w+2, C]); else ``kept``.

    Scripted so that it is an ONNX ``If``: ONNX Runtime runs it only for the blocks that need it, and TensorRT
    for RTX gives each If's output a buffer of its own (tests/test_workarounds.py), which here is one block's
    values, not a frame. Bilinear sums in torch's order (``_score_blocks``), so it is torch's argmax.
    """
    if bool(take):
        n, cells, num_classes, width = kept.shape[0], kept.shape[1], padded.shape[3], padded.shape[2]
        ids = torch.arange(start, start + cells)
        row, col = torch.div(ids, width - 1, rounding_mode="floor"), ids % (width - 1)
        flat = padded.reshape(n, -1, num_classes)
        top_left = row * width + col
        corners = (
            flat.index_select(1, top_left),
            flat.index_select(1, top_left + 1),
            flat.index_select(1, top_left + width),
            flat.index_select(1, top_left + width + 1),
        )
        scores = torch.stack(corners, dim=3).reshape(n * cells, num_classes, 4)
        wy = wy_rows.index_select(0, row)[None].expand(n, -1, -1).reshape(n * cells, -1)
        wx = wx_cols.index_select(0, col)[None].expand(n, -1, -1).reshape(n * cells, -1)
        return _score_blocks(scores, wy, wx).argmax(dim=1).to(kept.dtype).reshape(kept.shape)
    return kept


def _dense_fallback(table: torch.Tensor, left_out: torch.Tensor, padded: torch.Tensor, wy_rows, wx_cols):
    """``table`` with every block of ``FALLBACK_CELLS`` cells that holds a cell the tiers left out (``left_out``
    [N, cells] > 0) scored over every class: one ``If`` per block, the blocks concatenated once."""
    blocks = []
    for start in range(0, table.shape[1], FALLBACK_CELLS):
        end = min(start + FALLBACK_CELLS, table.shape[1])
        take = left_out[:, start:end].amax() > 0
        blocks.append(_every_class_if(take, table[:, start:end], padded, wy_rows, wx_cols, start))
    return torch.cat(blocks, dim=1)


def upsampled_argmax(logits: torch.Tensor, size, chunk: int = 8) -> torch.Tensor:
    """``argmax(interpolate(logits, size, bilinear, align_corners=False), dim=1)``, working only where it can change:
    ``tiered_argmax``'s cells, and where its tiers overflow, every class over the blocks of cells they left out."""
    cells = _tiered_cells(logits, size, chunk)
    table = _dense_fallback(cells.table, cells.left_out, cells.padded, cells.wy_rows, cells.wx_cols)
    return _frame(table, cells)


def tiered_argmax(logits: torch.Tensor, size, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The class of every pixel (``CLASS_DTYPE``, [N, H, W]) where the tiers hold every cell that needs one, and whether
    any frame had more such cells than they hold (then its classes are not all right: ``upsampled_argmax``)."""
    cells = _tiered_cells(logits, size, chunk)
    return _frame(cells.table, cells), cells.left_out.amax() > 0


class _Cells(NamedTuple):
    """The classes of a frame cell by cell, and what the fallback and ``_frame`` need to finish them."""

    table: torch.Tensor  # [N, cells, span_h, span_w]: each cell's pixels (past its own size: never read)
    left_out: torch.Tensor  # [N, cells]: > 0 where a cell needed a tier but none held it
    padded: torch.Tensor  # [N, h+2, w+2, C]: the logits, edges replicated, classes last
    wy_rows: torch.Tensor  # [h+1, span_h]: the second tap's weight of each pixel row of each row of cells
    wx_cols: torch.Tensor  # [w+1, span_w]
    rows: torch.Tensor  # [H]: each frame row's row in the table's grid layout (cell row x span_h + offset)
    cols: torch.Tensor  # [W]


def _frame(table: torch.Tensor, cells: _Cells) -> torch.Tensor:
    """The frame ([N, H, W]) from the cell table: laid out as a grid of cells, then two gathers."""
    n, count, span_h, span_w = table.shape
    rows_of_cells = cells.wy_rows.shape[0]
    grid = table.reshape(n, rows_of_cells, count // rows_of_cells, span_h, span_w).permute(0, 1, 3, 2, 4)
    grid = grid.reshape(n, rows_of_cells * span_h, -1)
    return grid.index_select(1, cells.rows).index_select(2, cells.cols)


def _tiered_cells(logits: torch.Tensor, size, chunk: int) -> _Cells:
    """Every output pixel lies in one cell between four neighbouring logit samples, and its scores
    are convex combinations of theirs. So within a cell a class ``c`` can never win (nor tie) where
    another class ``d`` beats it at all four corners: ``s_d - s_c`` is positive at the corners, hence
    everywhere between them. Per cell, the classes the dominator does not beat that way are its candidates.
    - one candidate (most cells): the whole cell takes that class;
    - more: the cell is listed in its tier (``ARGMAX_TIERS``) and its pixels interpolate that many
      candidate slots (in class order, empty slots never win, ties fall to the first), or every class;
    - more listed cells than a tier holds (random scores, not photographs): ``left_out`` says which, for
      ``_dense_fallback``.
    The classes are kept per cell ([N, cells, span_h, span_w]), so that each tier writes its cells' blocks
    whole and the fallback's conditionals return blocks, not frames; ``_frame`` lays them out once.
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
    span_h, span_w = cell_span(h, out_h), cell_span(w, out_w)
    wy_rows = _cell_weights(row_starts, wy_all, span_h, out_h)
    wx_cols = _cell_weights(col_starts, wx_all, span_w, out_w)
    # Every cell first takes its first candidate: the answer wherever there is only one.
    first_class = slots[:, :, 0].to(CLASS_DTYPE)
    table = first_class[:, :, None, None].expand(-1, -1, wy_rows.shape[1], wx_cols.shape[1])
    padded_flat = padded.reshape(-1)
    corner_offsets = torch.tensor([0, 1, w + 2, w + 3]) * num_classes

    # Tiers in increasing order of candidates: a cell a tier lists as filler with more candidates than its
    # slots is rewritten by its own tier later; with fewer, its empty slots never win, so it comes out right.
    left_out = torch.zeros_like(first_class, dtype=torch.float32)  # the tiers' keys are float32
    for low, high, width, per_pass, passes in ARGMAX_TIERS:
        if low > num_classes:
            break
        wanted = (at_least(low) if high is None else at_least(low) & ~at_least(high + 1)).float()
        for _ in range(passes):  # a pass at a time: one pass's blocks of pixels are in memory, not the tier's
            listed, wanted = _list_cells(wanted, per_pass)
            frame = torch.arange(n)[:, None].expand_as(listed)
            a, c = (listed // (w + 1)).reshape(-1), (listed % (w + 1)).reshape(-1)
            first = ((frame.reshape(-1) * (h + 2) + a) * (w + 2) + c) * num_classes
            wy, wx = wy_rows.index_select(0, a), wx_cols.index_select(0, c)

            def corners_of(ids, first=first):  # [M, S] class ids -> their scores at the cells' corners [M, S, 4]
                return padded_flat[first[:, None, None] + ids[:, :, None] + corner_offsets]

            if width is not None:
                values = _candidate_winners(corners_of, wy, wx, slots, used, listed, min(width, k))
            else:
                values = _every_class(
                    lambda ids, wy=wy, wx=wx: _score_blocks(corners_of(ids), wy, wx), first.shape[0], num_classes, chunk
                )
            blocks = values.to(CLASS_DTYPE).reshape(listed.shape[0], listed.shape[1], table.shape[2], table.shape[3])
            table = table.index_put((frame, listed), blocks)
        left_out = torch.maximum(left_out, wanted)
    rows = row_cell * wy_rows.shape[1] + torch.arange(out_h) - row_starts.index_select(0, row_cell)
    cols = col_cell * wx_cols.shape[1] + torch.arange(out_w) - col_starts.index_select(0, col_cell)
    return _Cells(table, left_out, padded, wy_rows, wx_cols, rows, cols)
