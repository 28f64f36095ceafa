"""fl.mse_loss / fl.l1_loss (and *_and_grad) against torch.nn.functional.

L1 also takes complex input: the loss is |input - target| (real), and the gradient
is torch's for a real loss of a complex tensor, d/d(re) + i d/d(im) = sign(z) * g
with sign(0) = 0. Tolerances: see tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fusedloss as fl
from conftest import (
    COMPLEX_DTYPES,
    REAL_DTYPES,
    REDUCTIONS,
    REGRESSION_IDS,
    REGRESSION_LOSSES,
    TORCH_FN,
    assert_matches,
    check_against_torch,
    references,
    regression_inputs,
    upstream_gradient,
)

LOSSES, LOSS_IDS = REGRESSION_LOSSES, REGRESSION_IDS


def draw(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return regression_inputs(rng, shape, dtype)


def run_and_check(name: str, x: np.ndarray, y: np.ndarray, **kwargs: Any):
    """Forward-only and fused calls against torch; the arguments must be left untouched."""
    x_before, y_before = x.copy(), y.copy()
    loss_fn, fused = getattr(fl, name), getattr(fl, f"{name}_and_grad")
    opts = {k: v for k, v in kwargs.items() if k != "grad_output"}
    check_against_torch(TORCH_FN[name], loss_fn(x, y, **opts), None, x, y, **opts)
    loss, grad = fused(x, y, **kwargs)
    ref = check_against_torch(TORCH_FN[name], loss, grad, x, y, **kwargs)
    assert not np.shares_memory(grad, x)
    np.testing.assert_array_equal(x, x_before, err_msg="input was modified")
    np.testing.assert_array_equal(y, y_before, err_msg="target was modified")
    return ref


# 0-d (torch accepts it), 1-d around vector widths, and multi-dim.
SHAPES = [
    *[(n,) for n in (1, 3, 7, 8, 9, 16, 17, 31, 33, 65, 1003)],
    (),
    (3, 4, 5),
    (2, 3, 17),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_matches_torch(capability, rng, name, dtype, reduction, shape):
    run_and_check(name, draw(rng, shape, dtype), draw(rng, shape, dtype), reduction=reduction)


@pytest.mark.parametrize("shape", [(), (17,), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_grad_output_array(capability, rng, name, dtype, reduction, shape):
    x, y = draw(rng, shape, dtype), draw(rng, shape, dtype)
    gout = upstream_gradient(rng, shape, dtype, reduction)
    run_and_check(name, x, y, reduction=reduction, grad_output=gout)


@pytest.mark.parametrize("gout", [0.0, -2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_grad_output_python_float(rng, name, dtype, reduction, gout):
    x, y = draw(rng, (4, 9), dtype), draw(rng, (4, 9), dtype)
    run_and_check(name, x, y, reduction=reduction, grad_output=gout)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_out_buffer(capability, rng, name, dtype, reduction):
    x, y = draw(rng, (5, 19), dtype), draw(rng, (5, 19), dtype)
    out = np.full_like(x, np.nan)
    loss, grad = getattr(fl, f"{name}_and_grad")(x, y, reduction=reduction, out=out)
    assert grad is out
    check_against_torch(TORCH_FN[name], loss, grad, x, y, reduction=reduction)


LAYOUTS = {
    "transposed": lambda a: a.T,
    "step": lambda a: a[::2, 1::3],
    "negative": lambda a: a[::-1, ::-2],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_noncontiguous(capability, rng, name, dtype, reduction, layout):
    view = LAYOUTS[layout]
    x, y = view(draw(rng, (12, 18), dtype)), view(draw(rng, (12, 18), dtype))
    assert not x.flags.c_contiguous
    run_and_check(name, x, y, reduction=reduction)


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_empty(capability, name, dtype, reduction, shape):
    # torch: mean over nothing is NaN, sum is 0, none an empty array; grad empty.
    x = np.zeros(shape, dtype)
    ref = run_and_check(name, x, x.copy(), reduction=reduction)
    if reduction == "mean":
        assert np.isnan(ref.loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "dtype"), LOSSES, ids=LOSS_IDS)
def test_nan_propagation(capability, rng, name, dtype, reduction):
    # NaN in input or target gives NaN loss there (and NaN mean/sum). The gradient
    # is torch's: NaN for MSE and complex L1, but 0 for real L1 (torch's sign(NaN) = 0).
    x, y = draw(rng, (41,), dtype), draw(rng, (41,), dtype)
    x[[0, 9, 17]] = np.nan
    y[[3, 17, 40]] = np.nan
    ref = run_and_check(name, x, y, reduction=reduction)
    assert np.isnan(ref.loss).any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES + COMPLEX_DTYPES)
def test_l1_grad_is_zero_where_input_equals_target(capability, rng, dtype, reduction):
    # sign(0) = 0 (torch's subgradient choice), also for complex: sgn(0) = 0, not NaN.
    x, y = draw(rng, (37,), dtype), draw(rng, (37,), dtype)
    equal = rng.random(37) < 0.4
    y[equal] = x[equal]
    ref = run_and_check("l1_loss", x, y, reduction=reduction)
    loss, grad = fl.l1_loss_and_grad(x, y, reduction=reduction)
    assert (grad[equal] == 0).all()
    assert (ref.grad[equal] == 0).all()


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_complex_l1_closed_form(rng, dtype):
    # Independent of torch: d|z|/dre + i d|z|/dim = z / |z|, divided by n for mean.
    x, y = draw(rng, (5, 7), dtype), draw(rng, (5, 7), dtype)
    loss, grad = fl.l1_loss_and_grad(x, y, reduction="mean")
    d = (x - y).astype(np.complex128)
    rtol = 1e-5 if dtype == np.complex64 else 1e-12
    np.testing.assert_allclose(loss, np.abs(d).mean(), rtol=rtol)
    np.testing.assert_allclose(grad, d / np.abs(d) / d.size, rtol=rtol, atol=rtol / d.size)


# ------------------------------------------------------------------ large reductions


@pytest.fixture(scope="module")
def large_pair():
    """10^7 + 3 float32 elements: mean and sum accumulated no worse than torch's."""
    rng = np.random.default_rng(7)
    n = 10**7 + 3
    x = (rng.standard_normal(n) + 3.0).astype(np.float32)  # biased: naive float32 sums drift
    y = rng.standard_normal(n).astype(np.float32)
    refs = {
        (name, reduction): references(TORCH_FN[name], x, y, reduction=reduction)
        for name in ("mse_loss", "l1_loss")
        for reduction in ("mean", "sum")
    }
    return x, y, refs


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_large_reduction(capability, large_pair, name, reduction):
    x, y, refs = large_pair
    wide, low = refs[name, reduction]
    loss, grad = getattr(fl, f"{name}_and_grad")(x, y, reduction=reduction)
    assert_matches(loss, wide.loss, low.loss, x.dtype, "loss")
    assert_matches(grad, wide.grad, low.grad, x.dtype, "grad")
