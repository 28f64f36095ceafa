"""Autograd plumbing of :mod:`fusedloss.torch`: kernel calls on tensors, the eager
``autograd.Function``\\ s and the ``torch.library`` custom ops.

Two routes reach the same kernels and the same backward formulas:

- eager: ``torch.autograd.Function`` subclasses. A custom op's Python dispatch
  costs tens of microseconds per call, more than the whole loss at small sizes,
  so eager calls do not go through it.
- ``torch.compile``: the ``fusedloss::*`` custom ops with ``register_fake`` and
  ``register_autograd``, so dynamo traces them without a graph break.

The gradient is computed in the forward pass by the fused kernel (when the
input requires grad) and saved; backward only scales it by ``grad_output``, in
place in eager mode, so forward + backward keeps one logits-sized buffer alive:
the gradient itself (the Liger-Kernel trick).

Every tensor handed here is a contiguous CPU tensor of a supported dtype with
already-checked shapes (``fusedloss.torch`` guarantees it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.overrides import has_torch_function

from . import _core
from . import _validate as v

NONE, MEAN, SUM = v.NONE, v.MEAN, v.SUM

# Accumulation dtype of the kernels: weight, grad_output and loss_out use it.
_ACCUM = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}
SUPPORTED_DTYPES = frozenset(_ACCUM)
HALF = (torch.float16, torch.bfloat16)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


reduction_code = v.known_reduction


def float32_loss(input: Tensor) -> bool:
    """CPU autocast runs these losses in float32: half input gives a float32 loss
    (we still read the half values as they are; the upcast is exact anyway)."""
    return input.dtype in HALF and torch.is_autocast_enabled("cpu")


# torch.func transforms (grad, vmap, jacrev) need autograd.Functions with
# setup_context and vmap rules; under them the losses use torch's own code.
functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def torch_function_wanted(*tensors: object) -> bool:
    """True when a tensor subclass or a torch-function mode asks to see the call, so
    torch's own function runs. Not while torch.export traces: its non-strict mode
    runs this code on FakeTensors under a torch-function mode of its own, and what it
    should record is the custom op, as strict export and torch.compile do."""
    return has_torch_function(tensors) and not torch.compiler.is_exporting()


_DOUBLE_BACKWARD = (
    b"fusedloss: double backward (differentiating the gradient of a fused loss) is "
    b"not supported; use torch.nn.functional for higher-order gradients"
)


try:  # private, but what AOTAutograd itself asks; without it: never in place
    from torch._C._autograd import _get_current_graph_task_keep_graph as _keep_graph
except ImportError:  # pragma: no cover

    def _keep_graph() -> bool:
        return True


def class_weight_fusable(weight, input: Tensor, classes: int, autocast: bool) -> bool:
    """True when the kernels take ``weight`` as torch would: None, or a 1-d CPU
    tensor of one weight per class, of the input's dtype (any supported one
    under autocast), that needs no gradient."""
    return weight is None or (
        isinstance(weight, Tensor)
        and (weight.dtype is input.dtype or (autocast and weight.dtype in SUPPORTED_DTYPES))
        and weight.is_cpu
        and not weight.requires_grad
        and weight.dim() == 1
        and weight.shape[0] == classes
    )


def _array(t: Tensor):
    """NumPy view of a contiguous CPU tensor (bfloat16 as uint16): every tensor a
    caller hands in reaches the kernels through here. Zero-copy, except for a tensor
    with the negative bit set (``torch._neg_view``: its memory holds the negated
    values, which torch's ops undo as they read): NumPy would see the raw memory, so
    the bit is resolved into a copy first. The kernels never write through such a
    tensor (see ``fusedloss.torch._overwritable_whole``)."""
    t = t.detach().resolve_neg()
    if t.dtype is torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


# Gradients at least this big are allocated through NumPy (see new_gradient).
_NUMPY_ALLOC_BYTES = 1 << 22
_NUMPY_STORAGE = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: np.uint16,  # viewed back as bfloat16
}


def new_gradient(x: Tensor) -> Tensor:
    """An uninitialised contiguous tensor shaped like contiguous ``x``.

    Big ones come from NumPy, which asks the kernel for transparent huge pages on
    arrays of 4 MiB and more: the fused kernel's first write into a fresh
    logits-sized gradient then pays a few hundred page faults instead of tens of
    thousands (1024 x 32000 float32: 14 ms to first-touch NumPy's buffer against
    58 ms for torch.empty_like's, measured on the development VM), which is most
    of a training step's loss time at that size. The tensor is an ordinary CPU
    tensor that keeps its array alive.
    """
    if x.numel() * x.element_size() < _NUMPY_ALLOC_BYTES:
        return torch.empty_like(x)
    t = torch.from_numpy(np.empty(tuple(x.shape), dtype=_NUMPY_STORAGE[x.dtype]))
    return t.view(torch.bfloat16) if x.dtype is torch.bfloat16 else t


def _ce_geometry(x: Tensor) -> tuple[int, int, int]:
    """(outer, C, inner) view of an input shaped (C,), (N, C) or (N, C, d1..dk)."""
    shape = x.shape
    if len(shape) == 1:
        return 1, shape[0], 1
    outer, classes = shape[0], shape[1]
    return outer, classes, math.prod(shape[2:])


def _ce_loss_shape(x: Tensor) -> list[int]:
    shape = list(x.shape)
    if len(shape) == 1:
        return []
    del shape[1]
    return shape


# Cross-entropy's LLM options as the kernel takes them: (logit_scale, softcap (0:
# none), lse_square_scale, divisor). divisor: num_items_in_batch, with the reduction
# then passed as SUM: loss and gradient are divided by it. None: no option set.
CEExtras = tuple[float, float, float, "float | None"]


def new_lse(x: Tensor) -> Tensor:
    """An uninitialised per-position log-sum-exp buffer for ce_kernel (accumulation dtype)."""
    return torch.empty(_ce_loss_shape(x), dtype=_ACCUM[x.dtype])


_NO_OPTIONS: dict = {}  # the plain call passes no option to the binding
# What the binding's common call (_core.cross_entropy_common) takes: these logits'
# dtypes, and the reductions by name.
_COMMON_DTYPES = (torch.float32, torch.float64)
_COMMON_REDUCTIONS = {code: name for name, code in v.REDUCTIONS.items() if code != NONE}


def _common_ce(x: Tensor, target: Tensor, reduction: int, ignore_index: int,
               label_smoothing: float, grad: Tensor) -> Tensor | None:
    """ce_kernel's common case, fwd+grad of 2-d float32/float64 logits with int64
    targets, mean or sum, no weight or option, through the binding's lean call
    (the NumPy API's): two conversions fewer than the general binding and no keyword
    parsing, 3 of the ~35 us of a 64x10 forward + backward. None when the
    binding does not take the call (then the general one runs)."""
    name = _COMMON_REDUCTIONS.get(reduction)
    if (name is None or x.dtype not in _COMMON_DTYPES or x.dim() != 2
            or target.dtype is not torch.int64 or x.is_neg() or target.is_neg()):
        return None
    xa = x.detach().numpy()
    pair = _core.cross_entropy_common(
        xa, target.numpy(), xa if grad is x else grad.numpy(), name, ignore_index,
        label_smoothing, True,
    )
    return None if pair is None else torch.scalar_tensor(float(pair[0]), dtype=x.dtype)


def ce_kernel(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    grad: Tensor | None,
    float32_loss: bool = False,
    extras: CEExtras | None = None,
    lse: Tensor | None = None,
) -> Tensor:
    """Runs the fused cross-entropy kernel; writes d(loss)/d(input) (for
    grad_output 1) into ``grad`` when given (``grad`` may be ``x`` itself), and
    logsumexp(z) per position into ``lse`` (accumulation dtype) when given.
    Returns the loss in the input's dtype, or float32 (half input under autocast)."""
    if grad is not None and weight is None and extras is None and lse is None:
        loss = _common_ce(x, target, reduction, ignore_index, label_smoothing, grad)
        if loss is not None:
            return loss
    outer, classes, inner = _ce_geometry(x)
    dtype = x.dtype
    accum = _ACCUM[dtype]
    out = torch.float32 if float32_loss else dtype
    bf16 = dtype is torch.bfloat16
    # The binding takes the geometry, so the arrays keep their tensors' shapes.
    xa = _array(x)
    ta = _array(target)
    wa = None
    if weight is not None:
        wa = _array(weight.to(accum).contiguous())
    ga = None
    if grad is not None:
        ga = xa if grad is x else _array(grad)
    options = _NO_OPTIONS
    go_scalar = 1.0
    divisor = None
    if extras is not None or lse is not None:
        scale, cap, zloss, divisor = extras or (1.0, 0.0, 0.0, None)
        go_scalar = 1.0 if divisor is None else 1.0 / divisor
        options = {"logit_scale": scale, "softcap": cap, "lse_square_scale": zloss,
                   "lse_out": None if lse is None else lse.numpy()}
    if reduction == NONE:
        loss = torch.empty(_ce_loss_shape(x), dtype=accum)
        _core.cross_entropy(
            xa, ta, wa, ignore_index, label_smoothing, NONE, loss.numpy(), ga, None, go_scalar,
            bf16, outer, classes, inner, **options,
        )
        return loss if accum is out else loss.to(out)
    value = _core.cross_entropy(
        xa, ta, wa, ignore_index, label_smoothing, reduction, None, ga, None, go_scalar, bf16,
        outer, classes, inner, **options,
    )
    return torch.scalar_tensor(value if divisor is None else value / divisor, dtype=out)


def _class_dim(x: Tensor) -> int:
    return 0 if x.dim() == 1 else 1


def _per_sample(grad_output: Tensor, x: Tensor) -> Tensor:
    """grad_output of reduction none, broadcastable against the input."""
    return grad_output if x.dim() == 1 else grad_output.unsqueeze(1)


def scale_grad(
    grad: Tensor, grad_output: Tensor, reduction: int, per_row: bool, inplace: bool
) -> Tensor:
    """``grad * grad_output`` where ``grad`` holds the gradient for grad_output 1.
    ``inplace`` (eager only) scales the saved buffer itself unless the graph is
    retained (retain_graph / gradcheck), which would read the buffer again."""
    inplace = inplace and not _keep_graph()
    if reduction != NONE:
        if inplace:
            # A loss.backward() brings exactly 1: nothing to do (no pass over memory).
            return grad if grad_output.item() == 1.0 else grad.mul_(grad_output)
        return grad * grad_output
    # Reduction none: cross-entropy's loss has one value per (sample, position),
    # shared by the C entries of that row; regression losses are elementwise.
    go = grad_output.unsqueeze(1) if per_row else grad_output
    return grad.mul_(go) if inplace else grad * go


def transformed_logits(x: Tensor, extras: CEExtras | None) -> Tensor:
    """z = logit_scale * x, then softcap * tanh(z / softcap), with torch ops."""
    if extras is None:
        return x
    scale, cap, _, _ = extras
    z = x * scale if scale != 1.0 else x
    return cap * torch.tanh(z / cap) if cap else z


def ce_target_grad(
    x: Tensor,
    weight: Tensor | None,
    reduction: int,
    label_smoothing: float,
    grad_output: Tensor,
    target_dtype: torch.dtype,
    extras: CEExtras | None = None,
) -> Tensor:
    """d(loss)/d(target) for probability targets, with torch ops:
    -(1 - label_smoothing) * w_c * log_softmax(z)_c * g (divided by the number of
    samples for mean, by num_items_in_batch when given; z-loss does not depend
    on the target)."""
    dim = _class_dim(x)
    accum = _ACCUM[x.dtype]
    logp = torch.log_softmax(transformed_logits(x.to(accum), extras), dim=dim)
    if weight is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        logp = logp * weight.to(accum).view(shape)
    go = grad_output.to(accum)
    if reduction == NONE:
        go = _per_sample(go, x)
    elif reduction == MEAN:
        go = go / (x.numel() // x.shape[dim])
    if extras is not None and extras[3] is not None:
        go = go / extras[3]
    return (logp * (go * -(1.0 - label_smoothing))).to(target_dtype)


def _guard_double_backward(*grads: Tensor | None):
    """Like ``once_differentiable``: under create_graph the returned gradients get
    a grad_fn that raises if anyone differentiates through them."""
    if not torch.is_grad_enabled():
        return grads
    err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD, len(grads))
    fake = []
    for g in grads:
        if g is not None:
            g = g.detach()
            g.requires_grad_(True)
        fake.append(g)
    out = err(*fake)
    return out if isinstance(out, tuple) else (out,)


# --------------------------------------------------------------------------- eager


class CrossEntropyFunction(torch.autograd.Function):
    """Eager cross-entropy; ``inplace`` writes the gradient into the input's storage
    (marked dirty, so autograd catches any other use of the overwritten logits).
    ``shape``: the logits' shape when ``x`` is the contiguous tensor they are a
    reshape of (see ``fusedloss.torch._overwritable_whole``), else None."""

    @staticmethod
    def forward(ctx, x, target, weight, reduction, ignore_index, label_smoothing, inplace,
                float32_loss, shape, extras, lse):
        ctx.set_materialize_grads(False)
        need_input = x.requires_grad
        ctx.reduction = reduction
        ctx.extras = extras
        # The target gradient needs the logits in backward: then no overwriting.
        inplace = inplace and need_input and not target.requires_grad
        logits = x if shape is None else x.view(shape)
        ctx.shape = shape  # backward views the gradient as the logits only then (a view costs us)
        grad = None
        if need_input:
            grad = logits if inplace else new_gradient(logits)
        loss = ce_kernel(
            logits, target, weight, reduction, ignore_index, label_smoothing, grad, float32_loss,
            extras, lse,
        )
        if inplace:
            grad = x  # the dirty output itself: autograd tracks its version
        if target.requires_grad:
            ctx.label_smoothing = label_smoothing
            ctx.save_for_backward(grad, logits, weight)
        else:
            ctx.save_for_backward(grad)
        if inplace:
            ctx.mark_dirty(x)
            return loss, x
        return loss

    @staticmethod
    def backward(ctx, grad_loss, grad_overwritten=None):
        if grad_overwritten is not None:
            raise RuntimeError(
                "fusedloss: the logits passed to cross_entropy(..., inplace_backward=True) "
                "were overwritten by their gradient and must not be used afterwards"
            )
        nones = (None,) * 9  # the options' arguments
        if grad_loss is None:
            return (None, None) + nones
        saved = ctx.saved_tensors
        grad_input = grad_target = None
        if len(saved) > 1:
            x = saved[1]
            grad_target = ce_target_grad(
                x, saved[2], ctx.reduction, ctx.label_smoothing, grad_loss, x.dtype, ctx.extras
            )
        if saved[0] is not None:
            grad = saved[0] if ctx.shape is None else saved[0].view(ctx.shape)
            grad_input = scale_grad(grad, grad_loss, ctx.reduction, grad.dim() > 1, True)
            if ctx.shape is not None:
                grad_input = grad_input.view(saved[0].shape)
        grad_input, grad_target = _guard_double_backward(grad_input, grad_target)
        return (grad_input, grad_target) + nones


def _fast_apply(fn_class):
    """``fn_class.apply`` without ``Function.apply``'s Python layer (signature
    binding for setup_context, functorch unwrapping), ~2 us of a ~25 us call at
    small sizes. Under functorch transforms the ordinary ``apply`` runs."""
    slow_apply = fn_class.apply
    try:  # private torch internals: fall back to the public apply if they move
        c_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, fn_class)
        functorch_active = torch._C._are_functorch_transforms_active
    except (AttributeError, KeyError):  # pragma: no cover
        return slow_apply

    def apply(*args):
        return slow_apply(*args) if functorch_active() else c_apply(*args)

    return apply


cross_entropy_apply = _fast_apply(CrossEntropyFunction)


# ----------------------------------------------------------------- custom ops


@torch.library.custom_op("fusedloss::cross_entropy", mutates_args=(), device_types="cpu")
def cross_entropy_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    compute_grad: bool,
    float32_loss: bool,
    logit_scale: float = 1.0,
    softcap: float = 0.0,
    lse_square_scale: float = 0.0,
    want_lse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (loss, grad_input for grad_output 1, logsumexp per position);
    grad_input is an empty tensor when compute_grad is False, the last one
    when want_lse is False (num_items_in_batch is a division after the op)."""
    grad = new_gradient(input) if compute_grad else input.new_empty((0,))
    extras = _op_extras(logit_scale, softcap, lse_square_scale)
    lse = new_lse(input) if want_lse else None
    loss = ce_kernel(
        input, target, weight, reduction, ignore_index, label_smoothing,
        grad if compute_grad else None, float32_loss, extras, lse,
    )
    return loss, grad, input.new_empty((0,)) if lse is None else lse


def _op_extras(logit_scale: float, softcap: float, lse_square_scale: float) -> CEExtras | None:
    if logit_scale == 1.0 and softcap == 0.0 and lse_square_scale == 0.0:
        return None
    return (logit_scale, softcap, lse_square_scale, None)


@cross_entropy_op.register_fake
def _(input, target, weight, reduction, ignore_index, label_smoothing, compute_grad, float32_loss,
      logit_scale=1.0, softcap=0.0, lse_square_scale=0.0, want_lse=False):
    shape = _ce_loss_shape(input)
    grad = torch.empty_like(input) if compute_grad else input.new_empty((0,))
    lse = input.new_empty(shape, dtype=_ACCUM[input.dtype]) if want_lse else input.new_empty((0,))
    loss_shape = shape if reduction == NONE else []
    return input.new_empty(loss_shape, dtype=torch.float32 if float32_loss else input.dtype), grad, lse


def _ce_setup_context(ctx, inputs, output):
    x, target, weight, reduction, _, label_smoothing, compute_grad, _ = inputs[:8]
    ctx.reduction = reduction
    ctx.label_smoothing = label_smoothing
    ctx.compute_grad = compute_grad
    ctx.target_grad = target.requires_grad
    ctx.extras = _op_extras(*inputs[8:11])
    ctx.mark_non_differentiable(output[1], output[2])
    if target.requires_grad:
        ctx.save_for_backward(output[1], x, weight)
    else:
        ctx.save_for_backward(output[1], None, None)


def _ce_backward(ctx, grad_loss, _grad_grad, _grad_lse):
    grad, x, weight = ctx.saved_tensors
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        if not ctx.compute_grad:
            raise RuntimeError("fusedloss::cross_entropy: called with compute_grad=False")
        # Out of place: the compiler owns buffer reuse.
        grad_input = scale_grad(grad, grad_loss, ctx.reduction, grad.dim() > 1, False)
    if ctx.target_grad:
        grad_target = ce_target_grad(
            x, weight, ctx.reduction, ctx.label_smoothing, grad_loss, x.dtype, ctx.extras
        )
    grad_input, grad_target = _guard_double_backward(grad_input, grad_target)
    return (grad_input, grad_target) + (None,) * 10


cross_entropy_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)
