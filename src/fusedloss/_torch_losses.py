"""The elementwise losses of :mod:`fusedloss.torch`: drop-ins for their
``torch.nn.functional`` namesakes and ``torch.nn`` modules (same signatures and
results), computed by the fused kernel through ``_torch_elementwise``.

Each public function settles torch's argument rules (deprecated
``size_average`` / ``reduce``, ``beta == 0``, ``log_target``), then
:func:`_fused` either runs the kernel or, where the kernel does not compute
exactly what torch would (non-CPU tensors, other dtypes, broadcasting or
mismatched dtypes, weights that require grad or do not broadcast, empty input,
tensor subclasses, functorch transforms), calls torch's own function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import _reduction as _Reduction

from . import _torch_elementwise as _ew
from ._elementwise import bce_with_logits_op
from ._torch_ops import (
    MEAN, SUPPORTED_DTYPES, float32_loss, functorch_active, reduction_code, torch_function_wanted,
)
from ._torchscript import RefusesTorchScript, torch_twin

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "SmoothL1Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "smooth_l1_loss",
]


def _factor_fusable(factor: Tensor | None, input: Tensor) -> bool:
    if factor is None:
        return True
    if not (isinstance(factor, Tensor) and factor.is_cpu and not factor.requires_grad
            and factor.dtype is input.dtype and factor.numel() > 0):
        return False
    try:
        return torch.broadcast_shapes(factor.shape, input.shape) == input.shape
    except RuntimeError:
        return False


def _fusable(input, target, weight, pos_weight) -> bool:
    return (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and not torch_function_wanted(input, target, weight, pos_weight)
        and not functorch_active()
        and input.dtype in SUPPORTED_DTYPES
        and target.dtype is input.dtype
        and input.is_cpu
        and target.is_cpu
        and target.shape == input.shape
        and input.numel() > 0
        and _factor_fusable(weight, input)
        and _factor_fusable(pos_weight, input)
    )


def _fused(
    op: str,
    fallback: Callable[[], Tensor],
    input: Tensor,
    target: Tensor,
    reduction: str,
    *,
    param: float = 0.0,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    batchmean: bool = False,
) -> Tensor:
    """The loss from the fused kernel, or ``fallback()`` (torch's own) where
    the kernel would not compute exactly what torch does."""
    code = MEAN if batchmean else reduction_code(reduction)
    if code is None or not _fusable(input, target, weight, pos_weight):
        return fallback()
    denominator = float(input.shape[0]) if batchmean and input.dim() else (1.0 if batchmean else 0.0)
    autocast = float32_loss(input)
    need_x = torch.is_grad_enabled() and input.requires_grad
    need_t = torch.is_grad_enabled() and target.requires_grad
    args = (op, code, float(param), denominator)
    if torch.compiler.is_compiling():
        return _ew.elementwise_op(input.contiguous(), target.contiguous(), weight, pos_weight,
                                  *args, need_x, need_t, autocast)[0]
    input, target = input.contiguous(), target.contiguous()
    if not (need_x or need_t):
        return _ew.elementwise_kernel(op, input, target, weight, pos_weight, code, float(param),
                                      denominator, None, None, autocast)
    return _ew.elementwise_apply(input, target, weight, pos_weight, *args, autocast)


def _legacy(reduction: str, size_average, reduce) -> str:
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


@torch_twin(F.mse_loss)
def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.mse_loss` (gradients for input
    and target). ``weight`` (whose mean divides by the weights' sum) uses torch's
    own implementation."""
    reduction = _legacy(reduction, size_average, reduce)
    fallback = lambda: F.mse_loss(input, target, reduction=reduction, weight=weight)  # noqa: E731
    if weight is not None:
        return fallback()
    return _fused("mse", fallback, input, target, reduction)


@torch_twin(F.l1_loss)
def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.l1_loss` (gradients for input
    and target; the gradient at ``input == target`` is 0, as in torch). Complex
    tensors and ``weight`` use torch's own implementation."""
    reduction = _legacy(reduction, size_average, reduce)
    fallback = lambda: F.l1_loss(input, target, reduction=reduction, weight=weight)  # noqa: E731
    if weight is not None:
        return fallback()
    return _fused("l1", fallback, input, target, reduction)


@torch_twin(F.huber_loss)
def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.huber_loss` (gradients for
    input and target; ``weight`` of the input's shape multiplies each element)."""
    fallback = lambda: F.huber_loss(input, target, reduction, delta, weight)  # noqa: E731
    if not (isinstance(delta, (int, float)) and delta > 0) or (
        weight is not None and (not isinstance(weight, Tensor) or weight.shape != input.shape)
    ):
        return fallback()  # torch's own error
    return _fused("huber", fallback, input, target, reduction, param=delta, weight=weight)


@torch_twin(F.smooth_l1_loss)
def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.smooth_l1_loss`; ``beta=0`` is
    the L1 loss, as in torch."""
    reduction = _legacy(reduction, size_average, reduce)
    fallback = lambda: F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)  # noqa: E731
    if not (isinstance(beta, (int, float)) and beta >= 0):
        return fallback()
    op = "smooth_l1" if beta > 0 else "l1"
    return _fused(op, fallback, input, target, reduction, param=beta)


@torch_twin(F.binary_cross_entropy)
def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.binary_cross_entropy` (logs
    clamped at -100; input outside [0, 1] raises RuntimeError, as torch)."""
    reduction = _legacy(reduction, size_average, reduce)
    fallback = lambda: F.binary_cross_entropy(input, target, weight, reduction=reduction)  # noqa: E731
    return _fused("binary_cross_entropy", fallback, input, target, reduction, weight=weight)


@torch_twin(F.binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    (stable softplus form; ``weight`` and ``pos_weight`` broadcast as in torch)."""
    reduction = _legacy(reduction, size_average, reduce)

    def fallback() -> Tensor:
        return F.binary_cross_entropy_with_logits(
            input, target, weight, reduction=reduction, pos_weight=pos_weight
        )

    return _fused(bce_with_logits_op(pos_weight), fallback, input, target, reduction,
                  weight=weight, pos_weight=pos_weight)


@torch_twin(F.kl_div)
def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.kl_div` (input: log-probabilities;
    ``reduction="batchmean"`` divides by ``input.size(0)``; torch's warning for
    ``"mean"`` included)."""
    if size_average is not None or reduce is not None:
        if reduction == "batchmean":  # torch divides the legacy reduction by the batch size too
            return F.kl_div(input, target, size_average, reduce, reduction, log_target)
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    elif reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support "
            "size.'batchmean' divides only by the batch size, and aligns with the KL div math "
            "definition.'mean' will be changed to behave the same as 'batchmean' in the next "
            "major release.",
            stacklevel=3,  # the caller's line: torch_twin's wrapper stands between
        )
    if not isinstance(log_target, bool):  # torch's check (after its warning): a truthy string is no flag
        kind = type(log_target)
        name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        raise TypeError(f"kl_div(): argument 'log_target' must be bool, not {name}")

    def fallback() -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said above already
            return F.kl_div(input, target, reduction=reduction, log_target=log_target)

    op = "kl_div_log_target" if log_target else "kl_div"
    return _fused(op, fallback, input, target, reduction, batchmean=reduction == "batchmean")


class MSELoss(RefusesTorchScript, nn.MSELoss):
    """Drop-in for :class:`torch.nn.MSELoss` computed by :func:`fusedloss.torch.mse_loss`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)


class L1Loss(RefusesTorchScript, nn.L1Loss):
    """Drop-in for :class:`torch.nn.L1Loss` computed by :func:`fusedloss.torch.l1_loss`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1_loss(input, target, reduction=self.reduction)


class HuberLoss(RefusesTorchScript, nn.HuberLoss):
    """Drop-in for :class:`torch.nn.HuberLoss` computed by :func:`fusedloss.torch.huber_loss`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(RefusesTorchScript, nn.SmoothL1Loss):
    """Drop-in for :class:`torch.nn.SmoothL1Loss` computed by
    :func:`fusedloss.torch.smooth_l1_loss`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCELoss(RefusesTorchScript, nn.BCELoss):
    """Drop-in for :class:`torch.nn.BCELoss` computed by
    :func:`fusedloss.torch.binary_cross_entropy`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(RefusesTorchScript, nn.BCEWithLogitsLoss):
    """Drop-in for :class:`torch.nn.BCEWithLogitsLoss` computed by
    :func:`fusedloss.torch.binary_cross_entropy_with_logits`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )


class KLDivLoss(RefusesTorchScript, nn.KLDivLoss):
    """Drop-in for :class:`torch.nn.KLDivLoss` computed by :func:`fusedloss.torch.kl_div`."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
