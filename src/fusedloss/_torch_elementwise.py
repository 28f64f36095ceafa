"""The elementwise losses in the torch layer: one kernel call, one eager
``autograd.Function``, one ``torch.library`` custom op and one backward for all
of them (the losses are listed in ``_losses``; the public functions and modules
are in ``fusedloss.torch``).

The kernel computes the gradients w.r.t. input (and target, when it requires
grad) in the forward pass; backward only scales them by ``grad_output``.
Every tensor handed here is a contiguous CPU tensor of a supported dtype, the
target shaped like the input, weights not requiring grad (``fusedloss.torch``
checks, or falls back to torch's own implementation). A target of None means
every element's target is ``target_scalar`` (the GAN objective's terms); ``scale``
multiplies the loss and its gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _core
from ._broadcast import NO_FACTOR, broadcast_factor
from ._elementwise import OPS
from ._torch_ops import (
    _ACCUM,
    NONE,
    _array,
    _fast_apply,
    _guard_double_backward,
    new_gradient,
    scale_grad,
)


def _factor(value: Tensor | None, x: Tensor, name: str):
    if value is None:
        return NO_FACTOR
    values = _array(value.detach().to(_ACCUM[x.dtype]).contiguous())
    return broadcast_factor(values, tuple(x.shape), values.dtype, name)


def elementwise_kernel(
    op: str,
    x: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: int,
    param: float,
    mean_denominator: float,
    grad_x: Tensor | None,
    grad_t: Tensor | None,
    float32_loss: bool,
    target_scalar: float = 0.0,
    scale: float = 1.0,
) -> Tensor:
    """Runs the fused kernel over the flattened buffers; writes d(loss)/d(input)
    and d(loss)/d(target) (for grad_output 1) into ``grad_x`` / ``grad_t`` when
    given. Returns the loss in the input's dtype (float32: half input under autocast)."""
    dtype = x.dtype
    accum = _ACCUM[dtype]
    out = torch.float32 if float32_loss else dtype
    w = _factor(weight, x, "weight")
    pw = _factor(pos_weight, x, "pos_weight")
    loss = torch.empty(x.shape, dtype=accum) if reduction == NONE else None
    try:
        value = _core.elementwise(  # by position (see _core.pyi)
            OPS[op], _array(x).reshape(-1), None if target is None else _array(target).reshape(-1),
            reduction,
            None if loss is None else loss.numpy().reshape(-1),
            None if grad_x is None else _array(grad_x).reshape(-1), None, 1.0,
            dtype is torch.bfloat16, target_scalar, param, scale,
            w.values, w.period, w.repeat, pw.values, pw.period, pw.repeat, mean_denominator,
            None if grad_t is None else _array(grad_t).reshape(-1),  # grad_target
        )
    except ValueError as e:  # out of the op's domain: torch's error type and words (no count)
        raise RuntimeError(str(e).split(": ", 1)[-1].split(" (", 1)[0]) from None
    if loss is not None:
        return loss if accum is out else loss.to(out)
    return torch.scalar_tensor(value, dtype=out)


def elementwise_backward(grad_loss, grad_x, grad_t, reduction, need_x, need_t, inplace):
    """The backward of every elementwise loss, eager and compiled: the saved
    gradients scaled by the upstream gradient (in place in eager mode)."""
    gx = scale_grad(grad_x, grad_loss, reduction, False, inplace) if need_x else None
    gt = scale_grad(grad_t, grad_loss, reduction, False, inplace) if need_t else None
    return _guard_double_backward(gx, gt)


class ElementwiseFunction(torch.autograd.Function):
    """Eager elementwise loss: gradients from the fused kernel, scaled in backward."""

    @staticmethod
    def forward(ctx, x, target, weight, pos_weight, op, reduction, param, mean_denominator,
                float32_loss, target_scalar=0.0, scale=1.0):
        ctx.set_materialize_grads(False)
        ctx.reduction = reduction
        grad_x = new_gradient(x) if x.requires_grad else None
        grad_t = new_gradient(target) if target is not None and target.requires_grad else None
        loss = elementwise_kernel(op, x, target, weight, pos_weight, reduction, param,
                                  mean_denominator, grad_x, grad_t, float32_loss, target_scalar,
                                  scale)
        ctx.save_for_backward(grad_x, grad_t)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return (None,) * 11
        grad_x, grad_t = ctx.saved_tensors
        gx, gt = elementwise_backward(grad_loss, grad_x, grad_t, ctx.reduction,
                                      grad_x is not None, grad_t is not None, True)
        return (gx, gt) + (None,) * 9


elementwise_apply = _fast_apply(ElementwiseFunction)


@torch.library.custom_op("fusedloss::elementwise", mutates_args=(), device_types="cpu")
def elementwise_op(
    input: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    op: str,
    reduction: int,
    param: float,
    mean_denominator: float,
    grad_input: bool,
    grad_target: bool,
    float32_loss: bool,
    target_scalar: float = 0.0,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, d loss/d input, d loss/d target) for grad_output 1; a gradient not
    asked for is an empty tensor (each its own: outputs must not alias)."""
    gx = new_gradient(input) if grad_input else None
    gt = new_gradient(target) if grad_target and target is not None else None
    loss = elementwise_kernel(op, input, target, weight, pos_weight, reduction, param,
                              mean_denominator, gx, gt, float32_loss, target_scalar, scale)
    return (loss, input.new_empty((0,)) if gx is None else gx,
            input.new_empty((0,)) if gt is None else gt)


@elementwise_op.register_fake
def _(input, target, weight, pos_weight, op, reduction, param, mean_denominator, grad_input,
      grad_target, float32_loss, target_scalar=0.0, scale=1.0):
    shape = input.shape if reduction == NONE else []
    loss = input.new_empty(shape, dtype=torch.float32 if float32_loss else input.dtype)
    gx = torch.empty_like(input) if grad_input else input.new_empty((0,))
    gt = torch.empty_like(target) if grad_target and target is not None else input.new_empty((0,))
    return loss, gx, gt


def _setup_context(ctx, inputs, output):
    ctx.reduction = inputs[5]
    ctx.has_grad = (inputs[8], inputs[9])
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_loss, _grad_gx, _grad_gt):
    grad_x, grad_t = ctx.saved_tensors
    need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if (need_x and not ctx.has_grad[0]) or (need_t and not ctx.has_grad[1]):
        raise RuntimeError("fusedloss::elementwise: a gradient was not computed in forward")
    gx, gt = elementwise_backward(grad_loss, grad_x, grad_t, ctx.reduction, need_x, need_t,
                                  False)  # out of place: the compiler owns buffer reuse
    return (gx, gt) + (None,) * 11


elementwise_op.register_autograd(_backward, setup_context=_setup_context)
