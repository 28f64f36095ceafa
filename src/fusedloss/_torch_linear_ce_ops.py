"""Autograd plumbing of fused linear + cross-entropy in torch: the chunk loop
(``_linear_ce_chunks``) with torch's matmuls (:class:`TorchHead`; the kernel gets
NumPy views of torch's chunk buffer), the eager ``autograd.Function`` and the
``torch.library`` custom ops that ``torch.compile`` traces. Both routes share
:func:`forward_chunks` and :func:`backward_chunks`.

- reduction mean / sum: the gradients of the input, the weight and the bias are
  computed in the forward pass, chunk by chunk, and only scaled in backward (in
  place in eager mode unless the graph is retained).
- reduction none keeps no logits: its backward projects the chunks again and runs
  the kernel with the upstream per-token gradient.
- float16 / bfloat16: the chunks are projected and differentiated in float32
  (torch's CPU half matmuls are emulated and slow), from a float32 copy of the
  weight; the weight's gradient accumulates in float32 across chunks and is cast
  once at the end.

Every tensor handed here is a CPU tensor of a supported dtype with checked shapes
(``_torch_linear_ce`` guarantees it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import _linear_ce_chunks as chunks
from . import _torch_ops as _ops
from . import _validate as v

_HALF = _ops.HALF


# ------------------------------------------------------------------ the head


def _prefaulted(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """chunks.prefaulted as a tensor (from NumPy: its huge-page advice, see
    _ops.new_gradient)."""
    return torch.from_numpy(chunks.prefaulted(shape, _ops._NUMPY_STORAGE[dtype]))


class TorchHead:
    """Chunks projected and differentiated with torch's matmuls, in float32 for
    half input. ``needs`` = which of (input, weight, bias) get gradients."""

    def __init__(self, x: Tensor, w: Tensor, b: Tensor | None, chunk_tokens: int,
                 needs: tuple[bool, bool, bool]) -> None:
        self.compute = torch.float32 if x.dtype in _HALF else x.dtype
        self.x = x
        self.w = w.to(self.compute)
        self.b = None if b is None else b.to(self.compute)
        self.buf = _prefaulted((chunk_tokens, w.shape[0]), self.compute)
        self.buf_np = self.buf.numpy()
        need_x, need_w, need_b = needs
        self.grad_x = torch.empty(x.shape, dtype=x.dtype) if need_x else None
        self.grad_w = _prefaulted(tuple(w.shape), self.compute) if need_w else None
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
          num_items: Tensor | None, cfg: Config) -> chunks.Plan:
    """The NumPy layer's plan over views of the tensors (class range checked);
    ``x`` is (N, H), ``w`` (C * inner, H)."""
    tokens, rows = x.shape[0], w.shape[0]
    inner = rows // classes
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    if target.dtype is torch.int64:
        t = _ops._array(target.reshape(tokens, inner).contiguous())
        chunks.check_class_range(t, classes, cfg.ignore_index)
    else:
        t = _ops._array(target.to(compute).reshape(tokens, rows).contiguous())
    wt = None if weight is None else _ops._array(weight.to(compute).contiguous())
    denominator = 1.0
    if cfg.reduction == chunks.MEAN:
        if num_items is not None:
            denominator = float(num_items)
        else:
            denominator = chunks.mean_denominator(t, wt, cfg.ignore_index, tokens * inner)
    extras = chunks.kernel_options(
        v.CEOptions(cfg.logit_scale, cfg.softcap, cfg.lse_square_scale, None))
    chunk = cfg.chunk_tokens or chunks.chunk_tokens_for(
        tokens, rows * torch.finfo(compute).bits // 8, cfg.chunk_bytes)
    return chunks.Plan(tokens, classes, inner, t, wt, cfg.ignore_index, cfg.label_smoothing,
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
    want = cfg.reduction != chunks.NONE and any(needs)
    head = TorchHead(xf, wf, bf, plan.chunk_tokens, needs if want else (False, False, False))
    if cfg.reduction == chunks.NONE:
        loss = torch.empty((plan.tokens, plan.inner), dtype=head.compute)
        chunks.run_chunks(plan, head, False, loss_out=loss.numpy())
        loss = loss.view(_loss_shape(x, w))
        return loss.to(out_dtype), None, None, None
    total = chunks.run_chunks(plan, head, want)
    return (torch.scalar_tensor(total, dtype=out_dtype), *_grads_out(head, x, w, b))


def backward_chunks(grad_loss: Tensor, x: Tensor, w: Tensor, b: Tensor | None, target: Tensor,
                    weight: Tensor | None, cfg: Config, needs: tuple[bool, bool, bool]):
    """reduction none's backward: the chunks again, weighed by the upstream gradient."""
    xf, wf, bf = _flat(x, w, b)
    plan = _plan(xf, wf, w.shape[0], target, weight, None, cfg)
    head = TorchHead(xf, wf, bf, plan.chunk_tokens, needs)
    go = grad_loss.to(head.compute).reshape(plan.tokens, plan.inner).contiguous()
    scratch = np.empty((plan.tokens, plan.inner), dtype=head.buf_np.dtype)
    chunks.run_chunks(plan, head, True, loss_out=scratch, grad_output=_ops._array(go))
    return _grads_out(head, x, w, b)


def _loss_shape(x: Tensor, w: Tensor) -> tuple[int, ...]:
    return (x.shape[0], *w.shape[1:-1]) if x.dim() == 2 else ()


# ------------------------------------------------------------------ eager


_BACKWARD_TWICE = (  # torch 2.13's words (its chunked op with allow_retain_graph=False)
    "linear_cross_entropy chunked backward called twice; "
    "retain_graph=True / double backward are not supported."
)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Eager route: gradients from the forward pass, scaled in place in backward
    (unless the graph is retained); reduction none recomputes in backward.
    ``backward_once``: a second backward raises, as torch's chunked op does;
    ``backward_again``: the gradients stay with the graph (not as saved tensors,
    which the first backward frees) and each backward gives them, as torch's
    chunked op with ``allow_retain_graph=True``."""

    @staticmethod
    def forward(ctx, x, w, b, target, weight, num_items, cfg, float32_loss, backward_once,
                backward_again):
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        ctx.backward_once = backward_once
        ctx.backward_done = False
        ctx.kept = None
        needs = (x.requires_grad, w.requires_grad, b is not None and b.requires_grad)
        loss, gx, gw, gb = forward_chunks(x, w, b, target, weight, num_items, cfg, needs,
                                          float32_loss)
        if cfg.reduction == chunks.NONE:
            ctx.save_for_backward(x, w, b, target, weight)
        elif backward_again:
            ctx.kept = (gx, gw, gb)
        else:
            ctx.save_for_backward(gx, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return (None,) * 10
        if ctx.backward_once and ctx.backward_done:
            raise RuntimeError(_BACKWARD_TWICE)
        ctx.backward_done = True
        cfg = ctx.cfg
        if cfg.reduction == chunks.NONE:
            x, w, b, target, weight = ctx.saved_tensors
            needs = tuple(ctx.needs_input_grad[:3])
            grads = backward_chunks(grad_loss, x, w, b, target, weight, cfg, needs)
        else:
            kept = ctx.kept is not None  # read again by the next backward: not scaled in place
            grads = tuple(
                None if g is None else _ops.scale_grad(g, grad_loss, cfg.reduction, False, not kept)
                for g in (ctx.kept if kept else ctx.saved_tensors)
            )
        grads = _ops._guard_double_backward(*grads)
        return (*grads, None, None, None, None, None, None, None)


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
    none = reduction == chunks.NONE
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
    cfg = _config(chunks.NONE, ignore_index, label_smoothing, logit_scale, softcap,
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
    if reduction == chunks.NONE:
        ctx.save_for_backward(x, w, b, target, weight)
    else:
        ctx.save_for_backward(*output[1:])


def _op_backward(ctx, grad_loss, *_):
    need = tuple(a and n for a, n in zip(ctx.need, ctx.needs_input_grad[:3]))
    if ctx.reduction == chunks.NONE:
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
