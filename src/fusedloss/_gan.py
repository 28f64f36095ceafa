"""The GAN objective of the NumPy API (DESIGN.md, "Wave 2 API"), on the
discriminator's raw logits. Each term is ``scale * mean(op(logits, t))`` over one
array with a scalar target ``t``: one call into the fused elementwise kernel,
which reads the logits once and writes their gradient. The terms of each
``kind`` are listed in ``_losses`` (GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS).

Shared rules:

- logits of any shape (real and fake may differ), float32, float64 or float16;
  read as they are, accumulated in float32 (float64 for float64).
- the loss is a NumPy scalar of the logits' dtype. Real and fake logits of
  different dtypes follow NumPy's promotion (``np.result_type``), as torch's sum
  of the two terms would; each gradient has its own logits' dtype.
- a mean over zero elements is NaN (as ``torch.mean``), its gradient empty.
- ``_and_grad`` takes ``grad_output`` (a number or 0-d array: the gradient is
  that of ``grad_output * loss``), ``out_real=`` / ``out_fake=`` (``out=`` for
  the generator) to receive the gradients, and ``inplace=True`` to overwrite the
  logits with their gradients, as the other ``_and_grad`` functions do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from . import _validate as v
from ._api import _finish_grad, _narrow_scalar
from ._elementwise import OPS
from ._losses import GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS, GanTerm

__all__ = [
    "gan_discriminator_loss",
    "gan_discriminator_loss_and_grad",
    "gan_generator_loss",
    "gan_generator_loss_and_grad",
]

_MEAN = v.REDUCTIONS["mean"]


def _kind(kind: Any, kinds: dict[str, Any]) -> Any:
    """The terms of ``kind``; an unknown kind is a ValueError naming it."""
    if type(kind) is str and kind in kinds:
        return kinds[kind]
    names = ", ".join(repr(k) for k in kinds)
    raise ValueError(f"kind: expected one of {names}, got {kind!r}")


class _Logits:
    """One array of logits: the caller's array, the C-contiguous array the kernel
    reads, its argument name, and where its gradient goes."""

    def __init__(self, value: Any, name: str) -> None:
        self.name = name
        self.original = v.array(value, name)
        self.x = v.float_array(self.original, name)
        self.grad: np.ndarray | None = None
        self.copy_back: np.ndarray | None = None

    def destination(self, out: Any, out_name: str, inplace: Any) -> None:
        """Choose (and check) the gradient's buffer before any kernel runs."""
        self.grad, self.copy_back = v.gradient_buffer(
            self.x, self.original, out, inplace, self.name, out_name
        )

    def run(self, term: GanTerm, grad_output: float) -> float:
        """The term's loss in float64; writes its gradient when a buffer was chosen."""
        return _core.elementwise(  # by position (see _core.pyi): the target, param, scale
            OPS[term.op], self.x, None, _MEAN, None, self.grad, None, grad_output, False,
            term.target, 0.0, term.scale,
        )

    def gradient(self, out: Any, inplace: Any) -> np.ndarray:
        assert self.grad is not None
        return _finish_grad(self.grad, self.copy_back, self.original, out, inplace)


def _grad_output(grad_output: Any) -> float:
    """grad_output of a scalar loss: a real number or a 0-d array (1 if None)."""
    return v.grad_output_value(grad_output, _MEAN, (), v.F64)[1]


def _check_apart(out: Any, mine: _Logits, out_name: str, others: dict[str, Any]) -> None:
    """``out`` may be its own logits (an in-place gradient) but must not touch the
    other arrays of the call: the other term would read (or lose) what it wrote."""
    if out is not None:
        v.check_no_overlap(out, mine.original, others, mine.name, out_name)


def gan_discriminator_loss(real_logits: np.ndarray, fake_logits: np.ndarray,
                           kind: str = "minimax") -> Any:
    """The discriminator's GAN loss on its logits for real and generated samples.

    ``kind`` (each mean over that array's elements, ``s`` the sigmoid):
    ``"minimax"`` (also ``"non_saturating"``): ``mean(-log s(r)) + mean(-log(1 - s(f)))``,
    computed stably as softplus; ``"least_squares"``: ``0.5 mean((r-1)^2) + 0.5 mean(f^2)``;
    ``"hinge"``: ``mean(relu(1 - r)) + mean(relu(1 + f))``; ``"wasserstein"``:
    ``mean(f) - mean(r)``. Returns a NumPy scalar (see the module doc for dtypes).
    """
    real_term, fake_term = _kind(kind, GAN_DISCRIMINATOR_KINDS)
    real, fake = _Logits(real_logits, "real_logits"), _Logits(fake_logits, "fake_logits")
    total = real.run(real_term, 1.0) + fake.run(fake_term, 1.0)
    return _narrow_scalar(np.result_type(real.x.dtype, fake.x.dtype), total)


def gan_discriminator_loss_and_grad(
    real_logits: np.ndarray,
    fake_logits: np.ndarray,
    kind: str = "minimax",
    grad_output: Any = None,
    out_real: np.ndarray | None = None,
    out_fake: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The discriminator's GAN loss and its gradients w.r.t. both logits:
    ``(loss, grad_real, grad_fake)``, one fused pass over each array.

    ``out_real`` / ``out_fake`` receive the gradients; ``inplace=True`` writes each
    into its own logits (which then must not share memory).
    """
    real_term, fake_term = _kind(kind, GAN_DISCRIMINATOR_KINDS)
    real, fake = _Logits(real_logits, "real_logits"), _Logits(fake_logits, "fake_logits")
    go = _grad_output(grad_output)
    real.destination(out_real, "out_real", inplace)
    fake.destination(out_fake, "out_fake", inplace)
    if inplace and np.may_share_memory(real.original, fake.original):
        raise ValueError("fake_logits: shares memory with real_logits, so inplace=True would "
                         "overwrite one with the other's gradient")
    _check_apart(out_real, real, "out_real", {"fake_logits": fake.original, "out_fake": out_fake})
    _check_apart(out_fake, fake, "out_fake", {"real_logits": real.original})
    total = real.run(real_term, go) + fake.run(fake_term, go)
    loss = _narrow_scalar(np.result_type(real.x.dtype, fake.x.dtype), total)
    return loss, real.gradient(out_real, inplace), fake.gradient(out_fake, inplace)


def gan_generator_loss(fake_logits: np.ndarray, kind: str = "non_saturating") -> Any:
    """The generator's GAN loss on the discriminator's logits for generated samples.

    ``kind``: ``"non_saturating"``: ``mean(-log s(f))``; ``"minimax"``:
    ``mean(log(1 - s(f)))`` (both computed stably as softplus); ``"least_squares"``:
    ``0.5 mean((f-1)^2)``; ``"hinge"`` and ``"wasserstein"``: ``-mean(f)``.
    """
    term = _kind(kind, GAN_GENERATOR_KINDS)
    fake = _Logits(fake_logits, "fake_logits")
    return _narrow_scalar(fake.x.dtype, fake.run(term, 1.0))


def gan_generator_loss_and_grad(
    fake_logits: np.ndarray,
    kind: str = "non_saturating",
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[Any, np.ndarray]:
    """The generator's GAN loss and its gradient w.r.t. the fake logits,
    ``(loss, grad_fake)``, in one fused pass (``out=`` / ``inplace=True`` as usual)."""
    term = _kind(kind, GAN_GENERATOR_KINDS)
    fake = _Logits(fake_logits, "fake_logits")
    go = _grad_output(grad_output)
    fake.destination(out, "out", inplace)
    _check_apart(out, fake, "out", {})
    loss = _narrow_scalar(fake.x.dtype, fake.run(term, go))
    return loss, fake.gradient(out, inplace)
