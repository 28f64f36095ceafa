"""The elementwise losses of the NumPy API: torch.nn.functional semantics over
NumPy arrays, each a thin function over one generic call into the fused
elementwise kernel (``_core.elementwise``; the ops are listed in ``_losses``).

Each takes ``input`` as a float32, float64 or float16 array (float16 accumulated in
float32; L1 also complex64 / complex128), converts ``target`` to input's dtype, and
returns the loss and gradient in input's dtype (the loss's real counterpart for
complex input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from . import _validate as v
from ._api import _fused_call, _input
from ._broadcast import NO_FACTOR, broadcast_factor

__all__ = [
    "mse_loss",
    "mse_loss_and_grad",
    "l1_loss",
    "l1_loss_and_grad",
    "huber_loss",
    "huber_loss_and_grad",
    "smooth_l1_loss",
    "smooth_l1_loss_and_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "kl_div",
    "kl_div_and_grad",
]

OPS: dict[str, int] = dict(_core.ELEMENTWISE_OPS)
_REDUCTIONS = v.REDUCTIONS
_KL_REDUCTIONS = v.KL_REDUCTIONS


def _target(target: Any, x: np.ndarray) -> np.ndarray:
    t = target
    if type(t) is np.ndarray and t.dtype is x.dtype and t.shape == x.shape and t.flags.c_contiguous:
        return t
    t = v.array(target, "target")
    v.same_shape(t, x.shape, "target", "the input's shape")
    if t.dtype.kind == "c" and x.dtype.kind != "c":
        raise TypeError(f"target: complex target needs complex input, got input dtype {x.dtype}")
    if t.dtype.kind not in "fiuc" or t.dtype == np.bool_:
        raise TypeError(f"target: expected a floating array, got dtype {t.dtype}")
    return np.asarray(t, dtype=x.dtype, order="C")


def _positive(value: Any, name: str, allow_zero: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = v.as_float(value, name)
    if not (value >= 0.0 if allow_zero else value > 0.0):  # NaN too; +inf is torch's too
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    return value


def _elementwise(
    op: str,
    input: Any,
    target: Any,
    reduction: Any,
    want_grad: bool,
    grad_output: Any = None,
    out: Any = None,
    inplace: Any = False,
    *,
    allow_complex: bool = False,
    param: float = 0.0,
    weight: Any = None,
    pos_weight: Any = None,
    reductions: dict[str, int] = _REDUCTIONS,
    in_unit_interval: bool = False,
) -> tuple[Any, np.ndarray | None]:
    """One elementwise loss: validate, one kernel call, shape the result.
    ``reduction="batchmean"`` (kl_div) is a mean over ``input.shape[0]``."""
    if weight is None and pos_weight is None and grad_output is None and inplace is False:
        # The common call, recognised and run by the binding (see small_call.cpp),
        # or None: then the checks below (same kernel, same bits).
        common = _core.elementwise_common(OPS[op], input, target, out, reduction, param, want_grad)
        if common is not None:
            return common  # type: ignore[no-any-return]
    original, x = _input(input, allow_complex)
    dtype = x.dtype
    t = _target(target, x)
    red = v.reduction_code(reduction, reductions)
    accum = v.accumulation_dtype(dtype)
    w = broadcast_factor(weight, x.shape, accum, "weight") if weight is not None else NO_FACTOR
    pw = NO_FACTOR
    if pos_weight is not None:
        pw = broadcast_factor(pos_weight, x.shape, accum, "pos_weight")
    denominator = 0.0  # the kernel's default: the element count (0 elements: NaN)
    if reduction == "batchmean":
        denominator = float(x.shape[0]) if x.ndim else 1.0

    def kernel(loss_buf: Any, grad_buf: Any, go: Any, go_scalar: float) -> float:
        if in_unit_interval and grad_buf is original:
            # The kernel finds such elements as it goes, having written over them.
            for name, a in (("input", x), ("target", t)):
                if a.size and not ((a >= 0) & (a <= 1)).all():
                    raise ValueError(f"{name}: all elements of {name} should be between 0 and 1")
        return _core.elementwise(  # by position (see _core.pyi)
            OPS[op], x, t, red, loss_buf, grad_buf, go, go_scalar, False,
            0.0, param, 1.0,  # target_scalar (unused: t is given), param, scale
            w.values, w.period, w.repeat, pw.values, pw.period, pw.repeat, denominator,
        )

    return _fused_call(x, original, red, x.shape, want_grad, grad_output, out, inplace,
                       {"target": (t, target), "weight": (w.values, weight),
                        "pos_weight": (pw.values, pos_weight)}, kernel)


def _with_grad(result: tuple[Any, np.ndarray | None]) -> tuple[Any, np.ndarray]:
    loss, grad = result
    assert grad is not None
    return loss, grad


def mse_loss(input: np.ndarray, target: np.ndarray, reduction: str = "mean") -> Any:
    """Mean squared error, as ``torch.nn.functional.mse_loss`` (same shapes only)."""
    return _elementwise("mse", input, target, reduction, False)[0]


def mse_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """MSE and its gradient w.r.t. ``input`` in one pass (see cross_entropy_and_grad)."""
    return _with_grad(_elementwise("mse", input, target, reduction, True, grad_output, out, inplace))


def l1_loss(input: np.ndarray, target: np.ndarray, reduction: str = "mean") -> Any:
    """Mean absolute error, as ``torch.nn.functional.l1_loss``; complex input allowed."""
    return _elementwise("l1", input, target, reduction, False, allow_complex=True)[0]


def l1_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """L1 loss and its gradient w.r.t. ``input`` in one pass (complex: g * d/|d|)."""
    return _with_grad(
        _elementwise("l1", input, target, reduction, True, grad_output, out, inplace,
                     allow_complex=True)
    )


def _delta(delta: Any) -> float:
    return _positive(delta, "delta", allow_zero=False)


def _huber_weight(weight: Any, input: Any) -> Any:
    # torch: "Weights and input must have the same size." (An input that is not an
    # array is refused first, by the loss's own check.)
    if weight is not None and isinstance(input, np.ndarray):
        v.same_shape(v.array(weight, "weight"), np.shape(input), "weight", "the input's shape")
    return weight


def _smooth_l1(beta: Any) -> tuple[str, float]:
    """(op, beta): beta = 0 is the L1 loss, as in torch."""
    beta = _positive(beta, "beta", allow_zero=True)
    return ("smooth_l1" if beta > 0.0 else "l1"), beta


def bce_with_logits_op(pos_weight: Any) -> str:
    """torch's formulas differ with and without pos_weight (infinite targets: torch's
    infinities without it, NaN with pos_weight 1): one op each."""
    return "binary_cross_entropy_with_logits" + ("" if pos_weight is None else "_pos_weight")


def _kl_op(log_target: Any) -> str:
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target: expected a bool, got {type(log_target).__name__}")
    return "kl_div_log_target" if log_target else "kl_div"


def huber_loss(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: np.ndarray | None = None,
) -> Any:
    """Huber loss, as ``torch.nn.functional.huber_loss``: ``0.5 d**2`` for
    ``|d| < delta``, else ``delta * (|d| - delta / 2)``; ``weight`` (the input's
    shape) multiplies each element, and the mean stays over the elements."""
    return _elementwise(
        "huber", input, target, reduction, False, param=_delta(delta),
        weight=_huber_weight(weight, input),
    )[0]


def huber_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: np.ndarray | None = None,
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """Huber loss and its gradient w.r.t. ``input`` in one pass."""
    return _with_grad(_elementwise(
        "huber", input, target, reduction, True, grad_output, out, inplace, param=_delta(delta),
        weight=_huber_weight(weight, input),
    ))


def smooth_l1_loss(
    input: np.ndarray, target: np.ndarray, reduction: str = "mean", beta: float = 1.0
) -> Any:
    """Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``: ``0.5 d**2 / beta``
    for ``|d| < beta``, else ``|d| - beta / 2``; ``beta=0`` is the L1 loss."""
    op, beta = _smooth_l1(beta)
    return _elementwise(op, input, target, reduction, False, param=beta)[0]


def smooth_l1_loss_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    beta: float = 1.0,
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """Smooth L1 loss and its gradient w.r.t. ``input`` in one pass."""
    op, beta = _smooth_l1(beta)
    return _with_grad(
        _elementwise(op, input, target, reduction, True, grad_output, out, inplace, param=beta)
    )


def binary_cross_entropy(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
) -> Any:
    """Binary cross-entropy on probabilities, as ``torch.nn.functional.binary_cross_entropy``:
    ``-w (t log x + (1 - t) log(1 - x))`` with each log clamped at -100; ``weight``
    broadcasts to the input. Input or target outside [0, 1] (or NaN) raises ValueError."""
    return _elementwise(
        "binary_cross_entropy", input, target, reduction, False, weight=weight,
        in_unit_interval=True,
    )[0]


def binary_cross_entropy_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """Binary cross-entropy and its gradient w.r.t. ``input`` in one pass.

    Values outside [0, 1] are found by the kernel as it reads (a separate check
    would cost a pass over both arrays): the ValueError may then come after part
    of ``out`` was written. ``inplace=True`` checks first, so the input is never
    lost to a bad value."""
    return _with_grad(_elementwise(
        "binary_cross_entropy", input, target, reduction, True, grad_output, out, inplace,
        weight=weight, in_unit_interval=True,
    ))


def binary_cross_entropy_with_logits(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    pos_weight: np.ndarray | None = None,
) -> Any:
    """Sigmoid + binary cross-entropy on logits, computed stably (softplus, never
    ``log(sigmoid(x))``), as ``torch.nn.functional.binary_cross_entropy_with_logits``:
    ``weight`` broadcasts to the input, ``pos_weight`` weighs the positive term
    and broadcasts along the last dimension."""
    return _elementwise(
        bce_with_logits_op(pos_weight), input, target, reduction, False, weight=weight,
        pos_weight=pos_weight,
    )[0]


def binary_cross_entropy_with_logits_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    reduction: str = "mean",
    pos_weight: np.ndarray | None = None,
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """Binary cross-entropy with logits and its gradient w.r.t. ``input`` in one pass."""
    return _with_grad(_elementwise(
        bce_with_logits_op(pos_weight), input, target, reduction, True, grad_output, out,
        inplace, weight=weight, pos_weight=pos_weight,
    ))


def kl_div(
    input: np.ndarray, target: np.ndarray, reduction: str = "mean", log_target: bool = False
) -> Any:
    """Kullback-Leibler divergence, as ``torch.nn.functional.kl_div``: ``input`` holds
    log-probabilities, ``target`` probabilities (log-probabilities with
    ``log_target=True``); pointwise ``t (log t - x)``, 0 where ``t == 0``.
    ``reduction="batchmean"`` divides the sum by ``input.shape[0]``."""
    return _elementwise(
        _kl_op(log_target), input, target, reduction, False, reductions=_KL_REDUCTIONS
    )[0]


def kl_div_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    log_target: bool = False,
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """KL divergence and its gradient w.r.t. ``input`` in one pass."""
    return _with_grad(_elementwise(
        _kl_op(log_target), input, target, reduction, True, grad_output, out, inplace,
        reductions=_KL_REDUCTIONS,
    ))
