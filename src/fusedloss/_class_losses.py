"""NumPy API of the losses over class indices: ``nll_loss`` and ``multi_margin_loss``
(torch.nn.functional semantics over NumPy arrays).

Argument handling is that of cross-entropy (``_api``, ``_validate``): the same
input, target, weight, grad_output, ``out=`` and ``inplace=`` rules and messages.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _core
from . import _validate as v
from ._api import _class_index_target, _fused_call, _input

__all__ = ["multi_margin_loss", "multi_margin_loss_and_grad", "nll_loss", "nll_loss_and_grad"]


def _index_target(target: Any, loss_shape: tuple[int, ...], single: bool) -> np.ndarray:
    """Integer class indices shaped ``loss_shape`` as C-contiguous int64. ``single``:
    one sample, whose target may also be shaped (1,) (torch accepts both)."""
    t = v.array(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
    if single and t.shape == (1,):
        t = t.reshape(())
    return _class_index_target(t, loss_shape)


def _run(
    kernel: Any,
    x: np.ndarray,
    original: np.ndarray,
    kernel_x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    options: tuple[Any, ...],
    red: int,
    loss_shape: tuple[int, ...],
    want_grad: bool,
    grad_output: Any,
    out: Any,
    inplace: Any,
    geometry: tuple[int, ...] = (),
) -> tuple[Any, np.ndarray | None]:
    """One kernel call: ``kernel(kernel_x, target, weight, *options, red, loss, grad, ...)``
    with ``kernel_x`` the kernel's view of ``x`` (the checked input), then the results
    shaped and typed as torch's."""
    def call(loss_buf: Any, grad_buf: Any, go: Any, go_scalar: float) -> float:
        kernel_grad = None if grad_buf is None else grad_buf.reshape(kernel_x.shape)
        return kernel(
            kernel_x, target, weight, *options, red, loss_buf, kernel_grad, go, go_scalar, False,
            *geometry,
        )

    return _fused_call(x, original, red, loss_shape, want_grad, grad_output, out, inplace,
                       {"target": target, "weight": weight}, call)


# ---------------------------------------------------------------------------- nll_loss


def _nll(
    input: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any, want_grad: bool,
    grad_output: Any = None, out: Any = None, inplace: Any = False,
) -> tuple[Any, np.ndarray | None]:
    original, x = _input(input, False)
    outer, classes, inner, loss_shape = v.class_geometry(x.shape)
    red = v.reduction_code(reduction)
    ignore_index = v.integer_value(ignore_index, "ignore_index")
    t = _index_target(target, loss_shape, x.ndim == 1)
    w = v.class_weight(weight, classes, v.accumulation_dtype(x.dtype))
    return _run(
        _core.nll, x, original, x, t, w, (ignore_index,), red, loss_shape, want_grad,
        grad_output, out, inplace, (outer, classes, inner),
    )


def nll_loss(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Any:
    """Negative log-likelihood, as ``torch.nn.functional.nll_loss``.

    input: (C,), (N, C) or (N, C, d1, ..., dk) log-probabilities (float32, float64 or
    float16). target: integer class indices shaped like input without C. Each
    position's loss is ``-weight[t] * input[t]``, 0 where ``t == ignore_index``; the
    mean divides by the summed weight of the targets not ignored (NaN when that is
    nothing). An index outside [0, C) that is not ignore_index raises IndexError.
    """
    return _nll(input, target, weight, ignore_index, reduction, False)[0]


def nll_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """NLL loss and its gradient w.r.t. ``input`` in one pass: ``-weight[t] * grad_output``
    at each target, 0 elsewhere. ``grad_output``, ``out=`` and ``inplace=`` as in
    ``cross_entropy_and_grad``."""
    loss, grad = _nll(
        input, target, weight, ignore_index, reduction, True, grad_output, out, inplace
    )
    assert grad is not None
    return loss, grad


# ------------------------------------------------------------------- multi_margin_loss


def _power(p: Any) -> int:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"p: expected 1 or 2, got {type(p).__name__}")
    if p != 1 and p != 2:
        raise ValueError(f"p: only 1 and 2 are supported, got {p}")
    return int(p)


def _margin(margin: Any) -> float:
    if isinstance(margin, (bool, np.bool_)) or not isinstance(margin, numbers.Real):
        raise TypeError(f"margin: expected a real number, got {type(margin).__name__}")
    return v.as_float(margin, "margin")


def _multi_margin(
    input: Any, target: Any, p: Any, margin: Any, weight: Any, reduction: Any, want_grad: bool,
    grad_output: Any = None, out: Any = None, inplace: Any = False,
) -> tuple[Any, np.ndarray | None]:
    original, x = _input(input, False)
    shape = x.shape
    if len(shape) > 2:
        raise ValueError(f"input: expected shape (C,) or (N, C), got {shape}")
    rows = shape[0] if len(shape) == 2 else 1
    classes = shape[-1] if shape else 1  # a 0-d input is one sample of one class, as torch
    if classes == 0:
        raise ValueError(f"input: the class dimension is empty (shape {shape})")
    t = v.array(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
    if t.ndim > 1 or t.size != rows:
        raise ValueError(
            f"target: expected shape ({rows},) or a 0-d array for one sample (one class index "
            f"per row of input), got {t.shape}"
        )
    loss_shape = t.shape  # as torch: the unreduced loss is shaped like the target
    t = _class_index_target(t, loss_shape)
    p = _power(p)
    margin = _margin(margin)
    red = v.reduction_code(reduction)
    w = v.class_weight(weight, classes, v.accumulation_dtype(x.dtype))
    return _run(
        _core.multi_margin, x, original, x.reshape(rows, classes), t, w, (p, margin), red,
        loss_shape, want_grad, grad_output, out, inplace,
    )


def multi_margin_loss(
    input: np.ndarray,
    target: np.ndarray,
    p: int = 1,
    margin: float = 1.0,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
) -> Any:
    """The multi-class hinge (SVM) loss, as ``torch.nn.functional.multi_margin_loss``.

    input: (N, C) or (C,) scores (float32, float64 or float16); target: (N,) integer
    class indices (a 0-d index for one sample). Per sample
    ``sum_{j != y} weight[y] * max(0, margin - input[y] + input[j])**p / C``; p is 1 or 2.
    A NaN term counts as 0, as in torch. The mean divides by N.
    """
    return _multi_margin(input, target, p, margin, weight, reduction, False)[0]


def multi_margin_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    p: int = 1,
    margin: float = 1.0,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """Multi-margin loss and its gradient w.r.t. ``input`` in one pass over each row.
    ``grad_output``, ``out=`` and ``inplace=`` as in ``cross_entropy_and_grad``."""
    loss, grad = _multi_margin(
        input, target, p, margin, weight, reduction, True, grad_output, out, inplace
    )
    assert grad is not None
    return loss, grad
