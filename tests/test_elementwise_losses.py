"""The elementwise losses of the NumPy API (the list in fusedloss/_losses.py)
against torch.nn.functional in float64, on every compiled path.

Tolerances: those of conftest.assert_matches (float64 to 1e-10 relative; float32
no less accurate than torch's own float32 against the float64 reference, within
a factor 2 or 4 ULP of the result's magnitude).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from fusedloss._losses import ELEMENTWISE_LOSSES, ElementwiseLoss

from conftest import REAL_DTYPES, TORCH_FN, check_against_torch, option_sets, torch_loss_and_grad
from conftest import elementwise_values as make

LOSS_IDS = [loss.name for loss in ELEMENTWISE_LOSSES]
SHAPES = [(), (1,), (7,), (97,), (5, 33), (3, 4, 5), (2, 3, 4, 9), (300, 41)]


def run(loss: ElementwiseLoss, x, t, reduction, options, grad_output=None, **call_kwargs):
    fused = getattr(fl, loss.name + "_and_grad")
    value, grad = fused(x, t, reduction=reduction, grad_output=grad_output, **options,
                        **call_kwargs)
    only = getattr(fl, loss.name)(x, t, reduction=reduction, **options)
    np.testing.assert_array_equal(np.asarray(only), np.asarray(value))
    return value, grad


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_matches_torch(loss, dtype, capability, rng):
    for shape in SHAPES:
        x = make(loss.input_kind, rng, shape, dtype)
        t = make(loss.target_kind, rng, shape, dtype)
        for options in option_sets(loss):
            for reduction in loss.reductions:
                go = rng.standard_normal(shape) if reduction == "none" else None
                value, grad = run(loss, x, t, reduction, options, go)
                check_against_torch(TORCH_FN[loss.name], value, grad, x, t, reduction=reduction,
                                    grad_output=go, **options)


WEIGHTED = [
    ("binary_cross_entropy", "weight", [(6,), (4, 1), (1, 6), (4, 6), (), (3, 4, 6)]),
    ("binary_cross_entropy_with_logits", "weight", [(6,), (4, 1), (4, 6), (1,), (3, 1, 1)]),
    ("binary_cross_entropy_with_logits", "pos_weight", [(6,), (1,), (4, 6), (4, 1)]),
    ("huber_loss", "weight", [None]),  # the input's own shape only, as torch
]


@pytest.mark.parametrize("name,key,weight_shapes", WEIGHTED, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 6), (300, 4, 6)], ids=str)
def test_weights_broadcast_as_torch(name, key, weight_shapes, dtype, shape, capability, rng):
    loss = next(loss for loss in ELEMENTWISE_LOSSES if loss.name == name)
    x = make(loss.input_kind, rng, shape, dtype)
    t = make(loss.target_kind, rng, shape, dtype)
    for wshape in weight_shapes:
        wshape = shape if wshape is None else wshape
        try:
            np.broadcast_shapes(wshape, shape)
        except ValueError:
            continue
        if np.broadcast_shapes(wshape, shape) != shape:
            continue
        w = rng.uniform(0.2, 3.0, wshape).astype(dtype)
        both = {key: w}
        if key == "pos_weight":
            both["weight"] = rng.uniform(0.2, 3.0, shape[-1:]).astype(dtype)
        for reduction in loss.reductions:
            go = rng.standard_normal(shape) if reduction == "none" else None
            value, grad = run(loss, x, t, reduction, both, go)
            check_against_torch(TORCH_FN[loss.name], value, grad, x, t,
                                reduction=reduction, grad_output=go, **both)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_float16_input(loss, rng):
    """float16 is read as it is and accumulated in float32; the result is float16: torch
    in float32 on the same (exactly widened) values, rounded to float16, within 1 ULP
    (both round a float32 result once; summation orders differ)."""
    x = make(loss.input_kind, rng, (8, 33), np.float16)
    t = make(loss.target_kind, rng, (8, 33), np.float16)
    for reduction in loss.reductions:
        value, grad = getattr(fl, loss.name + "_and_grad")(x, t, reduction=reduction)
        assert value.dtype == np.float16 and grad.dtype == np.float16
        ref = torch_loss_and_grad(TORCH_FN[loss.name], x, t, compute_dtype=np.float32,
                                  reduction=reduction)
        eps = float(np.finfo(np.float16).eps)
        for ours, theirs in ((value, ref.loss), (grad, ref.grad)):
            theirs = np.asarray(theirs).astype(np.float16).astype(np.float64)
            finite = np.isfinite(theirs)
            np.testing.assert_array_equal(np.asarray(ours)[~finite], theirs[~finite])
            scale = float(np.abs(theirs[finite]).max(initial=0.0))
            np.testing.assert_allclose(np.asarray(ours, np.float64)[finite], theirs[finite],
                                       rtol=eps, atol=eps * scale)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_out_inplace_and_strided(loss, reduction, rng):
    shape = (6, 10)
    base = make(loss.input_kind, rng, (6, 20), np.float32)
    x = base[:, ::2]  # strided view
    t = make(loss.target_kind, rng, shape, np.float32)
    go = rng.standard_normal(shape).astype(np.float32) if reduction == "none" else 2.5
    fused = getattr(fl, loss.name + "_and_grad")
    ref_loss, ref_grad = fused(np.ascontiguousarray(x), t, reduction=reduction, grad_output=go)
    saved = base.copy()
    out = np.empty(shape, np.float32)
    value, grad = fused(x, t, reduction=reduction, grad_output=go, out=out)
    assert grad is out
    np.testing.assert_array_equal(base, saved)  # input untouched
    np.testing.assert_array_equal(grad, ref_grad)
    np.testing.assert_array_equal(np.asarray(value), np.asarray(ref_loss))
    xin = np.ascontiguousarray(x)
    value, grad = fused(xin, t, reduction=reduction, grad_output=go, inplace=True)
    assert grad is xin
    np.testing.assert_array_equal(grad, ref_grad)
    value, grad = fused(x.copy(order="F"), t, reduction=reduction, grad_output=go, inplace=True)
    np.testing.assert_array_equal(grad, ref_grad)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_and_inf_as_torch(loss, dtype, capability, rng):
    """NaN in gives NaN out, and infinities land where torch puts them."""
    x = make(loss.input_kind, rng, (40,), dtype)
    t = make(loss.target_kind, rng, (40,), dtype)
    if loss.name != "binary_cross_entropy":  # (NaN input is out of BCE's domain)
        x[:6] = [np.nan, np.inf, -np.inf, np.nan, 0.0, 1e18]
    if loss.name != "binary_cross_entropy":  # (nor is a NaN target)
        t[6:10] = [np.nan, np.inf if loss.target_kind == "real" else 0.0, 0.0, np.nan]
    for reduction in ("none", "sum"):
        value, grad = getattr(fl, loss.name + "_and_grad")(x, t, reduction=reduction)
        check_against_torch(TORCH_FN[loss.name], value, grad, x, t, reduction=reduction)


def test_binary_cross_entropy_rejects_input_outside_unit_interval():
    for bad in (-0.1, 1.5, np.nan):
        x = np.array([0.2, bad, 0.5], np.float32)
        saved = x.copy()
        for kwargs in ({}, {"inplace": True}):
            with pytest.raises(ValueError, match="between 0 and 1"):
                fl.binary_cross_entropy_and_grad(x, np.ones(3, np.float32), **kwargs)
            np.testing.assert_array_equal(x, saved)
        with pytest.raises(ValueError, match="between 0 and 1"):
            fl.binary_cross_entropy(x, np.ones(3, np.float32))
        with pytest.raises(ValueError, match="^target: .*between 0 and 1"):
            fl.binary_cross_entropy_and_grad(np.full(3, 0.5, np.float32), x, inplace=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_binary_cross_entropy_counts_values_outside_unit_interval(capability, threads):
    """The message counts every value outside [0, 1], wherever it lies: in a full
    vector, in the tail, in any thread's range; input and target apart."""
    n = 100_003
    x = np.full(n, 0.25, np.float32)
    t = np.full(n, 0.75, np.float32)
    x[[0, 5, 50_000, n - 4, n - 1]] = [1.5, -1.0, 2.0, np.nan, -0.1]
    t[[7, n - 2]] = [3.0, -0.5]
    before = fl.get_num_threads()
    fl.set_num_threads(threads)
    try:
        with pytest.raises(ValueError, match=r"^input: .*\(5 are not\)"):
            fl.binary_cross_entropy_and_grad(x, t)
        x[[0, 5, 50_000, n - 4, n - 1]] = 0.5
        with pytest.raises(ValueError, match=r"^target: .*\(2 are not\)"):
            fl.binary_cross_entropy(x, t)
    finally:
        fl.set_num_threads(before)


def test_binary_cross_entropy_with_logits_is_stable_for_large_logits():
    x = np.array([-200.0, -50.0, 50.0, 200.0, 1e4], np.float32)
    t = np.array([1.0, 1.0, 0.0, 0.0, 1.0], np.float32)
    value, grad = fl.binary_cross_entropy_with_logits_and_grad(x, t, reduction="none")
    np.testing.assert_allclose(value, [200.0, 50.0, 50.0, 200.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [-1.0, -1.0, 1.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_binary_cross_entropy_with_logits_pos_weight_zero_cancels_to_zero(capability, dtype):
    """pos_weight 0 and x << 0: (1 - t) x + (1 - t) softplus(-x), two equal products of
    opposite sign, add up to exactly 0, as torch's (not an FMA's rounding error)."""
    x = np.array([-1e4, -1e10, -3e5, -1e4], dtype)
    t = np.array([0.3, 0.3, 0.7, 0.1], dtype)
    value = fl.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=np.zeros(4, dtype))
    ref = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(t), reduction="none",
                                             pos_weight=torch.zeros(4, dtype=torch.from_numpy(x).dtype))
    np.testing.assert_array_equal(value, ref.numpy())
    np.testing.assert_array_equal(value, 0)


@pytest.mark.parametrize("name,key", [("huber_loss", "delta"), ("smooth_l1_loss", "beta")])
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_infinite_delta_and_beta_as_torch(name, key, dtype, capability, rng):
    """delta / beta = inf, which torch takes: Huber is 0.5 d^2 everywhere, SmoothL1 0.
    (Values whose square overflows float32 are left out: torch's 0.5 d d / beta is
    inf / inf = NaN there.)"""
    x = (rng.standard_normal(50) * 5).astype(dtype)
    t = (rng.standard_normal(50) * 5).astype(dtype)
    loss, grad = getattr(fl, name + "_and_grad")(x, t, reduction="none", **{key: np.inf})
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = getattr(F, name)(xt, torch.from_numpy(t), reduction="none", **{key: np.inf})
    (ref_grad,) = torch.autograd.grad(ref.sum(), xt)
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=4 * np.finfo(dtype).eps)
    with pytest.raises(ValueError, match=key):
        getattr(fl, name)(x, t, **{key: np.nan})
