"""A weight broadcast against an input, as the kernels read it.

The elementwise kernels take a per-element factor (``weight``, ``pos_weight``)
as ``values[(i // repeat) % period]`` for flat element ``i``: torch's
broadcasting of a factor whose non-broadcast dimensions are contiguous (a
scalar, ``(C,)`` against ``(N, C)``, ``(N, 1)`` against ``(N, C)``, the full
shape) needs no copy. Other layouts, and runs too short to vectorise, are
materialised once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _validate as v

_MIN_RUN = 16      # shorter constant runs (repeat) are materialised
_MIN_PERIOD = 256  # shorter vector periods are tiled to about this length


class Factor(NamedTuple):
    values: np.ndarray | None  # C-contiguous, 1-d, accumulation dtype
    period: int
    repeat: int


NO_FACTOR = Factor(None, 1, 1)


def broadcast_factor(value: object, shape: tuple[int, ...], accum: np.dtype, name: str) -> Factor:
    """``value`` (None or an array broadcastable to ``shape`` without growing it)
    as a Factor over ``prod(shape)`` flat elements."""
    if value is None:
        return NO_FACTOR
    arr = v.array(value, name)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name}: expected a floating array, got dtype {arr.dtype}")
    try:
        full = np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        full = None
    if full != shape:
        raise ValueError(
            f"{name}: shape {arr.shape} does not broadcast to the input's shape {shape}"
        )
    n = math.prod(shape)
    if n == 0:
        return NO_FACTOR
    padded = (1,) * (len(shape) - arr.ndim) + arr.shape
    kept = [d for d, (w, s) in enumerate(zip(padded, shape)) if w == s and s > 1]
    values = np.ascontiguousarray(arr, dtype=accum).reshape(-1)
    if not kept:
        return Factor(values[:1], 1, 1)
    lo, hi = kept[0], kept[-1] + 1
    contiguous = all(padded[d] == shape[d] or shape[d] == 1 for d in range(lo, hi))
    period = math.prod(shape[lo:hi])
    repeat = math.prod(shape[hi:])
    if not contiguous or 1 < repeat < _MIN_RUN:
        full_values = np.ascontiguousarray(np.broadcast_to(arr, shape), dtype=accum)
        return Factor(full_values.reshape(-1), n, 1)
    if repeat == 1 and period < _MIN_PERIOD:
        tiles = max(1, min(_MIN_PERIOD // period, n // period))
        return Factor(np.tile(values, tiles), period * tiles, 1)
    return Factor(values, period, repeat)
