"""Fused linear + cross-entropy over NumPy arrays: ``fl.linear_cross_entropy`` and
``fl.linear_cross_entropy_and_grad``. The arguments are checked here (errors name
them), the products are NumPy's matmul (its BLAS) in :class:`NumpyHead`, and the
chunk loop is ``_linear_ce_chunks``'s.

float16 operands are computed in float32, as the torch layer does for half input:
a float32 copy of the weight, each chunk of the input widened as it is projected,
the weight's and bias's gradients accumulated in float32; the loss and the
gradients come back in float16 (rounded once, overflow to inf as in torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validate as v
from ._api import _class_index_target, _narrow_scalar, _shape_loss
from ._linear_ce_chunks import (
    DEFAULT_CHUNK_BYTES,
    MEAN,
    NONE,
    Plan,
    check_class_range,
    chunk_tokens_for,
    mean_denominator,
    kernel_options,
    prefaulted,
    run_chunks,
)

__all__ = ["linear_cross_entropy", "linear_cross_entropy_and_grad", "DEFAULT_CHUNK_BYTES"]

# NumPy's matmul cannot accumulate into its output: a later chunk's weight gradient
# goes through a temporary of at most this many bytes, a block of classes at a time,
# added while it is in cache (the first chunk writes the weight gradient directly).
# Not SciPy's gemm with beta = 1, which adds in place: SciPy brings a second
# OpenBLAS whose thread pool and NumPy's spin against each other (1024 x 512 x
# 32000 float32, 2 cores: 0.98x the unfused time through SciPy, 0.83x this way).
_WEIGHT_GRAD_BLOCK_BYTES = 4 * 2**20


# ------------------------------------------------------------ argument checks


@dataclass
class Shapes:
    tokens: int
    hidden: int
    classes: int
    out_features: tuple[int, ...]
    batched: bool

    @property
    def inner(self) -> int:
        return math.prod(self.out_features)

    @property
    def loss_shape(self) -> tuple[int, ...]:
        """reduction none's result: (N, *out_features), or () for one unbatched token."""
        return (self.tokens, *self.out_features) if self.batched else ()

    @property
    def logits_shape(self) -> tuple[int, ...]:
        lead = (self.tokens,) if self.batched else ()
        return (*lead, self.classes, *self.out_features)


def shapes_of(input_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> Shapes:
    """Token, hidden and class extents; ValueError naming the argument that disagrees."""
    if len(input_shape) not in (1, 2):
        raise ValueError(f"input: expected shape (H,) or (N, H), got {input_shape}")
    if len(weight_shape) < 2:
        raise ValueError(
            f"linear_weight: expected shape (C, H) (or (C, d1, ..., dk, H)), got {weight_shape}"
        )
    hidden = input_shape[-1]
    if weight_shape[-1] != hidden:
        raise ValueError(
            f"linear_weight: expected last dimension {hidden} (the input's H), got shape "
            f"{weight_shape}"
        )
    batched = len(input_shape) == 2
    out_features = tuple(weight_shape[1:-1])
    if out_features and not batched:
        raise ValueError(
            f"input: a K-dimensional linear_weight {weight_shape} needs batched (N, H) input, "
            f"got shape {input_shape}"
        )
    if weight_shape[0] == 0:
        raise ValueError("linear_weight: the class dimension is empty")
    tokens = input_shape[0] if batched else 1
    return Shapes(tokens, hidden, weight_shape[0], out_features, batched)


def float_operand(value: Any, name: str, dtype: np.dtype | None) -> np.ndarray:
    """A float32/float64/float16 array (of ``dtype`` when given: all operands agree,
    as in torch)."""
    arr = v.array(value, name)
    if arr.dtype.kind == "f" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in v.REAL_DTYPES:
        raise TypeError(
            f"{name}: expected a float32, float64 or float16 array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the input's), got {arr.dtype}")
    return arr


def target_rows(target: Any, shapes: Shapes, dtype: np.dtype, ignore_index: int) -> np.ndarray:
    """``(N, inner)`` int64 class indices or ``(N, C * inner)`` probabilities of ``dtype``."""
    t = v.array(target, "target")
    kind = t.dtype.kind
    if kind in "iu":
        t = _class_index_target(t, shapes.loss_shape)
        return t.reshape(shapes.tokens, shapes.inner)
    if kind == "f":
        v.same_shape(t, shapes.logits_shape, "target", "class probabilities: the logits' shape")
        v.no_class_to_ignore(ignore_index)
        return np.ascontiguousarray(t, dtype=dtype).reshape(shapes.tokens, shapes.classes * shapes.inner)
    raise TypeError(
        "target: expected integer class indices or floating class probabilities, "
        f"got dtype {t.dtype}"
    )


@dataclass
class Operands:
    x: np.ndarray  # (N, H)
    w: np.ndarray  # (C * inner, H), C- or F-contiguous
    b: np.ndarray | None  # (C * inner,)
    shapes: Shapes
    plan: Plan


def operands(
    input: Any, linear_weight: Any, target: Any, linear_bias: Any, weight: Any, reduction: Any,
    ignore_index: Any, label_smoothing: Any, logit_scale: Any, softcap: Any,
    lse_square_scale: Any, num_items_in_batch: Any, chunk_bytes: Any,
) -> Operands:
    """Every argument checked (errors name it) before anything is computed; the
    plan's arrays in the computation's dtype (float32 for float16 operands)."""
    x = float_operand(input, "input", None)
    w = float_operand(linear_weight, "linear_weight", x.dtype)
    shapes = shapes_of(x.shape, w.shape)
    rows = shapes.classes * shapes.inner
    w = w.reshape(rows, shapes.hidden)
    if not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w)  # matmul would copy it for every chunk
    b = None
    if linear_bias is not None:
        b = float_operand(linear_bias, "linear_bias", x.dtype)
        v.same_shape(b, (shapes.classes, *shapes.out_features), "linear_bias",
                     "one bias per logit: linear_weight's shape without H")
        b = np.ascontiguousarray(b).reshape(rows)
    red = v.reduction_code(reduction)
    smoothing = v.label_smoothing_value(label_smoothing)
    ignore = v.integer_value(ignore_index, "ignore_index")
    options = v.ce_options(logit_scale, softcap, lse_square_scale, num_items_in_batch)
    v.check_num_items(options, red)
    items = options.num_items_in_batch
    dtype = v.accumulation_dtype(x.dtype)
    t = target_rows(target, shapes, dtype, ignore)
    check_class_range(t, shapes.classes, ignore)
    wt = None
    if weight is not None:
        wt = v.array(weight, "weight")
        if wt.dtype.kind not in "fiu":
            raise TypeError(f"weight: expected a floating array, got dtype {wt.dtype}")
        v.same_shape(wt, (shapes.classes,), "weight", "one weight per class")
        wt = np.ascontiguousarray(wt, dtype=dtype)
    denominator = 1.0
    if red == MEAN:
        denominator = items if items is not None else mean_denominator(
            t, wt, ignore, shapes.tokens * shapes.inner
        )
    plan = Plan(
        shapes.tokens, shapes.classes, shapes.inner, t, wt, ignore, smoothing, red,
        kernel_options(options), denominator,
        chunk_tokens_for(shapes.tokens, rows * dtype.itemsize, chunk_bytes),
    )
    return Operands(x.reshape(shapes.tokens, shapes.hidden), w, b, shapes, plan)


# ------------------------------------------------------------ the NumPy head


class NumpyHead:
    """Chunks projected and differentiated with NumPy's matmul (its BLAS), in
    ``compute`` dtype (float32 for float16 operands: the weight copied once, each
    chunk of the input widened; ``grad_w`` stays in it, ``grad_x`` is the input's)."""

    def __init__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, chunk_tokens: int,
                 want_grad: bool) -> None:
        self.compute = compute = v.accumulation_dtype(x.dtype)
        self.x = x
        self.w = w.astype(compute, copy=False)
        self.b = None if b is None else b.astype(compute, copy=False)
        self.h = x[:0]  # the chunk being differentiated, in compute dtype
        self.buf = np.empty((chunk_tokens, w.shape[0]), dtype=compute)
        self.grad_x = self.grad_w = self.grad_b = None
        self.block = self.scratch = None
        if want_grad:
            self.grad_x = np.empty_like(x)
            # The first chunk's product overwrites it (without tokens, no chunk runs
            # and it stays 0). Prefaulted, unlike the chunk buffer, whose first
            # product's page faults measured to cost about what its fill would.
            self.grad_w = prefaulted(w.shape, compute)
            if b is not None:
                # Summed in float64: NumPy adds the rows of a chunk one after another
                # (axis 0), so in float32 the error grew with the tokens (8192 tokens:
                # 14 ULP median against torch's 2).
                self.grad_b = np.zeros(b.shape, dtype=np.float64)
        self.started = False

    def logits(self, start: int, stop: int) -> np.ndarray:
        out = self.buf[: stop - start]
        self.h = h = self.x[start:stop].astype(self.compute, copy=False)
        np.matmul(h, self.w.T, out=out)
        if self.b is not None:
            out += self.b
        return out

    def accumulate(self, start: int, stop: int, grad: np.ndarray) -> None:
        h = self.h
        if self.grad_x.dtype == self.compute:
            np.matmul(grad, self.w, out=self.grad_x[start:stop])
        else:  # float16: one rounding of the float32 product (overflow: inf, as torch)
            with np.errstate(over="ignore"):
                self.grad_x[start:stop] = grad @ self.w
        if self.grad_b is not None:
            self.grad_b += grad.sum(axis=0, dtype=np.float64)
        if not self.started:
            np.matmul(grad.T, h, out=self.grad_w)
            self.started = True
            return
        if self.scratch is None:
            rows, hidden = self.grad_w.shape
            self.block = max(1, min(rows, _WEIGHT_GRAD_BLOCK_BYTES // max(hidden * h.itemsize, 1)))
            self.scratch = np.empty((self.block, hidden), dtype=h.dtype)
        gt = grad.T
        for c0 in range(0, gt.shape[0], self.block):
            c1 = min(c0 + self.block, gt.shape[0])
            part = self.scratch[: c1 - c0]
            np.matmul(gt[c0:c1], h, out=part)
            self.grad_w[c0:c1] += part


def _loss_array(loss_rows: np.ndarray, shapes: Shapes) -> np.ndarray:
    return loss_rows.reshape(shapes.loss_shape)


def _compute(
    args: tuple[Any, ...], chunk_bytes: Any, want_grad: bool, grad_output: Any = None
) -> tuple[Any, NumpyHead, Shapes]:
    ops = operands(*args, chunk_bytes)
    plan, shapes = ops.plan, ops.shapes
    go_arr, go_scalar = None, 1.0
    compute = v.accumulation_dtype(ops.x.dtype)
    if want_grad:
        go_arr, go_scalar = v.grad_output_value(grad_output, plan.reduction, shapes.loss_shape,
                                                compute)
        if go_arr is not None:
            go_arr = go_arr.reshape(shapes.tokens, shapes.inner)
    head = NumpyHead(ops.x, ops.w, ops.b, plan.chunk_tokens, want_grad)
    if plan.reduction == NONE:
        loss_rows = np.empty((shapes.tokens, shapes.inner), dtype=compute)
        run_chunks(plan, head, want_grad, go_scalar, loss_rows, go_arr)
        return _loss_array(_shape_loss(loss_rows, ops.x.dtype), shapes), head, shapes
    total = run_chunks(plan, head, want_grad, go_scalar)
    return _narrow_scalar(ops.x.dtype, total), head, shapes


def linear_cross_entropy(
    input: np.ndarray,
    linear_weight: np.ndarray,
    target: np.ndarray,
    linear_bias: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    lse_square_scale: float = 0.0,
    num_items_in_batch: float | None = None,
    *,
    chunk_bytes: int | None = None,
) -> Any:
    """Cross-entropy of the logits ``input @ linear_weight.T + linear_bias``, which
    are never materialised: only ``chunk_bytes`` of them at a time (default
    :data:`DEFAULT_CHUNK_BYTES`, 64 MiB).

    input: ``(N, H)`` or ``(H,)`` float32/float64/float16 (float16 computed in
    float32); linear_weight: ``(C, H)`` (or ``(C, d1, ..., dk, H)``, a
    K-dimensional loss) of the same dtype; target:
    ``(N,)`` (``(N, d1, ..., dk)``) integer class indices or probabilities shaped
    like the logits. The options are those of :func:`fusedloss.cross_entropy`
    (``logit_scale``, ``softcap``, ``lse_square_scale`` apply to the logits in
    that order); ``num_items_in_batch`` replaces the mean's divisor. Returns a
    scalar of input's dtype, or the per-token losses for reduction ``"none"``.
    """
    args = (input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
            label_smoothing, logit_scale, softcap, lse_square_scale, num_items_in_batch)
    return _compute(args, chunk_bytes, False)[0]


def linear_cross_entropy_and_grad(
    input: np.ndarray,
    linear_weight: np.ndarray,
    target: np.ndarray,
    linear_bias: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    lse_square_scale: float = 0.0,
    num_items_in_batch: float | None = None,
    grad_output: Any = None,
    *,
    chunk_bytes: int | None = None,
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`linear_cross_entropy` and the gradients of ``sum(grad_output * loss)``
    for ``input``, ``linear_weight`` and ``linear_bias`` (None without a bias):
    ``(loss, grad_input, grad_linear_weight, grad_linear_bias)``, in one chunked
    pass. Beyond the results, it needs one chunk of logits and a 4 MiB block for
    the weight gradient's accumulation."""
    args = (input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
            label_smoothing, logit_scale, softcap, lse_square_scale, num_items_in_batch)
    loss, head, shapes = _compute(args, chunk_bytes, True, grad_output)
    assert head.grad_x is not None and head.grad_w is not None
    in_shape = (shapes.tokens, shapes.hidden) if shapes.batched else (shapes.hidden,)
    dtype = head.x.dtype
    with np.errstate(over="ignore"):  # float16: rounded once, overflow to inf as torch
        grad_w = head.grad_w.astype(dtype, copy=False)
        grad_b = None if head.grad_b is None else head.grad_b.astype(dtype)
    grad_w = grad_w.reshape(shapes.classes, *shapes.out_features, shapes.hidden)
    if grad_b is not None:
        grad_b = grad_b.reshape(shapes.classes, *shapes.out_features)
    return loss, head.grad_x.reshape(in_shape), grad_w, grad_b
