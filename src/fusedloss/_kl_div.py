"""Distillation loss on logits, NumPy API: ``kl_div_with_logits`` and its ``_and_grad``.

One fused kernel (csrc/fusedloss/kl_div_logits.h) per call; argument handling
as the other losses (``_api``, ``_validate``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from . import _validate as v
from ._api import _fused_call, _input

__all__ = ["kl_div_with_logits", "kl_div_with_logits_and_grad"]

def _reduction_code(reduction: Any) -> int:
    # "batchmean" and "mean" both divide by the number of rows: the loss is one value per row.
    return v.reduction_code(reduction, v.KL_REDUCTIONS)


def _as(a: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The kernel's (rows, C) / (rows,) view of a C-contiguous buffer."""
    return None if a is None else a.reshape(shape)


def _kl_div_with_logits(
    input: Any,
    target: Any,
    temperature: Any,
    reduction: Any,
    want_grad: bool,
    grad_output: Any = None,
    out: Any = None,
    inplace: Any = False,
) -> tuple[Any, np.ndarray | None]:
    original, x = _input(input, False)
    if x.ndim not in (1, 2):
        raise ValueError(f"input: expected shape (C,) or (N, C), got {x.shape}")
    t = v.array(target, "target")
    if t.dtype.kind != "f":
        raise TypeError(f"target: expected floating logits, got dtype {t.dtype}")
    v.same_shape(t, x.shape, "target", "the input's shape")
    t = np.asarray(t, dtype=x.dtype, order="C")
    temperature = v.real_number(temperature, "temperature", "a finite number > 0")
    if temperature <= 0:
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature}")
    red = _reduction_code(reduction)
    rows, classes = (1, x.shape[0]) if x.ndim == 1 else x.shape
    loss_shape = x.shape[:-1]  # (N,), or () for one (C,) row

    def kernel(loss_buf: Any, grad_buf: Any, go: Any, go_scalar: float) -> float:
        return _core.kl_div_with_logits(
            x.reshape(rows, classes), t.reshape(rows, classes), temperature, red,
            _as(loss_buf, (rows,)), _as(grad_buf, (rows, classes)), _as(go, (rows,)), go_scalar,
            False,
        )

    return _fused_call(x, original, red, loss_shape, want_grad, grad_output, out, inplace,
                       {"target": (t, target)}, kernel)


def kl_div_with_logits(
    input: np.ndarray,
    target: np.ndarray,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> Any:
    """Knowledge-distillation loss between a student's logits (``input``) and a
    teacher's (``target``), both ``(N, C)`` (or one ``(C,)`` row), fused in one pass:

    per row ``T**2 * sum_j p_j * (log p_j - log q_j)`` with ``p = softmax(target / T)``,
    ``q = softmax(input / T)``, i.e. ``T**2 * F.kl_div(F.log_softmax(input / T),
    F.log_softmax(target / T), log_target=True)`` summed over classes. A class with
    ``p_j = 0`` (a teacher logit of ``-inf``: a masked vocabulary, top-k logits) adds
    ``0 log 0 = 0``, where ``F.kl_div`` with ``log_target=True`` gives NaN.

    reduction: "batchmean" (default) and "mean" divide the sum over rows by N (for this
    row-wise loss they are the same; note that ``F.kl_div``'s elementwise "mean" would
    divide by N*C), "sum", or "none" (one value per row; 0-d for a (C,) input).
    float32/float64 (float16 read as such); target is cast to input's dtype.
    """
    return _kl_div_with_logits(input, target, temperature, reduction, False)[0]


def kl_div_with_logits_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """:func:`kl_div_with_logits` and its gradient w.r.t. ``input`` in one fused pass:
    ``T * (q - p)`` per row, times ``grad_output`` (and / N for batchmean). The target
    logits are constants (no gradient). ``grad_output``, ``out`` and ``inplace`` as in
    :func:`fusedloss.cross_entropy_and_grad`."""
    loss, grad = _kl_div_with_logits(
        input, target, temperature, reduction, True, grad_output, out, inplace
    )
    assert grad is not None
    return loss, grad
