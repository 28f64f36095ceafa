"""The torch face of the losses over class indices (re-exported by ``fusedloss.torch``):
``nll_loss`` / ``NLLLoss`` and ``multi_margin_loss`` / ``MultiMarginLoss``.

As for cross-entropy (``_torch_ops``): the kernel writes the input's gradient in
the forward pass and backward only scales it (one backward, ``class_loss_backward``,
for the eager ``autograd.Function`` and the ``torch.library`` custom ops
``fusedloss::nll_loss`` / ``fusedloss::multi_margin_loss`` that
``torch.compile(fullgraph=True)`` traces). The target (class indices) has no gradient.

Fallbacks to torch's own implementation, as for the other losses: tensors not on
the CPU, dtypes other than float32/float64/float16/bfloat16, tensor subclasses,
torch.func transforms, shapes or target dtypes torch would reject or broadcast, a
``weight`` that requires grad or has another dtype, empty input, and a target out
of range (torch then raises its own error).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _core
from . import _torch_ops as _ops
from ._torch_losses import _legacy  # deprecated size_average / reduce -> reduction
from ._torchscript import RefusesTorchScript, torch_twin

__all__ = ["MultiMarginLoss", "NLLLoss", "multi_margin_loss", "nll_loss"]

_NONE = _ops.NONE


# --------------------------------------------------------------------------- kernels


def _run_kernel(
    kernel, x: Tensor, x_shape: tuple[int, ...], target: Tensor, weight: Tensor | None,
    reduction: int, options: tuple, grad: Tensor | None, float32_loss: bool,
    loss_shape: list[int], geometry: tuple[int, ...] = (),
) -> Tensor:
    """``kernel`` (a ``_core`` binding) on the tensors' buffers, ``x`` viewed as
    ``x_shape``; writes d(loss)/d(input) for grad_output 1 into ``grad`` when given
    (``grad`` may be ``x``). The loss comes back in the input's dtype (float32 for
    half input under autocast)."""
    dtype = x.dtype
    accum = _ops._ACCUM[dtype]
    out = torch.float32 if float32_loss else dtype
    xa = _ops._array(x).reshape(x_shape)
    ta = _ops._array(target)
    wa = None if weight is None else _ops._array(weight.to(accum).contiguous())
    ga = None if grad is None else (xa if grad is x else _ops._array(grad).reshape(x_shape))
    bf16 = dtype is torch.bfloat16
    if reduction == _NONE:
        loss = torch.empty(loss_shape, dtype=accum)
        kernel(xa, ta, wa, *options, _NONE, loss.numpy(), ga, None, 1.0, bf16, *geometry)
        return loss if accum is out else loss.to(out)
    value = kernel(xa, ta, wa, *options, reduction, None, ga, None, 1.0, bf16, *geometry)
    return torch.scalar_tensor(value, dtype=out)


def nll_kernel(
    x: Tensor, target: Tensor, weight: Tensor | None, reduction: int, ignore_index: int,
    grad: Tensor | None, float32_loss: bool,
) -> Tensor:
    geometry = _ops._ce_geometry(x)
    return _run_kernel(
        _core.nll, x, tuple(x.shape), target, weight, reduction, (ignore_index,), grad,
        float32_loss, _ops._ce_loss_shape(x), geometry,
    )


def multi_margin_kernel(
    x: Tensor, target: Tensor, weight: Tensor | None, reduction: int, p: int, margin: float,
    grad: Tensor | None, float32_loss: bool,
) -> Tensor:
    rows = x.shape[0] if x.dim() == 2 else 1
    return _run_kernel(
        _core.multi_margin, x, (rows, x.shape[-1]), target, weight, reduction, (p, margin),
        grad, float32_loss, list(target.shape),  # as torch: the unreduced loss is target-shaped
    )


def class_loss_backward(grad: Tensor, grad_loss: Tensor, reduction: int, inplace: bool) -> Tensor:
    """The input's gradient from the saved one (for grad_output 1): scaled by
    ``grad_loss``, per row where the unreduced loss has one value per row/position."""
    per_row = grad.dim() > 1 and grad_loss.dim() > 0
    return _ops._guard_double_backward(
        _ops.scale_grad(grad, grad_loss, reduction, per_row, inplace)
    )[0]


# --------------------------------------------------------------------------- eager


class ClassLossFunction(torch.autograd.Function):
    """Eager nll_loss / multi_margin_loss: ``kernel(x, target, weight, reduction,
    *options, grad, float32_loss)`` computes the loss and the input's gradient."""

    @staticmethod
    def forward(ctx, x, target, weight, kernel, reduction, options, float32_loss):
        ctx.set_materialize_grads(False)
        ctx.reduction = reduction
        grad = _ops.new_gradient(x)
        loss = kernel(x, target, weight, reduction, *options, grad, float32_loss)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return None, None, None, None, None, None, None
        (grad,) = ctx.saved_tensors
        return class_loss_backward(grad, grad_loss, ctx.reduction, True), None, None, None, None, None, None


_apply = _ops._fast_apply(ClassLossFunction)


# ---------------------------------------------------------------------- custom ops


def _register_autograd(op, name: str, n_inputs: int) -> None:
    """Backward of a class-loss custom op whose inputs are (input, target, weight,
    reduction, *options, compute_grad, float32_loss) and outputs (loss, grad)."""

    def setup_context(ctx, inputs, output):
        ctx.reduction = inputs[3]
        ctx.compute_grad = inputs[-2]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_loss, _grad_grad):
        if not ctx.compute_grad:
            raise RuntimeError(f"fusedloss::{name}: called with compute_grad=False")
        (grad,) = ctx.saved_tensors
        # Out of place: the compiler owns buffer reuse.
        return (class_loss_backward(grad, grad_loss, ctx.reduction, False),) + (None,) * (
            n_inputs - 1
        )

    op.register_autograd(backward, setup_context=setup_context)


def _empty_grad(input: Tensor, compute_grad: bool) -> Tensor:
    return _ops.new_gradient(input) if compute_grad else input.new_empty((0,))


def _fake_outputs(input: Tensor, loss_shape, compute_grad: bool, float32_loss: bool):
    grad = torch.empty_like(input) if compute_grad else input.new_empty((0,))
    return input.new_empty(loss_shape, dtype=torch.float32 if float32_loss else input.dtype), grad


@torch.library.custom_op("fusedloss::nll_loss", mutates_args=(), device_types="cpu")
def nll_loss_op(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: int, ignore_index: int,
    compute_grad: bool, float32_loss: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, grad_input for grad_output 1); grad_input is empty without compute_grad."""
    grad = _empty_grad(input, compute_grad)
    loss = nll_kernel(
        input, target, weight, reduction, ignore_index, grad if compute_grad else None,
        float32_loss,
    )
    return loss, grad


@nll_loss_op.register_fake
def _(input, target, weight, reduction, ignore_index, compute_grad, float32_loss):
    shape = _ops._ce_loss_shape(input) if reduction == _NONE else []
    return _fake_outputs(input, shape, compute_grad, float32_loss)


_register_autograd(nll_loss_op, "nll_loss", 7)


@torch.library.custom_op("fusedloss::multi_margin_loss", mutates_args=(), device_types="cpu")
def multi_margin_loss_op(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: int, p: int, margin: float,
    compute_grad: bool, float32_loss: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, grad_input for grad_output 1); grad_input is empty without compute_grad."""
    grad = _empty_grad(input, compute_grad)
    loss = multi_margin_kernel(
        input, target, weight, reduction, p, margin, grad if compute_grad else None, float32_loss
    )
    return loss, grad


@multi_margin_loss_op.register_fake
def _(input, target, weight, reduction, p, margin, compute_grad, float32_loss):
    shape = list(target.shape) if reduction == _NONE else []
    return _fake_outputs(input, shape, compute_grad, float32_loss)


_register_autograd(multi_margin_loss_op, "multi_margin_loss", 8)


# ---------------------------------------------------------------------- public API


def _tensors_fusable(input, target, weight) -> bool:
    """CPU tensors of a kernel dtype, non-empty input, int64 target, no overrides."""
    return (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and not _ops.torch_function_wanted(input, target, weight)
        and not _ops.functorch_active()
        and input.dtype in _ops.SUPPORTED_DTYPES
        and input.is_cpu
        and target.is_cpu
        and target.dtype is torch.int64
        and input.numel() > 0
    )


def _fused(kernel, op, input, target, weight, code, options, autocast, torch_fn) -> Tensor:
    """The kernel through the custom op (compiling), directly (no gradient) or
    through the autograd.Function. ``torch_fn()``: torch's own call, for a target
    out of range (the kernel raises before writing anything, torch its own error)."""
    if torch.compiler.is_compiling():
        compute_grad = input.requires_grad and torch.is_grad_enabled()
        return op(
            input.contiguous(), target.contiguous(), weight, code, *options, compute_grad, autocast
        )[0]
    if not input.is_contiguous():
        input = input.contiguous()
    if not target.is_contiguous():
        target = target.contiguous()
    try:
        if torch.is_grad_enabled() and input.requires_grad:
            return _apply(input, target, weight, kernel, code, options, autocast)
        return kernel(input, target, weight, code, *options, None, autocast)
    except IndexError:
        return torch_fn()


@torch_twin(F.nll_loss)
def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.nll_loss`: ``input`` ``(C,)``,
    ``(N, C)`` or ``(N, C, d1, ..., dk)`` log-probabilities, ``target`` int64 class
    indices shaped like input without ``C``. Gradient for ``input``."""
    reduction = _legacy(reduction, size_average, reduce)
    code = _ops.reduction_code(reduction)

    def torch_fn() -> Tensor:
        return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)

    if code is None or not _tensors_fusable(input, target, weight):
        return torch_fn()
    shape = input.shape
    ndim = len(shape)
    autocast = _ops.float32_loss(input)
    fusable = (
        ndim > 0  # a 0-d input: torch's own error
        and (target.dim() == 0 if ndim == 1 else target.shape == shape[:1] + shape[2:])
        and _ops.class_weight_fusable(weight, input, shape[0 if ndim == 1 else 1], autocast)
        # an ignore_index outside int64 goes to torch, which raises its own error
        and type(ignore_index) is int
        and _ops.INT64_MIN <= ignore_index <= _ops.INT64_MAX
    )
    if not fusable:
        return torch_fn()
    return _fused(
        nll_kernel, nll_loss_op, input, target, weight, code, (ignore_index,), autocast, torch_fn
    )


@torch_twin(F.multi_margin_loss)
def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Fused drop-in for :func:`torch.nn.functional.multi_margin_loss` (the
    multi-class hinge loss): ``input`` ``(N, C)`` or ``(C,)``, ``target`` int64
    ``(N,)`` (or one index), p 1 or 2. Gradient for ``input``."""
    reduction = _legacy(reduction, size_average, reduce)
    code = _ops.reduction_code(reduction)

    def torch_fn() -> Tensor:
        if reduction != "none" and isinstance(input, Tensor) and input.dim() == 2 and (
            input.shape[0] == 0
        ):
            # torch 2.13's CPU kernel reduces no samples to uninitialised memory:
            # reduce its (empty, checked) per-sample losses here, to 0 and NaN.
            per_sample = F.multi_margin_loss(
                input, target, p=p, margin=margin, weight=weight, reduction="none"
            )
            return per_sample.sum() if reduction == "sum" else per_sample.mean()
        return F.multi_margin_loss(
            input, target, p=p, margin=margin, weight=weight, reduction=reduction
        )

    if code is None or not _tensors_fusable(input, target, weight):
        return torch_fn()
    ndim = input.dim()
    autocast = _ops.float32_loss(input)
    fusable = (
        ndim in (1, 2)
        and target.dim() <= 1
        and target.numel() == (input.shape[0] if ndim == 2 else 1)
        and type(p) in (int, float)
        and p in (1, 2)
        and type(margin) in (int, float)
        and _ops.class_weight_fusable(weight, input, input.shape[-1], autocast)
    )
    if not fusable:
        return torch_fn()
    return _fused(
        multi_margin_kernel, multi_margin_loss_op, input, target, weight, code,
        (int(p), float(margin)), autocast, torch_fn,
    )


class NLLLoss(RefusesTorchScript, nn.NLLLoss):
    """Drop-in for :class:`torch.nn.NLLLoss` computed by :func:`fusedloss.torch.nll_loss`
    (same constructor, deprecated ``size_average``/``reduce`` included)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class MultiMarginLoss(RefusesTorchScript, nn.MultiMarginLoss):
    """Drop-in for :class:`torch.nn.MultiMarginLoss` computed by
    :func:`fusedloss.torch.multi_margin_loss` (same constructor)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return multi_margin_loss(
            input, target, p=self.p, margin=self.margin, weight=self.weight,
            reduction=self.reduction,
        )
