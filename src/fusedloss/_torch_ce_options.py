"""Cross-entropy's LLM options in :mod:`fusedloss.torch`: checking them, and the
same loss composed of torch ops for the inputs the fused kernel does not take.

The options (``logit_scale``, ``softcap``, ``lse_square_scale``,
``num_items_in_batch``, ``return_lse``) are documented on
:func:`fusedloss.torch.cross_entropy`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _torch_ops as _ops
from . import _validate as v
from . import torch as _flt  # imports this module first: used at call time only
from ._torch_ops import transformed_logits


class Options(NamedTuple):
    """Checked options. ``extras``: (logit_scale, softcap (0: none),
    lse_square_scale, None) for the kernel, or None when they change nothing.
    ``divisor``: num_items_in_batch, a float, or the tensor itself under
    torch.compile (read then only by the division, not by Python)."""

    extras: tuple[float, float, float, None] | None
    divisor: float | Tensor | None
    return_lse: bool

    def changes_something(self) -> bool:
        """False for option values that change nothing (logit_scale=1.0, ...)."""
        return self.extras is not None or self.divisor is not None or self.return_lse


def check(
    logit_scale: object,
    softcap: object,
    lse_square_scale: object,
    num_items_in_batch: object,
    return_lse: object,
    reduction: object,
    compiling: bool,
) -> Options:
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse: expected a bool, got {type(return_lse).__name__}")
    items = num_items_in_batch
    if isinstance(items, Tensor):
        if items.numel() != 1:
            raise ValueError(
                f"num_items_in_batch: expected a number or a one-element tensor, got shape "
                f"{tuple(items.shape)}"
            )
        if not compiling:
            items = items.item()
    checked = v.ce_options(
        logit_scale, softcap, lse_square_scale, None if isinstance(items, Tensor) else items
    )
    divisor: float | Tensor | None = checked.num_items_in_batch
    if items is not None:
        if reduction != "mean":
            raise ValueError(
                "num_items_in_batch: only taken with reduction='mean' (it replaces the mean's "
                f"denominator), got reduction={reduction!r}"
            )
        if isinstance(items, Tensor):
            divisor = items
    extras = None
    if checked[:3] != v.NO_CE_OPTIONS[:3]:
        extras = (checked.logit_scale, checked.softcap, checked.lse_square_scale, None)
    return Options(extras, divisor, return_lse)


def composed(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    options: Options,
) -> Tensor | tuple[Tensor, Tensor]:
    """The options' loss written with torch ops (for what the kernel does not take:
    other devices, dtypes, tensor subclasses, a weight that requires grad, ...)."""
    if isinstance(input, Tensor) and not input.is_floating_point():
        # torch's own error (integer logits), which scaling them would hide
        return F.cross_entropy(input, target, weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    z = transformed_logits(input, options.extras)
    zloss = options.extras[2] if options.extras else 0.0
    red = "sum" if options.divisor is not None else reduction
    kw = {"weight": weight, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
    lse = keep = None
    if zloss or options.return_lse:
        lse = torch.logsumexp(z, dim=0 if z.dim() == 1 else 1)
        keep = torch.ones_like(lse, dtype=torch.bool)
        if not target.is_floating_point():
            keep = target != ignore_index
    if zloss:
        assert lse is not None and keep is not None
        per = F.cross_entropy(z, target, reduction="none", **kw)
        per = per + zloss * torch.where(keep, lse.square(), 0.0)
        loss = per if red == "none" else per.sum()
        if red == "mean":  # torch's denominator: the targets' weights (index targets) or count
            denom = keep.sum()
            if weight is not None and not target.is_floating_point():
                denom = (weight[torch.where(keep, target, 0)] * keep).sum()
            loss = loss / denom
    else:
        loss = F.cross_entropy(z, target, reduction=red, **kw)
    if options.divisor is not None:
        loss = loss / options.divisor
    if not options.return_lse:
        return loss
    assert lse is not None and keep is not None
    if lse.dtype in _ops.HALF:  # as the kernel: the accumulation dtype
        lse = lse.float()
    return loss, lse.detach().masked_fill(~keep, float("nan"))


def cross_entropy(
    input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward,
    options: Options,
):
    """fusedloss.torch.cross_entropy's route when an LLM option changes something
    (``options.changes_something()``): the same steps as the plain call (with its
    helpers), the options passed along."""
    code = _flt._reduction_code(reduction)
    autocast = isinstance(input, Tensor) and _flt._float32_loss(input)
    if code is None or not _flt._ce_fusable(
        input, target, weight, ignore_index, label_smoothing, autocast
    ):
        return composed(input, target, weight, ignore_index, reduction, label_smoothing, options)
    label_smoothing = float(label_smoothing)
    divisor = options.divisor
    if divisor is not None:
        code = _ops.SUM  # divided below (compiled) or by the kernel (eager)
    scale, cap, zloss, _ = options.extras or (1.0, 0.0, 0.0, None)
    if torch.compiler.is_compiling():
        compute_grad = input.requires_grad and torch.is_grad_enabled()
        loss, _, lse = _ops.cross_entropy_op(
            input.contiguous(), target.contiguous(), weight, code, ignore_index,
            label_smoothing, compute_grad, autocast, scale, cap, zloss, options.return_lse,
        )
        if divisor is not None:
            loss = loss / divisor
        return (loss, lse) if options.return_lse else loss
    extras = (scale, cap, zloss, divisor)
    if not input.is_contiguous():
        input = input.contiguous()
    if not target.is_contiguous():
        target = target.contiguous()
    lse = _ops.new_lse(input) if options.return_lse else None
    args = (target, weight, code, ignore_index, label_smoothing)
    if not (torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)):
        loss = _ops.ce_kernel(input, *args, None, autocast, extras, lse)
    else:
        whole = None
        if inplace_backward and input.requires_grad and not target.requires_grad:
            _flt._check_overwritable(input)
            whole = _flt._overwritable_whole(input)
        if whole is not None:
            loss = _ops.cross_entropy_apply(whole, *args, True, autocast, input.shape, extras, lse)[0]
        else:
            loss = _ops.cross_entropy_apply(input, *args, False, autocast, None, extras, lse)
    return (loss, lse) if options.return_lse else loss
