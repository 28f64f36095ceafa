"""DESIGN.md's GAN objective written in torch ops, per element (a loss is the sum
of its terms' means): the reference of tests/test_gan.py and tests/test_torch_gan.py."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Term = Callable[[torch.Tensor], torch.Tensor]


def softplus(x: torch.Tensor) -> torch.Tensor:
    """F.softplus without its default shortcut softplus(x) = x above x = 20: that
    is 2e-9 off in float64 (the gradient 1 for s(20)), above the 1e-10 tolerance."""
    return F.softplus(x, threshold=40)


# DESIGN.md's formulas, per element (the loss is the sum of each term's mean);
# log(1 - s(f)) = -softplus(f) and -log s(r) = softplus(-r), stably.
DISCRIMINATOR: dict[str, tuple[Term, Term]] = {
    "minimax": (lambda r: softplus(-r), softplus),
    "non_saturating": (lambda r: softplus(-r), softplus),
    "least_squares": (lambda r: 0.5 * (r - 1) ** 2, lambda f: 0.5 * f**2),
    "hinge": (lambda r: F.relu(1 - r), lambda f: F.relu(1 + f)),
    "wasserstein": (lambda r: -r, lambda f: f),
}
GENERATOR: dict[str, Term] = {
    "non_saturating": lambda f: softplus(-f),
    "minimax": lambda f: -softplus(f),
    "least_squares": lambda f: 0.5 * (f - 1) ** 2,
    "hinge": lambda f: -f,
    "wasserstein": lambda f: -f,
}
