"""Bitwise determinism: the same bits whatever the thread count, call after call.

DESIGN.md: reductions are done in fixed-size blocks combined in a fixed order, so the
loss and the gradient must not depend on ``fl.set_num_threads``. The shapes are big
enough for every parallel path: many rows (512 x 4096), few rows with a huge C that
the kernel splits (4 x 262144), the K-dim layout (8 x 21 x 64 x 64, and 4 x 21 x 128 x
128, whose gradient streams in tiles shifted onto the line grid) and a 10^6-element
input of every elementwise loss. 1-4 threads oversubscribe a 2-core machine on purpose.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest

import fusedloss as fl
from conftest import ELEMENTWISE_CASES, ELEMENTWISE_IDS, elementwise_inputs
from fusedloss._losses import ELEMENTWISE_LOSSES, ElementwiseLoss

THREADS = (1, 2, 3, 4)
REDUCTIONS = ("none", "mean", "sum")


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = fl.get_num_threads()
    yield
    fl.set_num_threads(before)
    assert fl.get_num_threads() == before


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bits(value: Any) -> bytes:
    a = np.asarray(value)
    return a.dtype.str.encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()


def _ce_inputs(shape: tuple[int, ...], dtype: Any, probs: bool) -> tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    rng = _rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    classes = shape[1]
    if probs:
        p = rng.random(shape).astype(dtype)
        target = p / p.sum(axis=1, keepdims=True)
    else:
        target = rng.integers(0, classes, (shape[0], *shape[2:]))
        target[rng.random(target.shape) < 0.1] = -100
    weight = (rng.random(classes) + 0.25).astype(dtype)
    return x, target, weight


def _run_all_threads(call: Callable[[], tuple[Any, ...]]) -> None:
    """call() under every thread count, twice each: all results bitwise equal."""
    fl.set_num_threads(1)
    reference = [_bits(r) for r in call()]
    for n in THREADS:
        fl.set_num_threads(n)
        assert fl.get_num_threads() == n
        for repeat in range(2):
            got = [_bits(r) for r in call()]
            for i, (a, b) in enumerate(zip(reference, got)):
                assert a == b, f"result {i} differs with {n} threads (repeat {repeat})"


CE_SHAPES = [(512, 4096), (4, 262144), (8, 21, 64, 64), (4, 21, 128, 128)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_index_targets(shape: tuple[int, ...], dtype: Any, reduction: str) -> None:
    x, target, weight = _ce_inputs(shape, dtype, probs=False)
    kw = {"weight": weight, "reduction": reduction, "label_smoothing": 0.1}
    go = (_rng(1).standard_normal(target.shape) if reduction == "none" else np.array(0.75))
    out = np.empty_like(x)
    inplace = np.empty_like(x)

    def call() -> tuple[Any, ...]:
        loss_only = fl.cross_entropy(x, target, **kw)
        loss, grad = fl.cross_entropy_and_grad(x, target, **kw)
        loss_g, _ = fl.cross_entropy_and_grad(x, target, grad_output=go, out=out, **kw)
        inplace[...] = x
        loss_i, _ = fl.cross_entropy_and_grad(inplace, target, grad_output=go, inplace=True, **kw)
        return loss_only, loss, grad, loss_g, out, loss_i, inplace

    _run_all_threads(call)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_prob_targets(shape: tuple[int, ...], reduction: str) -> None:
    x, target, weight = _ce_inputs(shape, np.float32, probs=True)

    def call() -> tuple[Any, ...]:
        loss, grad = fl.cross_entropy_and_grad(x, target, weight=weight, reduction=reduction,
                                               label_smoothing=0.05)
        return loss, grad, fl.cross_entropy(x, target, reduction=reduction)

    _run_all_threads(call)


ELEMENTWISE = [pytest.param(loss, dtype, reduction, id=f"{case_id}-{reduction}")
               for (loss, dtype), case_id in zip(ELEMENTWISE_CASES, ELEMENTWISE_IDS)
               if np.dtype(dtype) != np.complex128
               for reduction in loss.reductions]


@pytest.mark.parametrize("loss, dtype, reduction", ELEMENTWISE)
def test_elementwise(loss: ElementwiseLoss, dtype: Any, reduction: str) -> None:
    """Every elementwise loss (fusedloss/_losses.py) over 10^6 elements: 62 blocks
    summed in parallel."""
    rng = _rng(7)
    n = 1_000_003
    x, t = elementwise_inputs(loss, rng, (n,), dtype)
    loss_fn = getattr(fl, loss.name)
    grad_fn = getattr(fl, f"{loss.name}_and_grad")
    go = rng.standard_normal(n).astype(x.real.dtype) if reduction == "none" else 1.5

    def call() -> tuple[Any, ...]:
        value, grad = grad_fn(x, t, reduction=reduction, grad_output=go)
        return loss_fn(x, t, reduction=reduction), value, grad

    _run_all_threads(call)


def test_odd_sizes_around_blocks() -> None:
    """Sizes that are not multiples of any block or vector width, still bitwise stable."""
    rng = _rng(11)
    for n in (1, 7, 4095, 4097, 65537, 1_000_001):
        for loss in ELEMENTWISE_LOSSES:
            x, t = elementwise_inputs(loss, rng, (n,), np.float32)
            _run_all_threads(lambda: (getattr(fl, loss.name)(x, t),
                                      getattr(fl, loss.name)(x, t, reduction="sum")))
    for rows, classes in ((3, 100_003), (1001, 257), (2, 65537)):
        x = rng.standard_normal((rows, classes)).astype(np.float32)
        target = rng.integers(0, classes, rows)
        _run_all_threads(lambda: fl.cross_entropy_and_grad(x, target, reduction="sum"))
