"""Distillation loss in :mod:`fusedloss.torch`: ``kl_div_with_logits``.

As cross-entropy (see ``_torch_ops``): the fused kernel computes the gradient in
the forward pass, backward only scales it; an eager ``autograd.Function`` and a
``torch.library`` custom op (``fusedloss::kl_div_with_logits``) for
``torch.compile``; torch ops for what the kernel does not take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _core
from . import _torch_ops as _ops
from . import _validate as v
from . import torch as _flt  # imports this module first: used at call time only
from ._torchscript import RefusesTorchScript, torch_twin


def kl_kernel(
    x: Tensor, target: Tensor, temperature: float, reduction: int, grad: Tensor | None,
    float32_loss: bool,
) -> Tensor:
    """Runs the fused kernel on contiguous (C,) or (N, C) logits; writes the gradient
    (for grad_output 1) into ``grad`` when given. Returns the loss in the input's
    dtype, or float32 (half input under autocast)."""
    dtype = x.dtype
    accum = _ops._ACCUM[dtype]
    out = torch.float32 if float32_loss else dtype
    shape = (1, x.shape[0]) if x.dim() == 1 else tuple(x.shape)
    xa = _ops._array(x).reshape(shape)
    ta = _ops._array(target).reshape(shape)
    ga = None if grad is None else (xa if grad is x else _ops._array(grad).reshape(shape))
    bf16 = dtype is torch.bfloat16
    if reduction == _ops.NONE:
        loss = torch.empty(x.shape[:-1], dtype=accum)
        _core.kl_div_with_logits(
            xa, ta, temperature, reduction, loss.numpy().reshape(shape[0]), ga, None, 1.0, bf16
        )
        return loss if accum is out else loss.to(out)
    value = _core.kl_div_with_logits(xa, ta, temperature, reduction, None, ga, None, 1.0, bf16)
    return torch.scalar_tensor(value, dtype=out)


class KLDivWithLogitsFunction(torch.autograd.Function):
    """Eager kl_div_with_logits: the gradient for the input only (the target comes detached)."""

    @staticmethod
    def forward(ctx, x, target, temperature, reduction, float32_loss):
        ctx.set_materialize_grads(False)
        ctx.reduction = reduction
        grad = _ops.new_gradient(x)
        loss = kl_kernel(x, target, temperature, reduction, grad, float32_loss)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return None, None, None, None, None
        (grad,) = ctx.saved_tensors
        grad = _ops.scale_grad(grad, grad_loss, ctx.reduction, grad.dim() > 1, True)
        (grad,) = _ops._guard_double_backward(grad)
        return grad, None, None, None, None


_apply = _ops._fast_apply(KLDivWithLogitsFunction)


@torch.library.custom_op("fusedloss::kl_div_with_logits", mutates_args=(), device_types="cpu")
def kl_div_with_logits_op(
    input: Tensor, target: Tensor, temperature: float, reduction: int, compute_grad: bool,
    float32_loss: bool,
) -> tuple[Tensor, Tensor]:
    """Returns (loss, grad_input for grad_output 1); an empty gradient when
    compute_grad is False."""
    grad = _ops.new_gradient(input) if compute_grad else input.new_empty((0,))
    loss = kl_kernel(
        input, target, temperature, reduction, grad if compute_grad else None, float32_loss
    )
    return loss, grad


@kl_div_with_logits_op.register_fake
def _(input, target, temperature, reduction, compute_grad, float32_loss):
    shape = input.shape[:-1] if reduction == _ops.NONE else []
    grad = torch.empty_like(input) if compute_grad else input.new_empty((0,))
    return input.new_empty(shape, dtype=torch.float32 if float32_loss else input.dtype), grad


def _setup_context(ctx, inputs, output):
    ctx.reduction = inputs[3]
    ctx.compute_grad = inputs[4]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_grad):
    grad_input = None
    if ctx.needs_input_grad[0]:
        if not ctx.compute_grad:
            raise RuntimeError("fusedloss::kl_div_with_logits: called with compute_grad=False")
        (grad,) = ctx.saved_tensors
        grad_input = _ops.scale_grad(grad, grad_loss, ctx.reduction, grad.dim() > 1, False)
        (grad_input,) = _ops._guard_double_backward(grad_input)
    return grad_input, None, None, None, None, None


kl_div_with_logits_op.register_autograd(_backward, setup_context=_setup_context)


def _composed(
    input: Tensor, target: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """The same loss with torch ops (other devices and dtypes, subclasses, empty input,
    TorchScript: kl_div_with_logits's signature and defaults)."""
    log_q = F.log_softmax(input / temperature, -1)
    log_p = F.log_softmax(target / temperature, -1)
    p = log_p.exp()
    # p log p = 0 where p = 0 (a target of -inf), as in the kernel; F.kl_div with
    # log_target=True gives 0 * inf = NaN there.
    per_row = torch.where(p == 0, 0.0, p * (log_p - log_q)).sum(-1) * temperature**2
    if reduction == "none":
        return per_row
    total = per_row.sum()
    rows = input.shape[0] if input.dim() == 2 else 1
    return total if reduction == "sum" else total / rows


@torch_twin(_composed)  # torch has no namesake: the same formula in torch ops
def kl_div_with_logits(
    input: Tensor, target: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """Knowledge-distillation loss on logits, fused (one pass over both):

    per row ``T**2 * sum_j p_j * (log p_j - log q_j)``, ``p = softmax(target / T)`` (the
    teacher), ``q = softmax(input / T)`` (the student); ``input`` and ``target`` are
    ``(N, C)`` (or one ``(C,)`` row) of the same shape. Equals
    ``T**2 * F.kl_div(F.log_softmax(input / T, -1), F.log_softmax(target / T, -1),
    log_target=True)`` summed per row, then: "batchmean" (default) and "mean" divide by
    N (for this row-wise loss they are the same), "sum", "none" (per row). A class
    with ``p_j = 0`` (a teacher logit of ``-inf``: a masked vocabulary, top-k logits)
    adds ``0 log 0 = 0``, where ``F.kl_div`` with ``log_target=True`` gives NaN.

    Gradient flows to ``input`` only: ``T * (q - p)`` per row. The target logits are
    constants, as a teacher's are: no gradient reaches them even if they require grad
    (the result then does not require grad unless ``input`` does). A target of another
    dtype is cast to the input's. float16/bfloat16 are read as they are, float32
    accumulation. Registered as the custom op ``fusedloss::kl_div_with_logits``
    (``torch.compile(fullgraph=True)`` traces it). Tensors not on the CPU, other
    dtypes, tensor subclasses and empty input use the same formula in torch ops.
    """
    code = v.reduction_code(reduction, v.KL_REDUCTIONS)
    temperature = v.real_number(temperature, "temperature", "a finite number > 0")
    if temperature <= 0:
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature}")
    for name, value in (("input", input), ("target", target)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if input.dim() not in (1, 2):
        raise ValueError(f"input: expected shape (C,) or (N, C), got {tuple(input.shape)}")
    if target.shape != input.shape:
        raise ValueError(
            f"target: expected the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    target = target.detach()
    if (
        _ops.torch_function_wanted(input, target)
        or _flt._functorch_active()
        or input.dtype not in _ops.SUPPORTED_DTYPES
        or not (input.is_cpu and target.is_cpu)
        or input.numel() == 0
    ):
        return _composed(input, target, temperature, reduction)
    if target.dtype is not input.dtype:
        target = target.to(input.dtype)
    autocast = _flt._float32_loss(input)
    if torch.compiler.is_compiling():
        compute_grad = input.requires_grad and torch.is_grad_enabled()
        return kl_div_with_logits_op(
            input.contiguous(), target.contiguous(), temperature, code, compute_grad, autocast
        )[0]
    input = input.contiguous()
    target = target.contiguous()
    if not (torch.is_grad_enabled() and input.requires_grad):
        return kl_kernel(input, target, temperature, code, None, autocast)
    return _apply(input, target, temperature, code, autocast)


class KLDivWithLogitsLoss(RefusesTorchScript, nn.Module):
    """The module of :func:`kl_div_with_logits`: ``KLDivWithLogitsLoss(temperature=2.0)
    (student_logits, teacher_logits)``."""

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div_with_logits(input, target, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature!r}, reduction={self.reduction!r}"
