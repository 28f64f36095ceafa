"""The chunk loop of fused linear + cross-entropy, shared by the NumPy layer
(``_linear_ce``, NumPy's matmul) and the torch layer (``_torch_linear_ce_ops``,
torch's matmuls): the logits ``input @ W.T + b`` exist one chunk of tokens at a time.

Per chunk: project it, let the fused kernel (``_core.cross_entropy``) overwrite the
chunk's logits with their gradient, then add the chunk's share of the input's,
weight's and bias's gradients (two more matmuls and a column sum). One chunk
buffer serves every chunk, so forward + gradient needs about the weight's gradient
plus one chunk beyond the results (the Liger-Kernel / Cut Cross-Entropy scheme, on
CPU). A layer supplies the products as a :class:`Head`.

Reductions: the kernel sums each chunk (``reduction="sum"``); a mean divides by
the denominator of the whole batch, computed first from the targets alone (the
weights of the non-ignored targets, the number of positions for probability
targets, or ``num_items_in_batch``) and folded into the gradient's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import _core
from . import _validate as v

#: Default logits memory of one chunk: 64 MiB holds 524 tokens of a 32000-word
#: vocabulary in float32. Fewer, bigger chunks run the weight-gradient matmul on
#: more tokens at once (each chunk reads and writes the whole weight gradient).
DEFAULT_CHUNK_BYTES = 64 * 2**20
NONE, MEAN, SUM = v.NONE, v.MEAN, v.SUM


# ------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """What the chunk loop needs, every array already checked and C-contiguous.

    ``target`` is ``(N, inner)`` int64 class indices or ``(N, C * inner)``
    probabilities; the logits of a chunk are ``(rows, C * inner)``, i.e.
    ``(rows, C, inner)`` for the kernel.
    """

    tokens: int
    classes: int
    inner: int
    target: np.ndarray
    weight: np.ndarray | None
    ignore_index: int
    label_smoothing: float
    reduction: int
    extras: dict[str, float]  # the kernel's scale / cap / z-loss keywords, non-default ones only
    denominator: float  # the mean's divisor over the whole batch (1.0 otherwise)
    chunk_tokens: int


class Head(Protocol):
    """The matrix products of one layer (NumPy here, torch in the torch layer)."""

    def logits(self, start: int, stop: int) -> np.ndarray:
        """The chunk's logits, ``(stop - start, C * inner)``, in a reused buffer the
        kernel may overwrite (C-contiguous, float32 or float64)."""

    def accumulate(self, start: int, stop: int, grad: np.ndarray) -> None:
        """Add the chunk's gradients, from ``grad`` (the chunk's logits gradient)."""


def mean_denominator(
    target: np.ndarray, weight: np.ndarray | None, ignore_index: int, positions: int
) -> float:
    """The divisor of reduction mean over the whole batch, as torch (and the kernel):
    the summed weights of the non-ignored class-index targets (their count without
    weights), or the number of positions for probability targets. NaN when nothing
    is weighed (every target ignored or of weight 0): torch's 0/0."""
    if target.dtype.kind == "f":
        return float(positions)
    keep = target != ignore_index
    if weight is None:
        count = int(np.count_nonzero(keep))
        return float(count) if count else math.nan
    w = np.where(keep, weight[np.where(keep, target, 0)], 0).astype(np.float64)
    if not np.any(w != 0):
        return math.nan
    return float(np.sum(w))  # pairwise summation; weights that cancel give 0 (then +-inf/NaN)


def check_class_range(target: np.ndarray, classes: int, ignore_index: int) -> None:
    """IndexError, as the kernel would raise it, before any chunk is computed."""
    if target.dtype.kind == "f" or target.size == 0:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bad.any():
        pos = int(np.flatnonzero(bad.reshape(-1))[0])
        value = int(target.reshape(-1)[pos])
        raise IndexError(
            f"target: class index {value} at flat position {pos} is out of range "
            f"[0, {classes}) and is not ignore_index ({ignore_index})"
        )


def chunk_tokens_for(tokens: int, row_bytes: int, chunk_bytes: Any) -> int:
    """Tokens per chunk: as many as fit ``chunk_bytes`` of logits (at least one)."""
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else v.positive_integer(
        chunk_bytes, "chunk_bytes"
    )
    return max(1, min(tokens, budget // max(row_bytes, 1)))


def prefaulted(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A buffer for a BLAS product to write into (the chunk's logits, the weight's
    gradient), its pages faulted in by one sequential fill first. Left to the
    BLAS's threads, which write it tile by tile, the fresh pages made the product
    run much slower (1024 x 512 x 32000 float32 fwd+bwd, 2 threads: torch layer
    439-479 ms untouched, 365-391 ms filled first; NumPy layer 437-445 ms against
    381-395 ms, the weight's gradient's product 60-130 ms against 55 ms); a fill
    costs about 10 ms per 64 MiB (NumPy's huge-page advice on)."""
    array = np.empty(shape, dtype=dtype)
    array.fill(0)
    return array


def kernel_options(options: v.CEOptions) -> dict[str, float]:
    """The kernel's keywords for the LLM options that are not at their default
    (so the plain call stays exactly the plain cross-entropy)."""
    names = ("logit_scale", "softcap", "lse_square_scale")
    return {k: value for k, value, default in zip(names, options, v.NO_CE_OPTIONS)
            if value != default}


def run_chunks(
    plan: Plan,
    head: Head,
    want_grad: bool,
    grad_output_scalar: float = 1.0,
    loss_out: np.ndarray | None = None,
    grad_output: np.ndarray | None = None,
) -> float:
    """The loop: per chunk, logits -> loss (+ gradient in place) -> gradients.

    Returns the reduced loss (the mean already divided); for reduction none the
    per-token losses go to ``loss_out`` (``(N, inner)``) and ``grad_output``
    (``(N, inner)`` or None for ones) weighs the gradient.
    """
    red = plan.reduction
    kernel_red = NONE if red == NONE else SUM
    scale = grad_output_scalar
    if red == MEAN:  # IEEE division: a zero or NaN divisor gives +-inf / NaN, as torch
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = float(np.float64(grad_output_scalar) / np.float64(plan.denominator))
    total = 0.0
    step = plan.chunk_tokens
    for start in range(0, plan.tokens, step):
        stop = min(start + step, plan.tokens)
        logits = head.logits(start, stop)
        total += _core.cross_entropy(
            logits,
            plan.target[start:stop],
            plan.weight,
            plan.ignore_index,
            plan.label_smoothing,
            kernel_red,
            None if loss_out is None else loss_out[start:stop],
            logits if want_grad else None,
            None if grad_output is None else grad_output[start:stop],
            scale,
            False,
            stop - start,
            plan.classes,
            plan.inner,
            **plan.extras,
        )
        if want_grad:
            head.accumulate(start, stop, logits)
    if red == MEAN:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(total) / np.float64(plan.denominator))
    return total
