"""The LM-recipe rows of ``python -m fusedloss bench`` (extras table), float32,
side by side as in ``_bench``:

  CE + extras     ``fl.cross_entropy_and_grad`` with ``logit_scale``, ``softcap`` and
                  ``lse_square_scale`` against the same call without them: what the
                  options cost on top of the fused kernel (target: <= 1.15x).
  KL with logits  ``fl.kl_div_with_logits_and_grad`` (student, teacher, temperature 2)
                  against the floor of reading two logits arrays and writing one
                  (``torch.sub(a, b, out=g)``; target: <= 1.5x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fusedloss as fl

from ._bench_report import Row, shape_label

LLM_SHAPE, QUICK_LLM_SHAPE = (1024, 32000), (64, 1000)
EXTRAS = {"logit_scale": 0.8, "softcap": 30.0, "lse_square_scale": 1e-4}


def ce_extras_row(torch: Any, shape: tuple[int, int], budget_s: float) -> Row:
    from ._bench import compare, logits

    x, t = logits(shape)
    g = np.empty_like(x)
    return compare(f"CE + scale, softcap, z-loss {shape_label(shape)} fwd+grad",
                   lambda: fl.cross_entropy_and_grad(x, t, out=g, **EXTRAS)[0],
                   lambda: fl.cross_entropy_and_grad(x, t, out=g)[0],
                   "plain CE fwd+grad", budget_s)


def kl_logits_row(torch: Any, shape: tuple[int, int], budget_s: float) -> Row:
    from ._bench import compare, floor, logits

    student, _ = logits(shape, seed=0)
    teacher, _ = logits(shape, seed=1)
    g = np.empty_like(student)
    return compare(f"kl_div_with_logits {shape_label(shape)} fwd+grad",
                   lambda: fl.kl_div_with_logits_and_grad(student, teacher, 2.0, out=g)[0],
                   floor(torch, g, student, teacher),
                   "floor: read two, write one", budget_s)


def llm_rows(torch: Any, quick: bool, budget_s: float) -> list[Row]:
    shape = QUICK_LLM_SHAPE if quick else LLM_SHAPE
    return [ce_extras_row(torch, shape, budget_s), kl_logits_row(torch, shape, budget_s)]
