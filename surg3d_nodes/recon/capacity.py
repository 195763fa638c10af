"""Tensors that grow along their first two dimensions (rows: Gaussians; columns: time knots) in amortised constant
time per added element, as a Python list grows.

Every frame appends Gaussians and a knot: concatenating copied every knot tensor and its Adam moments each time
(27 copies of an N x knots x 3 tensor per frame, 44 % of a frame's `add_frame` at 32k Gaussians). `grown` keeps
spare room instead and fills it in place.
"""

from __future__ import annotations

import math

import torch

GROWTH = 1.25         # spare room when a tensor must move: at most a quarter more memory than it holds


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def grown(t: torch.Tensor, rows: int, cols: int | None = None) -> torch.Tensor:
    """`t` ([n, ...], or [n, k, ...] with `cols`) enlarged to `rows` rows (and `cols` columns along dim 1): its
    values in the leading block, the new entries unspecified (the caller writes them). A view of t's own storage
    when that has room (t came from `grown`), else of a new one GROWTH times the size needed in each dimension
    that grows. Views of one storage share it: a caller replaces its tensor by the result and drops the old."""
    n = t.shape[0]
    k = t.shape[1] if cols is not None else None
    inner = tuple(t.shape[2:] if cols is not None else t.shape[1:])
    d = math.prod(inner)
    # t's room: its own shape, or more when it is the leading block of a row-major [rows_cap, (cols_cap,) *inner]
    # storage (it came from `grown`).
    rows_cap, cols_cap = n, k
    layout = t.storage_offset() == 0 and d > 0 and \
        tuple(t.stride()[t.dim() - len(inner):]) == _contiguous_strides(inner)
    if layout and cols is not None:
        per_row, rem = divmod(t.stride(0), d)
        layout = rem == 0 and t.stride(1) == d and per_row >= k
        cols_cap = per_row if layout else k
    elif layout:
        layout = t.stride(0) == d
    if layout:
        rows_cap = max(n, (t.untyped_storage().nbytes() // t.element_size()) // max(1, t.stride(0)))
    if rows <= rows_cap and (cols is None or cols <= cols_cap):
        if not layout:
            return t[:rows, :cols] if cols is not None else t[:rows]
        shape = (rows_cap, cols_cap, *inner) if cols is not None else (rows_cap, *inner)
        base = t.new_empty(0).set_(t.untyped_storage(), 0, shape)
        return base[:rows, :cols] if cols is not None else base[:rows]
    # Move to a larger storage, keeping the room the other dimension had.
    rows_cap = rows_cap if rows <= rows_cap else int(rows * GROWTH) + 16
    if cols is None:
        out = t.new_empty((rows_cap, *inner))
        out[:n] = t
        return out[:rows]
    cols_cap = cols_cap if cols <= cols_cap else int(cols * GROWTH) + 4
    out = t.new_empty((rows_cap, cols_cap, *inner))
    out[:n, :k] = t
    return out[:rows, :cols]


def compact(t: torch.Tensor) -> torch.Tensor:
    """`t` on a storage of its own size (a copy when it views a larger one): what a checkpoint saves, since
    torch.save writes a view's whole storage."""
    if t.is_contiguous() and t.storage_offset() == 0 and \
            t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)
