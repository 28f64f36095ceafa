"""The GAN objective in :mod:`fusedloss.torch` (DESIGN.md, "Wave 2 API"):
autograd-aware scalar losses with gradients for the logits given.

Each term, ``scale * mean(op(logits, t))`` with a scalar target ``t`` (the terms
of each kind are listed in ``_losses``), is one run of the elementwise loss
machinery of ``_torch_elementwise`` (its eager ``autograd.Function``, or its
custom op under ``torch.compile``) with no target tensor. float16 / bfloat16 are
read as they are (accumulated in float32); the loss has the logits' dtype, and
real and fake logits of different dtypes promote as torch's sum does.

Where the kernel does not apply (tensors not on the CPU, dtypes other than
float32/float64/float16/bfloat16, tensor subclasses, functorch transforms,
empty logits), a term is the same formula in torch ops: softplus, relu, squares
and means, never ``log(sigmoid(x))``; an empty mean is NaN, as ``torch.mean``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _torch_elementwise as _ew
from ._gan import _kind
from ._losses import GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS, GanTerm
from ._torch_ops import MEAN, SUPPORTED_DTYPES, functorch_active, torch_function_wanted
from ._torchscript import torch_twin

__all__ = ["gan_discriminator_loss", "gan_generator_loss"]

# Each kernel op of the GAN objective in torch ops, for target t in the terms' values.
_TORCH_OPS = {
    "logistic": lambda x, t: F.softplus(-t * x),
    "mse": lambda x, t: (x - t) ** 2,
    "hinge": lambda x, t: F.relu(1.0 - t * x),
    "linear": lambda x, t: t * x,
}


def _check(logits: Any, name: str) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: expected floating-point logits, got dtype {logits.dtype}")
    return logits


def _fusable(x: Tensor) -> bool:
    return (
        x.dtype in SUPPORTED_DTYPES
        and x.is_cpu
        and x.numel() > 0
        and not torch_function_wanted(x)
        and not functorch_active()
    )


def _term(term: GanTerm, x: Tensor) -> Tensor:
    """``term.scale * mean(op(x, term.target))`` as a 0-d tensor of x's dtype."""
    if not _fusable(x):
        return term.scale * _TORCH_OPS[term.op](x, term.target).mean()
    need_x = torch.is_grad_enabled() and x.requires_grad
    args = (term.op, MEAN, 0.0, 0.0)
    x = x.contiguous()
    if torch.compiler.is_compiling():
        return _ew.elementwise_op(x, None, None, None, *args, need_x, False, False,
                                  term.target, term.scale)[0]
    if not need_x:
        return _ew.elementwise_kernel(term.op, x, None, None, None, MEAN, 0.0, 0.0, None, None,
                                      False, term.target, term.scale)
    return _ew.elementwise_apply(x, None, None, None, *args, False, term.target, term.scale)


@torch_twin(None)
def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor,
                           kind: str = "minimax") -> Tensor:
    """The discriminator's GAN loss (see :func:`fusedloss.gan_discriminator_loss`
    for the kinds and formulas), differentiable w.r.t. both logits."""
    real_term, fake_term = _kind(kind, GAN_DISCRIMINATOR_KINDS)
    real = _check(real_logits, "real_logits")
    fake = _check(fake_logits, "fake_logits")
    return _term(real_term, real) + _term(fake_term, fake)


@torch_twin(None)
def gan_generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's GAN loss (see :func:`fusedloss.gan_generator_loss` for the
    kinds and formulas), differentiable w.r.t. the fake logits."""
    term = _kind(kind, GAN_GENERATOR_KINDS)
    return _term(term, _check(fake_logits, "fake_logits"))
