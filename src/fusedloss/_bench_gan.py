"""The GAN objective's row of ``python -m fusedloss bench``: one discriminator and one
generator step's losses with their gradients (kind "minimax" / "non_saturating",
the usual pair) on 2 x n float32 logits, side by side (see ``_bench``'s protocol).

Contenders:
  fusedloss  ``fl.gan_discriminator_loss_and_grad(r, f, out_real=, out_fake=)`` then
             ``fl.gan_generator_loss_and_grad(f, out=)``: three fused passes.
  floor      each of those passes as one read and one write (``torch.mul(x, 1.5, out=g)``).
  torch      eager forward + backward of the same formulas, ``softplus(-r).mean() +
             softplus(f).mean()`` and ``softplus(-f).mean()``.
  numpy      the same written the usual way (``np.logaddexp`` and sigmoid gradients).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fusedloss as fl

from ._bench_report import Row, size_label

GAN_LOGITS = 65_536


def _numpy_gan(r: np.ndarray, f: np.ndarray) -> Any:
    loss_d = np.logaddexp(0, -r).mean() + np.logaddexp(0, f).mean()
    grad_r = -1 / (1 + np.exp(r)) / r.size
    grad_f = 1 / (1 + np.exp(-f)) / f.size
    loss_g = np.logaddexp(0, -f).mean()
    grad_g = -1 / (1 + np.exp(f)) / f.size
    del grad_r, grad_f, grad_g  # computed, as a training step would
    return loss_d + loss_g


def gan_contenders(torch: Any, r: np.ndarray, f: np.ndarray) -> dict[str, Any]:
    from ._bench import autograd_call, floor  # (the main bench imports this module)

    gr, gf, gg = np.empty_like(r), np.empty_like(f), np.empty_like(f)

    def fused() -> Any:
        loss_d = fl.gan_discriminator_loss_and_grad(r, f, out_real=gr, out_fake=gf)[0]
        return loss_d + fl.gan_generator_loss_and_grad(f, out=gg)[0]

    passes = [floor(torch, gr, r), floor(torch, gf, f), floor(torch, gg, f)]
    c = {"fusedloss": fused, "floor": lambda: [p() for p in passes]}
    if torch is not None:
        softplus = torch.nn.functional.softplus
        leaf_r = torch.from_numpy(r).requires_grad_()
        leaf_fd = torch.from_numpy(f).requires_grad_()  # the discriminator's fake logits
        leaf_fg = torch.from_numpy(f.copy()).requires_grad_()  # the generator step's
        disc = autograd_call(lambda a, b: softplus(-a).mean() + softplus(b).mean(), leaf_r, leaf_fd)
        gen = autograd_call(lambda a: softplus(-a).mean(), leaf_fg)
        c["torch"] = lambda: disc() + gen()
    c["numpy"] = lambda: _numpy_gan(r, f)
    return c


def gan_case(torch: Any, budget_s: float, n: int = GAN_LOGITS) -> Row:
    from ._bench import run_case

    rng = np.random.default_rng(2)
    r = rng.standard_normal(n, dtype=np.float32) * 2 + 1  # a discriminator half-way trained
    f = rng.standard_normal(n, dtype=np.float32) * 2 - 1
    return run_case(f"GAN D+G 2x{size_label(n)}", gan_contenders(torch, r, f), budget_s)
