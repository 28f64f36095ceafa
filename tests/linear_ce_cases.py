"""Inputs and the torch reference for the fused linear + cross-entropy tests.

The reference materialises the logits, ``input @ W.T + b``, and runs torch's
``F.cross_entropy`` on them (or, with the LLM options, a composition of torch ops:
scale, tanh cap, cross-entropy, the squared log-sum-exp), in float64 and at the
input's own precision; gradients come from torch's autograd.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from conftest import assert_matches

# Options of one case: every cross-entropy option the fused path takes.
OPTION_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "weight": {"weight": True},
    "ignore-smooth-weight": {"weight": True, "ignore_frac": 0.3, "label_smoothing": 0.1},
    "ignore-index-7": {"ignore_index": 7, "ignore_frac": 0.3},
    "probs": {"probs": True},
    "probs-smooth-weight": {"probs": True, "weight": True, "label_smoothing": 0.2},
}
# The LLM options (scale, cap, z-loss, the accumulation divisor) on top of a case.
EXTRA_CASES: dict[str, dict[str, Any]] = {
    "scale": {"logit_scale": 0.7},
    "softcap": {"softcap": 4.0},
    "zloss": {"lse_square_scale": 1e-2},
    "all": {"logit_scale": 1.3, "softcap": 6.0, "lse_square_scale": 1e-3},
}


class Case(NamedTuple):
    x: np.ndarray  # (N, H) or (H,)
    w: np.ndarray  # (C, H) or (C, d1.., H)
    b: np.ndarray | None
    target: np.ndarray
    weight: np.ndarray | None
    kwargs: dict[str, Any]  # ignore_index, label_smoothing (only when set)


def make_case(
    rng: np.random.Generator,
    tokens: int,
    hidden: int,
    classes: int,
    dtype: Any,
    *,
    bias: bool = True,
    probs: bool = False,
    weight: bool = False,
    ignore_frac: float = 0.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    out_features: tuple[int, ...] = (),
    batched: bool = True,
) -> Case:
    """Hidden states and a head whose logits have a spread of a few units."""
    lead = (tokens,) if batched else ()
    x = rng.standard_normal((*lead, hidden)).astype(dtype)
    w = (rng.standard_normal((classes, *out_features, hidden)) * (2.0 / math.sqrt(hidden))).astype(
        dtype)
    b = (rng.standard_normal((classes, *out_features)) * 0.5).astype(dtype) if bias else None
    logits_shape = (*lead, classes, *out_features)
    if probs:
        p = rng.random(logits_shape) + 1e-3
        target = (p / p.sum(axis=len(lead), keepdims=True)).astype(dtype)
    else:
        tshape = (*lead, *out_features)
        target = np.asarray(rng.integers(0, classes, size=tshape), dtype=np.int64)
        if ignore_frac:
            target = np.where(rng.random(tshape) < ignore_frac, ignore_index, target)
    w_cls = (rng.random(classes) + 0.1).astype(dtype) if weight else None
    kwargs: dict[str, Any] = {}
    if ignore_index != -100:
        kwargs["ignore_index"] = ignore_index
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    return Case(x, w, b, np.asarray(target), w_cls, kwargs)


class Result(NamedTuple):
    loss: np.ndarray
    grad_x: np.ndarray
    grad_w: np.ndarray
    grad_b: np.ndarray | None


def _composed_loss(logits: torch.Tensor, target: torch.Tensor, weight, reduction: str,
                   ignore_index: int, label_smoothing: float, logit_scale: float = 1.0,
                   softcap: float | None = None, lse_square_scale: float = 0.0,
                   num_items_in_batch: float | None = None) -> torch.Tensor:
    """The LLM options written with torch ops, per position, then reduced as torch's
    mean does (the summed losses over the summed weights of the non-ignored targets,
    or over the positions for probabilities), or over ``num_items_in_batch``."""
    z = logits * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    per = F.cross_entropy(z, target, weight=weight, reduction="none", ignore_index=ignore_index,
                          label_smoothing=label_smoothing)
    probs = target.is_floating_point()
    keep = torch.ones_like(per, dtype=torch.bool) if probs else target != ignore_index
    if lse_square_scale:
        lse = torch.logsumexp(z, dim=1 if z.dim() > 1 else 0)
        per = per + lse_square_scale * torch.where(keep, lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return per
    total = per.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    if probs:
        return total / per.numel()
    wt = torch.ones(logits.shape[1 if logits.dim() > 1 else 0], dtype=per.dtype) if weight is None \
        else weight
    return total / torch.where(keep, wt[torch.where(keep, target, 0)], 0).sum()


def torch_reference(case: Case, compute_dtype: Any, reduction: str = "mean",
                    grad_output: np.ndarray | None = None, **extras: Any) -> Result:
    """Loss and gradients of ``sum(grad_output * loss)`` through materialised logits,
    computed at ``compute_dtype`` and returned in float64."""
    dt = {np.float16: torch.float16, np.float32: torch.float32,
          np.float64: torch.float64}[np.dtype(compute_dtype).type]
    x = torch.tensor(case.x, dtype=dt, requires_grad=True)
    w = torch.tensor(case.w, dtype=dt, requires_grad=True)
    b = None if case.b is None else torch.tensor(case.b, dtype=dt, requires_grad=True)
    hidden = case.w.shape[-1]
    logits = x @ w.reshape(-1, hidden).T
    if b is not None:
        logits = logits + b.reshape(-1)
    logits = logits.reshape(*case.x.shape[:-1], *case.w.shape[:-1])
    t = torch.from_numpy(case.target)
    if t.is_floating_point():
        t = t.to(dt)
    weight = None if case.weight is None else torch.tensor(case.weight, dtype=dt)
    ignore_index = case.kwargs.get("ignore_index", -100)
    smoothing = case.kwargs.get("label_smoothing", 0.0)
    if extras:
        loss = _composed_loss(logits, t, weight, reduction, ignore_index, smoothing, **extras)
    else:
        loss = F.cross_entropy(logits, t, weight=weight, reduction=reduction,
                               ignore_index=ignore_index, label_smoothing=smoothing)
    go = torch.ones_like(loss) if grad_output is None else torch.tensor(
        np.asarray(grad_output), dtype=dt).reshape(loss.shape)
    leaves = [a for a in (x, w, b) if a is not None]
    grads = torch.autograd.grad(loss, leaves, go)
    wide = [g.detach().double().numpy() for g in grads]
    return Result(loss.detach().double().numpy(), wide[0], wide[1],
                  wide[2] if b is not None else None)


def check_result(ours: tuple[Any, ...], case: Case, reduction: str = "mean",
                 grad_output: np.ndarray | None = None, **extras: Any) -> None:
    """Assert (loss, grad_x, grad_w, grad_b) against the float64 reference, with the
    float32 tolerance of tests/conftest.py (no worse than torch's own float32)."""
    dtype = case.x.dtype
    ref = torch_reference(case, np.float64, reduction, grad_output, **extras)
    low = None
    if dtype == np.float32:
        low = torch_reference(case, np.float32, reduction, grad_output, **extras)
    names = ("loss", "grad_input", "grad_linear_weight", "grad_linear_bias")
    for k, name in enumerate(names[: len(ours)]):
        if ref[k] is None:
            assert ours[k] is None, f"{name}: expected None without a bias"
            continue
        got = np.asarray(ours[k])
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
        assert_matches(got, ref[k], None if low is None else low[k], dtype, name)
