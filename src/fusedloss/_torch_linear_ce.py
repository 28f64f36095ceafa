"""Fused linear + cross-entropy for torch: ``flt.linear_cross_entropy`` and
``flt.LinearCrossEntropyLoss``, drop-ins for torch 2.13's ``F.linear_cross_entropy``
and ``nn.LinearCrossEntropyLoss`` plus the LLM options of cross-entropy.

The chunk loop is the NumPy layer's (``_linear_ce.run_chunks``) with torch's
matmuls (``TorchHead``): the kernel gets NumPy views of torch's chunk buffer.

- Gradients for the input, the weight and the bias are computed in the forward
  pass, chunk by chunk, and only scaled in backward (reduction mean / sum).
  reduction ``"none"`` keeps no logits: its backward projects the chunks again
  and runs the kernel with the upstream per-token gradient.
- float16 / bfloat16: the chunks are projected and differentiated in float32
  (torch's CPU half matmuls are emulated and slow), from a float32 copy of the
  weight; the weight's gradient accumulates in float32 across chunks and is cast
  once at the end.
- ``torch.compile(fullgraph=True)``: the custom ops ``fusedloss::linear_cross_entropy``
  and ``fusedloss::linear_cross_entropy_backward`` (fake and autograd registered).
- ``options`` (torch's ``LinearCrossEntropyOptions``) is accepted; an explicit
  ``batch_chunk_size`` with ``chunking_method=None`` sets the tokens per chunk,
  its other fields are ignored. Otherwise a chunk holds ``chunk_bytes`` of logits
  (default 64 MiB). Unlike torch, ``options=None`` is chunked too.

Falls back to torch (``F.linear`` then cross-entropy: torch's own
``F.linear_cross_entropy``, or ``flt.cross_entropy`` when an LLM option is set)
for what the kernel does not do: tensors not on the CPU, other dtypes, operands
of different dtypes, a target or class weight that requires grad, tensor
subclasses and torch.func transforms, empty extents, and bad shapes (torch raises
its own errors then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import has_torch_function_variadic

from . import _linear_ce as lce
from . import _torch_ops as _ops
from . import _validate as v

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]

_REDUCTIONS = {"none": lce._NONE, "mean": lce._MEAN, "sum": lce._SUM}
_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float32, torch.float64) + _HALF
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_is_compiling = torch.compiler.is_compiling


# ------------------------------------------------------------------ the head


def _buffer(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A chunk-sized buffer from NumPy (huge-page advice; see _ops.new_gradient)."""
    return torch.from_numpy(np.empty(shape, dtype=_ops._NUMPY_STORAGE[dtype]))


class TorchHead:
    """Chunks projected and differentiated with torch's matmuls, in float32 for
    half input. ``needs`` = which of (input, weight, bias) get gradients."""

    def __init__(self, x: Tensor, w: Tensor, b: Tensor | None, chunk_tokens: int,
                 needs: tuple[bool, bool, bool]) -> None:
        self.compute = torch.float32 if x.dtype in _HALF else x.dtype
        self.x = x
        self.w = w.to(self.compute)
        self.b = None if b is None else b.to(self.compute)
        self.buf = _buffer((chunk_tokens, w.shape[0]), self.compute)
        self.buf_np = self.buf.numpy()
        need_x, need_w, need_b = needs
        self.grad_x = torch.empty(x.shape, dtype=x.dtype) if need_x else None
        self.grad_w = torch.empty(w.shape, dtype=self.compute) if need_w else None
        self.grad_b = torch.zeros(w.shape[0], dtype=self.compute) if need_b else None
        self.h: Tensor | None = None
        self.started = False

    def logits(self, start: int, stop: int) -> np.ndarray:
        h = self.x[start:stop]
        self.h = h = h if h.dtype is self.compute else h.to(self.compute)
        out = self.buf[: stop - start]
        if self.b is None:
            torch.mm(h, self.w.t(), out=out)
        else:
            torch.addmm(self.b, h, self.w.t(), out=out)
        return self.buf_np[: stop - start]

    def accumulate(self, start: int, stop: int, grad: np.ndarray) -> None:
        g = self.buf[: stop - start]
        if self.grad_x is not None:
            rows = self.grad_x[start:stop]
            if rows.dtype is self.compute:
                torch.mm(g, self.w, out=rows)
            else:
                rows.copy_(g @ self.w)
        if self.grad_w is not None:
            if self.started:
                self.grad_w.addmm_(g.t(), self.h)
            else:
                torch.mm(g.t(), self.h, out=self.grad_w)
        if self.grad_b is not None:
            self.grad_b.add_(g.sum(0))
        self.started = True


# ------------------------------------------------------------------ the call


@dataclass(frozen=True)
class Config:
    """The non-tensor arguments, checked (also the custom ops' scalar arguments)."""

    reduction: int
    ignore_index: int
    label_smoothing: float
    logit_scale: float
    softcap: float  # 0 = no cap
    lse_square_scale: float
    chunk_tokens: int  # 0 = from chunk_bytes
    chunk_bytes: int


def _plan(x: Tensor, w: Tensor, classes: int, target: Tensor, weight: Tensor | None,
          num_items: Tensor | None, cfg: Config) -> lce.Plan:
    """The NumPy layer's plan over views of the tensors (class range checked);
    ``x`` is (N, H), ``w`` (C * inner, H)."""
    tokens, rows = x.shape[0], w.shape[0]
    inner = rows // classes
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    if target.dtype is torch.int64:
        t = target.reshape(tokens, inner).contiguous().numpy()
        lce.check_class_range(t, classes, cfg.ignore_index)
    else:
        t = target.to(compute).reshape(tokens, rows).contiguous().numpy()
    wt = None if weight is None else weight.to(compute).contiguous().numpy()
    denominator = 1.0
    if cfg.reduction == lce._MEAN:
        if num_items is not None:
            denominator = float(num_items)
        else:
            denominator = lce.mean_denominator(t, wt, cfg.ignore_index, tokens * inner)
    extras = lce.extras_kwargs(cfg.logit_scale, cfg.softcap or None, cfg.lse_square_scale)
    chunk = cfg.chunk_tokens or lce.chunk_tokens_for(
        tokens, rows * torch.finfo(compute).bits // 8, cfg.chunk_bytes)
    return lce.Plan(tokens, classes, inner, t, wt, cfg.ignore_index, cfg.label_smoothing,
                    cfg.reduction, extras, denominator, min(chunk, tokens))


def _flat(x: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(N, H) input, (C * inner, H) weight, (C * inner,) bias, all contiguous."""
    hidden = w.shape[-1]
    return (x.reshape(-1, hidden).contiguous(), w.reshape(-1, hidden).contiguous(),
            None if b is None else b.reshape(-1).contiguous())


def _grads_out(head: TorchHead, x: Tensor, w: Tensor, b: Tensor | None):
    """The head's gradients in the operands' shapes and dtypes (None where not computed)."""
    gx = None if head.grad_x is None else head.grad_x.view(x.shape)
    gw = None if head.grad_w is None else head.grad_w.to(w.dtype).view(w.shape)
    gb = None
    if head.grad_b is not None and b is not None:
        gb = head.grad_b.to(b.dtype).view(b.shape)
    return gx, gw, gb


def forward_chunks(x: Tensor, w: Tensor, b: Tensor | None, target: Tensor,
                   weight: Tensor | None, num_items: Tensor | None, cfg: Config,
                   needs: tuple[bool, bool, bool], float32_loss: bool):
    """(loss, grad_x, grad_w, grad_b): for mean / sum the gradients (for upstream
    1) where ``needs`` asks; for none only the per-token loss."""
    xf, wf, bf = _flat(x, w, b)
    plan = _plan(xf, wf, w.shape[0], target, weight, num_items, cfg)
    out_dtype = torch.float32 if float32_loss else x.dtype
    want = cfg.reduction != lce._NONE and any(needs)
    head = TorchHead(xf, wf, bf, plan.chunk_tokens, needs if want else (False, False, False))
    if cfg.reduction == lce._NONE:
        loss = torch.empty((plan.tokens, plan.inner), dtype=head.compute)
        lce.run_chunks(plan, head, False, loss_out=loss.numpy())
        loss = loss.view(_loss_shape(x, w))
        return loss.to(out_dtype), None, None, None
    total = lce.run_chunks(plan, head, want)
    return (torch.scalar_tensor(total, dtype=out_dtype), *_grads_out(head, x, w, b))


def backward_chunks(grad_loss: Tensor, x: Tensor, w: Tensor, b: Tensor | None, target: Tensor,
                    weight: Tensor | None, cfg: Config, needs: tuple[bool, bool, bool]):
    """reduction none's backward: the chunks again, weighed by the upstream gradient."""
    xf, wf, bf = _flat(x, w, b)
    plan = _plan(xf, wf, w.shape[0], target, weight, None, cfg)
    head = TorchHead(xf, wf, bf, plan.chunk_tokens, needs)
    go = grad_loss.to(head.compute).reshape(plan.tokens, plan.inner).contiguous()
    scratch = np.empty((plan.tokens, plan.inner), dtype=head.buf_np.dtype)
    lce.run_chunks(plan, head, True, loss_out=scratch, grad_output=go.numpy())
    return _grads_out(head, x, w, b)


def _loss_shape(x: Tensor, w: Tensor) -> tuple[int, ...]:
    return (x.shape[0], *w.shape[1:-1]) if x.dim() == 2 else ()


# ------------------------------------------------------------------ eager


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Eager route: gradients from the forward pass, scaled in place in backward
    (unless the graph is retained); reduction none recomputes in backward."""

    @staticmethod
    def forward(ctx, x, w, b, target, weight, num_items, cfg, float32_loss):
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        needs = (x.requires_grad, w.requires_grad, b is not None and b.requires_grad)
        loss, gx, gw, gb = forward_chunks(x, w, b, target, weight, num_items, cfg, needs,
                                          float32_loss)
        if cfg.reduction == lce._NONE:
            ctx.save_for_backward(x, w, b, target, weight)
        else:
            ctx.save_for_backward(gx, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return (None,) * 8
        cfg = ctx.cfg
        if cfg.reduction == lce._NONE:
            x, w, b, target, weight = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            grads = backward_chunks(grad_loss, x, w, b, target, weight, cfg, needs)
        else:
            grads = tuple(
                None if g is None else _ops.scale_grad(g, grad_loss, cfg.reduction, False, True)
                for g in ctx.saved_tensors
            )
        grads = _ops._guard_double_backward(*grads)
        return (*grads, None, None, None, None, None)


# ------------------------------------------------------------- custom ops


def _config(reduction: int, ignore_index: int, label_smoothing: float, logit_scale: float,
            softcap: float, lse_square_scale: float, chunk_tokens: int, chunk_bytes: int):
    return Config(reduction, ignore_index, label_smoothing, logit_scale, softcap,
                  lse_square_scale, chunk_tokens, chunk_bytes)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


@torch.library.custom_op("fusedloss::linear_cross_entropy", mutates_args=(), device_types="cpu")
def linear_cross_entropy_op(
    input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None, target: Tensor,
    weight: Tensor | None, num_items: Tensor | None, reduction: int, ignore_index: int,
    label_smoothing: float, logit_scale: float, softcap: float, lse_square_scale: float,
    chunk_tokens: int, chunk_bytes: int, need_input: bool, need_weight: bool, need_bias: bool,
    float32_loss: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_input, grad_linear_weight, grad_linear_bias) for upstream 1; a
    gradient not asked for (and every one for reduction none) is an empty tensor."""
    cfg = _config(reduction, ignore_index, label_smoothing, logit_scale, softcap,
                  lse_square_scale, chunk_tokens, chunk_bytes)
    loss, gx, gw, gb = forward_chunks(
        input, linear_weight, linear_bias, target, weight, num_items, cfg,
        (need_input, need_weight, need_bias), float32_loss)
    return (loss, _empty(input) if gx is None else gx, _empty(input) if gw is None else gw,
            _empty(input) if gb is None else gb)


@linear_cross_entropy_op.register_fake
def _(input, linear_weight, linear_bias, target, weight, num_items, reduction, ignore_index,
      label_smoothing, logit_scale, softcap, lse_square_scale, chunk_tokens, chunk_bytes,
      need_input, need_weight, need_bias, float32_loss):
    none = reduction == lce._NONE
    shape = _loss_shape(input, linear_weight) if none else ()
    dtype = torch.float32 if float32_loss else input.dtype
    return (
        input.new_empty(shape, dtype=dtype),
        _empty(input) if none or not need_input else torch.empty_like(input),
        _empty(input) if none or not need_weight else torch.empty_like(linear_weight),
        _empty(input) if none or not need_bias else torch.empty_like(linear_bias),
    )


@torch.library.custom_op("fusedloss::linear_cross_entropy_backward", mutates_args=(),
                         device_types="cpu")
def linear_cross_entropy_backward_op(
    grad_loss: Tensor, input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None,
    target: Tensor, weight: Tensor | None, ignore_index: int, label_smoothing: float,
    logit_scale: float, softcap: float, lse_square_scale: float, chunk_tokens: int,
    chunk_bytes: int, need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """reduction none's gradients for the upstream per-token ``grad_loss``."""
    cfg = _config(lce._NONE, ignore_index, label_smoothing, logit_scale, softcap,
                  lse_square_scale, chunk_tokens, chunk_bytes)
    gx, gw, gb = backward_chunks(grad_loss, input, linear_weight, linear_bias, target, weight,
                                 cfg, (need_input, need_weight, need_bias))
    return (_empty(input) if gx is None else gx, _empty(input) if gw is None else gw,
            _empty(input) if gb is None else gb)


@linear_cross_entropy_backward_op.register_fake
def _(grad_loss, input, linear_weight, linear_bias, target, weight, ignore_index,
      label_smoothing, logit_scale, softcap, lse_square_scale, chunk_tokens, chunk_bytes,
      need_input, need_weight, need_bias):
    return (torch.empty_like(input) if need_input else _empty(input),
            torch.empty_like(linear_weight) if need_weight else _empty(input),
            torch.empty_like(linear_bias) if need_bias else _empty(input))


def _op_setup_context(ctx, inputs, output):
    (x, w, b, target, weight, _, reduction, *scalars) = inputs
    ctx.reduction = reduction
    ctx.scalars = scalars[:7]  # ignore_index ... chunk_bytes
    ctx.need = scalars[7:10]
    ctx.mark_non_differentiable(*output[1:])
    if reduction == lce._NONE:
        ctx.save_for_backward(x, w, b, target, weight)
    else:
        ctx.save_for_backward(*output[1:])


def _op_backward(ctx, grad_loss, *_):
    need = tuple(a and n for a, n in zip(ctx.need, ctx.needs_input_grad[:3]))
    if ctx.reduction == lce._NONE:
        x, w, b, target, weight = ctx.saved_tensors
        grads = linear_cross_entropy_backward_op(grad_loss, x, w, b, target, weight,
                                                 *ctx.scalars, *need)
    else:
        # Out of place: the compiler owns buffer reuse.
        grads = tuple(g * grad_loss for g in ctx.saved_tensors)
    grads = tuple(g if n else None for g, n in zip(grads, need))
    grads = _ops._guard_double_backward(*grads)
    return (*grads, *(None,) * 15)


linear_cross_entropy_op.register_autograd(_op_backward, setup_context=_op_setup_context)


# ------------------------------------------------------------- the public face


def _reduction_code(reduction: Any) -> int | None:
    return _REDUCTIONS.get(reduction) if type(reduction) is str else None


def _fusable(input, linear_weight, target, linear_bias, weight, ignore_index,
             label_smoothing, autocast) -> bool:
    """True when the chunked kernel computes what torch's reference path would."""
    tensors = (input, linear_weight, target)
    if not all(isinstance(t, Tensor) for t in tensors):
        return False
    if linear_bias is not None and not isinstance(linear_bias, Tensor):
        return False
    if has_torch_function_variadic(input, linear_weight, target, linear_bias, weight):
        return False
    if _ops_functorch_active():
        return False
    dtype = input.dtype
    if dtype not in _DTYPES or linear_weight.dtype is not dtype:
        return False
    if not all(t.is_cpu for t in tensors) or target.requires_grad:
        return False
    if input.dim() not in (1, 2) or linear_weight.dim() < 2:
        return False
    if input.numel() == 0 or linear_weight.numel() == 0:
        return False
    if input.shape[-1] != linear_weight.shape[-1]:
        return False
    logits_shape = (*input.shape[:-1], *linear_weight.shape[:-1])
    out_features = tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() == 1:
        return False
    if linear_bias is not None and not (
        linear_bias.dtype is dtype and linear_bias.is_cpu
        and tuple(linear_bias.shape) == tuple(linear_weight.shape[:-1])
    ):
        return False
    if target.dtype is torch.int64:
        if tuple(target.shape) != (*input.shape[:-1], *out_features):
            return False
    elif not (target.dtype is dtype and tuple(target.shape) == logits_shape
              and ignore_index is None):
        return False
    if weight is not None and not (
        isinstance(weight, Tensor) and weight.is_cpu
        and (weight.dtype is dtype or (weight.dtype in _DTYPES and autocast))
        and not weight.requires_grad and tuple(weight.shape) == (linear_weight.shape[0],)
    ):
        return False
    ignore = -100 if ignore_index is None else ignore_index
    return (type(ignore) is int and _INT64_MIN <= ignore <= _INT64_MAX
            and isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing <= 1.0)


def _ops_float32_loss(input: Tensor) -> bool:
    """Half input under CPU autocast: a float32 loss, as torch's cross-entropy gives."""
    return input.dtype in _HALF and torch.is_autocast_enabled("cpu")


def _ops_functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active and active())


def _reference(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
               label_smoothing, options, extras: dict[str, Any]) -> Tensor:
    """torch's own computation (logits materialised), with the LLM options via
    ``flt.cross_entropy`` when any is set."""
    if not extras:
        return F.linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=weight,
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            options=options,
        )
    from . import torch as flt

    out_features = tuple(linear_weight.shape[1:-1])
    logits = F.linear(input, linear_weight.reshape(-1, linear_weight.shape[-1]),
                      None if linear_bias is None else linear_bias.reshape(-1))
    logits = logits.reshape(*input.shape[:-1], linear_weight.shape[0], *out_features)
    return flt.cross_entropy(
        logits, target, weight=weight, reduction=reduction,
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing, **extras,
    )


def _chunk_tokens(options: Any) -> int:
    """An explicit ``LinearCrossEntropyOptions.batch_chunk_size`` (0: none)."""
    if options is None or getattr(options, "chunking_method", "auto") is not None:
        return 0
    size = getattr(options, "batch_chunk_size", None)
    return int(size) if size else 0


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    lse_square_scale: float = 0.0,
    num_items_in_batch: Any = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Fused drop-in for torch 2.13's :func:`torch.nn.functional.linear_cross_entropy`
    (``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``) with the
    logits never materialised beyond one chunk of ``chunk_bytes`` (default 64 MiB),
    plus ``logit_scale``, ``softcap``, ``lse_square_scale`` and ``num_items_in_batch``
    as in :func:`fusedloss.torch.cross_entropy`. See the module docstring for
    ``options``, half precision and the fallbacks."""
    code = _reduction_code(reduction)
    if num_items_in_batch is not None and code != lce._MEAN:
        raise ValueError("num_items_in_batch: only taken with reduction='mean'")
    extras = lce.extras_kwargs(logit_scale, softcap, lse_square_scale)
    if num_items_in_batch is not None:
        extras["num_items_in_batch"] = num_items_in_batch
    float32_loss = isinstance(input, Tensor) and _ops_float32_loss(input)
    if code is None or not _fusable(input, linear_weight, target, linear_bias, weight,
                                    ignore_index, label_smoothing, float32_loss):
        return _reference(input, linear_weight, target, linear_bias, weight, reduction,
                          ignore_index, label_smoothing, options, extras)
    cfg = Config(
        code, -100 if ignore_index is None else ignore_index, float(label_smoothing),
        float(logit_scale), float(softcap or 0.0), float(lse_square_scale),
        _chunk_tokens(options),
        lce.DEFAULT_CHUNK_BYTES if chunk_bytes is None else v.positive_integer(
            chunk_bytes, "chunk_bytes"),
    )
    num_items = None
    if num_items_in_batch is not None:
        num_items = torch.as_tensor(num_items_in_batch, dtype=torch.float64).detach().cpu()
        if not _is_compiling() and not float(num_items) > 0:
            raise ValueError(
                f"num_items_in_batch: expected a positive number, got {float(num_items)}")
    unbatched = input.dim() == 1
    if unbatched:  # one token: a batch of one, squeezed back
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and input.requires_grad, grad_on and linear_weight.requires_grad,
             grad_on and linear_bias is not None and linear_bias.requires_grad)
    if _is_compiling():
        loss = linear_cross_entropy_op(
            input, linear_weight, linear_bias, target.contiguous(), weight, num_items,
            cfg.reduction, cfg.ignore_index, cfg.label_smoothing, cfg.logit_scale, cfg.softcap,
            cfg.lse_square_scale, cfg.chunk_tokens, cfg.chunk_bytes, *needs, float32_loss,
        )[0]
    elif any(needs):
        loss = LinearCrossEntropyFunction.apply(
            input, linear_weight, linear_bias, target.contiguous(), weight, num_items, cfg,
            float32_loss)
    else:
        loss = forward_chunks(input, linear_weight, linear_bias, target.contiguous(), weight,
                              num_items, cfg, needs, float32_loss)[0]
    return loss.squeeze(0) if unbatched and code == lce._NONE else loss



class LinearCrossEntropyLoss(nn.LinearCrossEntropyLoss):
    """Drop-in for torch 2.13's :class:`torch.nn.LinearCrossEntropyLoss` computed by
    :func:`fusedloss.torch.linear_cross_entropy`: same constructor (the head's
    weight is ``self.linear.weight``, ``(num_classes * prod(out_features),
    in_features)``) plus the LLM options and ``chunk_bytes``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options: Any = None,
        logit_scale: float = 1.0,
        softcap: float | None = None,
        lse_square_scale: float = 0.0,
        chunk_bytes: int | None = None,
    ) -> None:
        super().__init__(
            in_features, num_classes, out_features=out_features, bias=bias, device=device,
            dtype=dtype, reduction=reduction, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, options=options,
        )
        lce.extras_kwargs(logit_scale, softcap, lse_square_scale)  # bad values raise here
        self.logit_scale = logit_scale
        self.softcap = softcap
        self.lse_square_scale = lse_square_scale
        self.chunk_bytes = chunk_bytes

    def forward(self, input: Tensor, target: Tensor, num_items_in_batch: Any = None) -> Tensor:
        """``num_items_in_batch`` (reduction mean): the divisor instead of the
        batch's own count, for gradient accumulation over micro-batches."""
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = None
        if self.linear.bias is not None:
            linear_bias = self.linear.bias.reshape((self.num_classes, *self.out_features))
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options,
            logit_scale=self.logit_scale, softcap=self.softcap,
            lse_square_scale=self.lse_square_scale, num_items_in_batch=num_items_in_batch,
            chunk_bytes=self.chunk_bytes,
        )

    def extra_repr(self) -> str:
        extras = [f"{k}={getattr(self, k)}" for k, d in (
            ("logit_scale", 1.0), ("softcap", None), ("lse_square_scale", 0.0),
            ("chunk_bytes", None)) if getattr(self, k) != d]
        return ", ".join([super().extra_repr(), *extras])
