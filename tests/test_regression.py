"""The elementwise losses (fusedloss/_losses.py: fl.mse_loss, fl.l1_loss, fl.huber_loss,
...) and their *_and_grad over sizes, layouts and upstream gradients, against
torch.nn.functional; then what is particular to L1.

L1 also takes complex input: the loss is |input - target| (real), and the gradient
is torch's for a real loss of a complex tensor, d/d(re) + i d/d(im) = sign(z) * g
with sign(0) = 0. Tolerances: see tests/conftest.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

import fusedloss as fl
from conftest import (
    CAPABILITIES,
    COMPLEX_DTYPES,
    ELEMENTWISE_CASES,
    ELEMENTWISE_IDS,
    REAL_DTYPES,
    REDUCTIONS,
    TORCH_FN,
    assert_matches,
    check_against_torch,
    elementwise_inputs,
    forced_capability,
    references,
    regression_inputs,
    upstream_gradient,
)
from fusedloss._losses import ELEMENTWISE_BY_NAME, ELEMENTWISE_LOSSES, ElementwiseLoss

L1 = ELEMENTWISE_BY_NAME["l1_loss"]


def _cases():
    """(loss, dtype, reduction) for every elementwise case and each of its reductions."""
    return [pytest.param(loss, dtype, reduction, id=f"{case_id}-{reduction}")
            for (loss, dtype), case_id in zip(ELEMENTWISE_CASES, ELEMENTWISE_IDS)
            for reduction in loss.reductions]


CASES = _cases()


def run_and_check(loss: ElementwiseLoss, x: np.ndarray, y: np.ndarray, **kwargs: Any):
    """The fused call against torch, the forward-only call bit for bit the fused loss;
    the arguments must be left untouched."""
    x_before, y_before = x.copy(), y.copy()
    opts = {k: v for k, v in kwargs.items() if k != "grad_output"}
    loss_only = getattr(fl, loss.name)(x, y, **opts)
    value, grad = getattr(fl, f"{loss.name}_and_grad")(x, y, **kwargs)
    wide = check_against_torch(TORCH_FN[loss.name], value, grad, x, y, **kwargs)
    assert type(loss_only) is type(value) and loss_only.dtype == value.dtype
    np.testing.assert_array_equal(loss_only, value)
    assert not np.shares_memory(grad, x)
    np.testing.assert_array_equal(x, x_before, err_msg="input was modified")
    np.testing.assert_array_equal(y, y_before, err_msg="target was modified")
    return wide


# 0-d (torch accepts it), 1-d around vector widths, and multi-dim.
SHAPES = [
    *[(n,) for n in (1, 3, 7, 8, 9, 16, 17, 31, 33, 65, 1003)],
    (),
    (3, 4, 5),
    (2, 3, 17),
]


@pytest.mark.parametrize(("loss", "dtype", "reduction"), CASES)
def test_matches_torch(capability, rng, loss, dtype, reduction):
    for shape in SHAPES:
        run_and_check(loss, *elementwise_inputs(loss, rng, shape, dtype), reduction=reduction)


@pytest.mark.parametrize(("loss", "dtype", "reduction"), CASES)
def test_grad_output_array(capability, rng, loss, dtype, reduction):
    for shape in [(), (17,), (3, 4, 5)]:
        x, y = elementwise_inputs(loss, rng, shape, dtype)
        gout = upstream_gradient(rng, shape, dtype, reduction)
        run_and_check(loss, x, y, reduction=reduction, grad_output=gout)


@pytest.mark.parametrize("gout", [0.0, -2.5])
@pytest.mark.parametrize(("loss", "dtype", "reduction"),
                         [c for c in CASES if c.values[2] != "none"])
def test_grad_output_python_float(rng, loss, dtype, reduction, gout):
    x, y = elementwise_inputs(loss, rng, (4, 9), dtype)
    run_and_check(loss, x, y, reduction=reduction, grad_output=gout)


@pytest.mark.parametrize(("loss", "dtype", "reduction"), CASES)
def test_out_buffer(capability, rng, loss, dtype, reduction):
    x, y = elementwise_inputs(loss, rng, (5, 19), dtype)
    out = np.full_like(x, np.nan)
    value, grad = getattr(fl, f"{loss.name}_and_grad")(x, y, reduction=reduction, out=out)
    assert grad is out
    check_against_torch(TORCH_FN[loss.name], value, grad, x, y, reduction=reduction)


LAYOUTS = {
    "transposed": lambda a: a.T,
    "step": lambda a: a[::2, 1::3],
    "negative": lambda a: a[::-1, ::-2],
}


@pytest.mark.parametrize(("loss", "dtype", "reduction"), CASES)
def test_noncontiguous(capability, rng, loss, dtype, reduction):
    for layout in LAYOUTS.values():
        x, y = (layout(a) for a in elementwise_inputs(loss, rng, (12, 18), dtype))
        assert not x.flags.c_contiguous
        run_and_check(loss, x, y, reduction=reduction)


@pytest.mark.parametrize(("loss", "dtype", "reduction"), CASES)
def test_empty(capability, loss, dtype, reduction):
    # torch: mean over nothing is NaN, sum is 0, none an empty array; grad empty.
    for shape in [(0,), (3, 0, 2)]:
        x = np.zeros(shape, dtype)
        ref = run_and_check(loss, x, x.copy(), reduction=reduction)
        if reduction in ("mean", "batchmean") and shape[0] == 0:
            assert np.isnan(ref.loss)


# ------------------------------------------------------------------------ L1 only


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES + COMPLEX_DTYPES)
def test_l1_grad_is_zero_where_input_equals_target(capability, rng, dtype, reduction):
    # sign(0) = 0 (torch's subgradient choice), also for complex: sgn(0) = 0, not NaN.
    x, y = regression_inputs(rng, (37,), dtype), regression_inputs(rng, (37,), dtype)
    equal = rng.random(37) < 0.4
    y[equal] = x[equal]
    ref = run_and_check(L1, x, y, reduction=reduction)
    loss, grad = fl.l1_loss_and_grad(x, y, reduction=reduction)
    assert (grad[equal] == 0).all()
    assert (ref.grad[equal] == 0).all()


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_complex_l1_closed_form(rng, dtype):
    # Independent of torch: d|z|/dre + i d|z|/dim = z / |z|, divided by n for mean.
    x, y = regression_inputs(rng, (5, 7), dtype), regression_inputs(rng, (5, 7), dtype)
    loss, grad = fl.l1_loss_and_grad(x, y, reduction="mean")
    d = (x - y).astype(np.complex128)
    rtol = 1e-5 if dtype == np.complex64 else 1e-12
    np.testing.assert_allclose(loss, np.abs(d).mean(), rtol=rtol)
    np.testing.assert_allclose(grad, d / np.abs(d) / d.size, rtol=rtol, atol=rtol / d.size)


# ------------------------------------------------------------------ large reductions

LARGE_N = 10**7 + 3
SAMPLE = slice(None, None, 997)  # the gradient is elementwise: a strided sample of it


def _torch_reductions(loss: ElementwiseLoss, x: np.ndarray, y: np.ndarray) -> dict[Any, Any]:
    """torch's mean and sum of the whole loss, in float64 (the reference) and float32."""
    out = {}
    with torch.no_grad():
        for dtype in (torch.float64, torch.float32):
            a, b = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
            for reduction in ("mean", "sum"):
                out[reduction, dtype] = np.asarray(
                    TORCH_FN[loss.name](a, b, reduction=reduction).item())
    return out


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=[loss.name for loss in ELEMENTWISE_LOSSES])
def test_large_reduction(loss):
    """Mean and sum over 10^7 float32 elements (biased where the input is real: naive
    float32 sums drift) accumulated no worse than torch's float32, on every compiled
    path; the gradient right at a sample of positions across the whole array."""
    x, y = elementwise_inputs(loss, np.random.default_rng(7), (LARGE_N,), np.float32, scale=1.0)
    if loss.input_kind == "real":
        x += np.float32(3.0)
    totals = _torch_reductions(loss, x, y)
    wide, low = references(TORCH_FN[loss.name], x[SAMPLE], y[SAMPLE], reduction="none")
    for capability, reduction in itertools.product(CAPABILITIES, ("mean", "sum")):
        with forced_capability(capability):
            value, grad = getattr(fl, f"{loss.name}_and_grad")(x, y, reduction=reduction)
        what = f"{capability} {reduction}"
        assert_matches(value, totals[reduction, torch.float64], totals[reduction, torch.float32],
                       x.dtype, f"{what} loss")
        scale = 1.0 / x.size if reduction == "mean" else 1.0
        assert_matches(grad[SAMPLE], wide.grad * scale, low.grad * np.float32(scale), x.dtype,
                       f"{what} grad")
