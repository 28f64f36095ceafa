"""fl.cross_entropy / fl.cross_entropy_and_grad against torch.nn.functional.cross_entropy.

Tolerances: see tests/conftest.py (float64: rtol 1e-10; float32: no worse than 2x
torch's own float32 error against a float64 reference, floor 4 ULP of the magnitude).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from conftest import (
    CAPABILITIES,
    REAL_DTYPES,
    REDUCTIONS,
    assert_matches,
    check_against_torch,
    cross_entropy_inputs,
    forced_capability,
    references,
    upstream_gradient,
)

# name -> (input shape, cross_entropy_inputs options, loss options)
CASES: dict[str, tuple[tuple[int, ...], dict[str, Any], dict[str, Any]]] = {
    "index": ((7, 5), {}, {}),
    "weight": ((7, 5), {"weight": True}, {}),
    "ignore_default": ((9, 5), {"ignore_frac": 0.3}, {}),
    "ignore_valid_class": ((9, 5), {"ignore_frac": 0.3}, {"ignore_index": 2}),
    "smoothing": ((7, 5), {}, {"label_smoothing": 0.1}),
    "smoothing_one": ((7, 5), {}, {"label_smoothing": 1.0}),
    "weight_smoothing_ignore": (
        (11, 13),
        {"weight": True, "ignore_frac": 0.3},
        {"ignore_index": -1, "label_smoothing": 0.2},
    ),
    "probs": ((7, 97), {"probs": True}, {}),
    "probs_weight": ((7, 97), {"probs": True, "weight": True}, {}),
    "probs_smoothing": ((7, 97), {"probs": True}, {"label_smoothing": 0.25}),
    "probs_weight_smoothing": ((7, 33), {"probs": True, "weight": True}, {"label_smoothing": 0.7}),
    "kdim1_weight_smoothing_ignore": (
        (3, 5, 4),
        {"weight": True, "ignore_frac": 0.3},
        {"label_smoothing": 0.15},
    ),
    "kdim2_weight_ignore": ((2, 6, 3, 4), {"weight": True, "ignore_frac": 0.25}, {}),
    "kdim2_probs_weight_smoothing": (
        (2, 6, 3, 4),
        {"probs": True, "weight": True},
        {"label_smoothing": 0.3},
    ),
    "single_row_index": ((5,), {}, {}),
    "single_row_weight_smoothing": ((5,), {"weight": True}, {"label_smoothing": 0.4}),
    "single_row_probs_weight": ((5,), {"probs": True, "weight": True}, {}),
}


def make_case(rng: np.random.Generator, name: str, dtype: Any):
    shape, input_opts, loss_opts = CASES[name]
    x, target, weight = cross_entropy_inputs(
        rng, shape, dtype, ignore_index=loss_opts.get("ignore_index", -100), **input_opts
    )
    return x, target, {"weight": weight, **loss_opts}


def run_and_check(x, target, **kwargs):
    """Forward-only and fused calls; both against torch, inputs left untouched."""
    saved = [a.copy() for a in (x, target, kwargs.get("weight")) if a is not None]
    loss_only = fl.cross_entropy(x, target, **kwargs)
    check_against_torch(F.cross_entropy, loss_only, None, x, target, **kwargs)
    loss, grad = fl.cross_entropy_and_grad(x, target, **kwargs)
    ref = check_against_torch(F.cross_entropy, loss, grad, x, target, **kwargs)
    assert not np.shares_memory(grad, x)
    for before, after in zip(saved, (x, target, kwargs.get("weight"))):
        np.testing.assert_array_equal(after, before, err_msg="an argument was modified")
    return ref


def check_with_grad_output(rng, x, target, weight, reduction, **opts):
    """The fused call with a random grad_output against torch; returns the loss."""
    go = upstream_gradient(rng, target.shape, x.dtype, reduction)
    loss, grad = fl.cross_entropy_and_grad(x, target, weight=weight, reduction=reduction,
                                           grad_output=go, **opts)
    check_against_torch(F.cross_entropy, loss, grad, x, target, weight=weight,
                        reduction=reduction, grad_output=go, **opts)
    return loss


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_matches_torch(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    run_and_check(x, target, reduction=reduction, **opts)


@pytest.mark.parametrize(
    "target_dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint64]
)
def test_any_integer_target_dtype(capability, rng, target_dtype):
    signed = np.issubdtype(target_dtype, np.signedinteger)
    x, target, weight = cross_entropy_inputs(
        rng,
        (13, 7),
        np.float64,
        weight=True,
        target_dtype=target_dtype,
        ignore_index=-1,
        ignore_frac=0.3 if signed else 0.0,
    )
    assert target.dtype == target_dtype
    run_and_check(x, target, weight=weight, ignore_index=-1, label_smoothing=0.1)


# Class counts around every vector width (4, 8, 16 lanes) and unroll factor, so the
# vector main loop and the scalar tail both run.
@pytest.mark.parametrize("classes", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_class_counts(capability, rng, dtype, classes):
    x, target, weight = cross_entropy_inputs(
        rng, (6, classes), dtype, weight=True, ignore_frac=0.2
    )
    run_and_check(x, target, weight=weight, label_smoothing=0.05, reduction="mean")


# Index-target rows of up to 8 KiB take blocks of rows (the kernel's rows_medium)
# past the small rows' 16 vectors (64 floats on the baseline, 128 on AVX2, 256 on
# AVX-512): lengths around those and the 8 KiB bound, 37 rows (several blocks and a
# partial one), some ignored, with and without class weights, label smoothing and a
# per-position grad_output; NaN, +inf and all -inf rows.
@pytest.mark.parametrize("classes", [65, 129, 136, 257, 1000, 1024, 1025, 2047, 2048, 2049])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_medium_rows(capability, rng, dtype, reduction, weighted, smoothing, classes):
    x, target, weight = cross_entropy_inputs(rng, (37, classes), dtype, weight=weighted,
                                             ignore_frac=0.2)
    opts = {"reduction": reduction, "weight": weight, "label_smoothing": smoothing}
    run_and_check(x, target, **opts)
    loss = check_with_grad_output(rng, x, target, **opts)
    np.testing.assert_array_equal(fl.cross_entropy(x, target, **opts), loss,
                                  err_msg="the loss alone differs from the fused call's")
    x[3, 5] = np.nan
    x[20, classes - 1] = np.inf
    x[33] = -np.inf
    target[[3, 20, 33]] = 0
    run_and_check(x, target, reduction="none", label_smoothing=smoothing)
    loss, grad = fl.cross_entropy_and_grad(x, target, **opts)
    overwritten = x.copy()
    loss_inplace, _ = fl.cross_entropy_and_grad(overwritten, target, inplace=True, **opts)
    np.testing.assert_array_equal(overwritten, grad)
    np.testing.assert_array_equal(loss_inplace, loss)


@pytest.mark.parametrize("shape", [(6, 1), (3, 1, 5), (2, 1, 70)], ids=["rows", "columns", "tiles"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_one_class_gradient_is_exactly_zero(capability, rng, dtype, reduction, weighted,
                                            smoothing, shape):
    """One class: softmax is 1 and the target term 1, so torch's gradient is exactly 0;
    the target lane's coefficient is formed as p's is, so ours is too (it was
    -2^-59 with label smoothing and a weight: two roundings that differed)."""
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    target = np.zeros((shape[0], *shape[2:]), np.int64)
    weight = np.array([0.7848364], dtype) if weighted else None
    go = upstream_gradient(rng, target.shape, dtype, reduction)
    _, grad = fl.cross_entropy_and_grad(x, target, weight=weight, reduction=reduction,
                                        label_smoothing=smoothing, grad_output=go)
    xt = torch.from_numpy(x).requires_grad_()
    loss = F.cross_entropy(xt, torch.from_numpy(target), None if weight is None else
                           torch.from_numpy(weight), reduction=reduction, label_smoothing=smoothing)
    loss.backward(torch.from_numpy(go))
    assert (xt.grad.numpy() == 0).all()
    np.testing.assert_array_equal(grad, np.zeros_like(x))


# K-dim input is vectorised along the inner (d1*...*dk) axis: exercise its tails too.
@pytest.mark.parametrize("inner", [1, 2, 3, 7, 8, 9, 15, 16, 17, 33])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_inner_sizes(capability, rng, dtype, inner):
    x, target, weight = cross_entropy_inputs(
        rng, (3, 5, inner), dtype, weight=True, ignore_frac=0.2
    )
    run_and_check(x, target, weight=weight, label_smoothing=0.05, reduction="none")


# Whole column tiles (64 positions and more along inner) take a lean loop when the
# targets are indices and no smoothing or LLM option is set: weights, ignore_index,
# every reduction and a per-position grad_output on it, and a NaN logit, which sends
# its tile back to the general loop (csrc/fusedloss/cross_entropy_columns.h).
@pytest.mark.parametrize("inner", [64, 65, 130, 200])
@pytest.mark.parametrize("classes", [1, 5, 21])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_whole_column_tiles(capability, rng, dtype, reduction, classes, inner):
    x, target, weight = cross_entropy_inputs(
        rng, (2, classes, inner), dtype, weight=True, ignore_frac=0.2
    )
    for w in (None, weight):
        run_and_check(x, target, weight=w, reduction=reduction)
    check_with_grad_output(rng, x, target, weight, reduction)
    # (at a position that is not ignored: an ignored one's gradient is 0 here, NaN in
    # torch, test_edge_numerics' known deviation)
    x[1, classes // 2, np.flatnonzero(target[1] != -100)[-1]] = np.nan
    run_and_check(x, target, reduction=reduction)


# A representative of each target kind and rank, for the tests of the gradient options.
GRAD_CASES = [
    "weight_smoothing_ignore",
    "probs_weight_smoothing",
    "kdim2_weight_ignore",
    "single_row_index",
]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_grad_output_array(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    loss_shape = np.asarray(fl.cross_entropy(x, target, reduction="none", **opts)).shape
    gout = upstream_gradient(rng, loss_shape, dtype, reduction)
    loss, grad = fl.cross_entropy_and_grad(
        x, target, reduction=reduction, grad_output=gout, **opts
    )
    check_against_torch(
        F.cross_entropy, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts
    )


@pytest.mark.parametrize("gout", [0.0, -1.5, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_grad_output_python_float(rng, dtype, reduction, gout):
    x, target, opts = make_case(rng, "weight_smoothing_ignore", dtype)
    loss, grad = fl.cross_entropy_and_grad(
        x, target, reduction=reduction, grad_output=gout, **opts
    )
    check_against_torch(
        F.cross_entropy, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts
    )


@pytest.mark.parametrize("destination", ["out", "inplace"])
@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_gradient_destination(capability, rng, dtype, reduction, case, destination):
    # out=: the gradient lands in the caller's buffer (returned as is), input untouched.
    # inplace=True: input is overwritten by its gradient; the loss is that of the
    # logits as they were, so the reference is taken on a copy of them.
    x, target, opts = make_case(rng, case, dtype)
    x_before = x.copy()
    if destination == "inplace":
        buffer = x.copy()
        loss, grad = fl.cross_entropy_and_grad(
            buffer, target, reduction=reduction, inplace=True, **opts
        )
        assert grad is buffer or np.shares_memory(grad, buffer)
    else:
        buffer = np.full_like(x, np.nan)
        loss, grad = fl.cross_entropy_and_grad(x, target, reduction=reduction, out=buffer, **opts)
        assert grad is buffer
    np.testing.assert_array_equal(x, x_before)
    check_against_torch(F.cross_entropy, loss, grad, x, target, reduction=reduction, **opts)
    np.testing.assert_array_equal(buffer, np.asarray(grad).reshape(buffer.shape))


def _noncontiguous(x: np.ndarray, target: np.ndarray, layout: str):
    """The same kind of data as (x, target), laid out without C-contiguity."""
    if layout == "transposed":  # (N, C) as the transpose of a C-contiguous (C, N)
        return np.ascontiguousarray(x.T).T, target
    if layout == "step":
        return x[::2, ::3], target[::2]
    if layout == "negative":
        return x[::-1, ::-1], target[::-1]
    if layout == "fortran":
        return np.asfortranarray(x), np.asfortranarray(target)
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["transposed", "step", "negative"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_noncontiguous_2d(capability, rng, dtype, reduction, layout):
    x, target, weight = cross_entropy_inputs(rng, (14, 24), dtype, weight=True, ignore_frac=0.2)
    if layout == "step":
        # Sliced targets must still index the sliced classes; the weight is sliced too.
        target = np.where(target >= 0, target % 8, target)
        weight = weight[::3]
    elif layout == "negative":
        weight = weight[::-1]
    x, target = _noncontiguous(x, target, layout)
    assert not x.flags.c_contiguous
    run_and_check(x, target, weight=weight, reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_noncontiguous_kdim(capability, rng, dtype, probs):
    x, target, weight = cross_entropy_inputs(
        rng, (3, 5, 4, 6), dtype, probs=probs, weight=True, ignore_frac=0.2
    )
    # Fortran order keeps the shape but reverses every stride.
    x, target = _noncontiguous(x, target, "fortran")
    assert not x.flags.c_contiguous
    run_and_check(x, target, weight=weight, reduction="mean", label_smoothing=0.2)


@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (2, 5, 0)])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_empty_batch(capability, rng, dtype, reduction, probs, shape):
    # torch: mean over zero elements is NaN, sum is 0, none an empty array; grad empty.
    x, target, weight = cross_entropy_inputs(rng, shape, dtype, probs=probs, weight=True)
    ref = run_and_check(x, target, weight=weight, reduction=reduction, label_smoothing=0.1)
    if reduction == "mean":
        assert np.isnan(ref.loss)


@pytest.mark.parametrize("opts", [{}, {"weight": True}, {"weight": True, "label_smoothing": 0.3}])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_all_targets_ignored(capability, rng, dtype, reduction, opts):
    # torch: mean -> NaN loss (0/0) but an all-zero gradient; sum -> 0.
    opts = dict(opts)
    x, target, weight = cross_entropy_inputs(
        rng, (6, 5, 3), dtype, weight=opts.pop("weight", False), ignore_frac=1.0
    )
    assert (target == -100).all()
    ref = run_and_check(x, target, weight=weight, reduction=reduction, **opts)
    if reduction == "mean":
        assert np.isnan(ref.loss)


@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_neg_inf_logits_off_target(capability, rng, dtype, reduction, weight):
    # Masked vocabularies: -inf logits on non-target classes give finite loss and a
    # zero gradient there, never NaN (exp(-inf - max) must be 0, not inf - inf).
    x, target, w = cross_entropy_inputs(rng, (9, 37), dtype, weight=weight, ignore_frac=0.2)
    mask = rng.random(x.shape) < 0.5
    mask[np.arange(9), np.where(target >= 0, target, 0)] = False
    x[mask] = -np.inf
    x[0, 1:] = -np.inf  # one row with a single finite logit, its target
    x[0, 0] = 1.5
    target[0] = 0
    ref = run_and_check(x, target, weight=w, reduction=reduction)
    assert np.isfinite(ref.loss).all() and np.isfinite(ref.grad).all()


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_large_logits(capability, rng, dtype, reduction, offset, probs):
    # Logits of magnitude 30..1000, for index targets the largest logit (a trained
    # model). Softmax is shift-invariant: the error must not grow with the offset, as
    # it does when log p = x - (max + log sum) is formed in float32 (rounding at the
    # magnitude of max) instead of (x - max) - log sum. torch float32 stays ~1 ULP of 1.
    x = (rng.standard_normal((64, 50)) * 30 + offset).astype(dtype)
    if probs:
        p = rng.random(x.shape)
        target = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = x.argmax(axis=1)
        target[::2] = rng.integers(0, 50, 32)  # and some ordinary rows
    run_and_check(x, target, reduction=reduction)


# -------------------------------------------------------------- real (large) shapes


@pytest.fixture(scope="module")
def large_vocab_case():
    """LLM-like rows: C >= 32000 with smoothing and ignored targets, float32."""
    rng = np.random.default_rng(32003)
    x, target, weight = cross_entropy_inputs(rng, (48, 32003), np.float32, ignore_frac=0.1)
    opts = {"label_smoothing": 0.1, "reduction": "mean"}
    return x, target, opts, references(F.cross_entropy, x, target, **opts)


@pytest.fixture(scope="module")
def large_batch_case():
    """N * C >= 10^7 elements, float32, reduction sum with a scalar grad_output."""
    rng = np.random.default_rng(10**7)
    x, target, _ = cross_entropy_inputs(rng, (313, 32001), np.float32, ignore_frac=0.05)
    opts = {"reduction": "sum", "grad_output": np.float32(0.5)}
    assert x.size >= 10**7
    return x, target, opts, references(F.cross_entropy, x, target, **opts)


@pytest.fixture(scope="module")
def huge_row_case():
    """Few rows with a huge C: the kernel may split a row across threads."""
    rng = np.random.default_rng(2**20)
    x, target, _ = cross_entropy_inputs(rng, (2, 2**20 + 3), np.float32)
    opts = {"reduction": "none", "label_smoothing": 0.05}
    return x, target, opts, references(F.cross_entropy, x, target, **opts)


@pytest.mark.parametrize("case", ["large_vocab_case", "large_batch_case", "huge_row_case"])
def test_real_shapes(capability, request, case):
    x, target, opts, (wide, low) = request.getfixturevalue(case)
    loss, grad = fl.cross_entropy_and_grad(x, target, **opts)
    assert_matches(loss, wide.loss, low.loss, x.dtype, "loss")
    assert_matches(grad, wide.grad, low.grad, x.dtype, "grad")


# ------------------------------------------------------------- threads, capability


def test_num_threads_roundtrip_and_results(large_vocab_case):
    x, target, opts, (wide, low) = large_vocab_case
    before = fl.get_num_threads()
    assert isinstance(before, int) and before >= 1
    try:
        for threads in (1, 2, 3):
            fl.set_num_threads(threads)
            assert fl.get_num_threads() == threads
            loss, grad = fl.cross_entropy_and_grad(x, target, **opts)
            assert_matches(loss, wide.loss, low.loss, x.dtype, f"loss, {threads} threads")
            assert_matches(grad, wide.grad, low.grad, x.dtype, f"grad, {threads} threads")
    finally:
        fl.set_num_threads(before)
    assert fl.get_num_threads() == before


def test_cpu_capability_reports_forced_path(capability):
    assert fl.cpu_capability() == capability


def test_capabilities_start_with_baseline():
    assert CAPABILITIES[0] == "baseline"
    with forced_capability(CAPABILITIES[-1]):
        assert fl.cpu_capability() == CAPABILITIES[-1]


@pytest.mark.parametrize("ignore_index", [0, 1, 7])
def test_ignore_index_with_probabilities_is_rejected_as_in_torch(ignore_index) -> None:
    """torch raises for an ignore_index >= 0 (one that could name a class) with
    class-probability targets."""
    x = np.zeros((3, 4), np.float32)
    probs = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(RuntimeError, match="ignore_index"):
        F.cross_entropy(torch.from_numpy(x), torch.from_numpy(probs), ignore_index=ignore_index)
    for fn in (fl.cross_entropy, fl.cross_entropy_and_grad):
        with pytest.raises(ValueError, match="ignore_index"):
            fn(x, probs, ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [-100, -1, -(2**63)])
def test_negative_ignore_index_with_probabilities_ignores_nothing(rng, ignore_index) -> None:
    """A negative ignore_index names no class: torch accepts it with probability
    targets and ignores nothing (soft labels beside ignore_index=-1, a common setup)."""
    x, probs, _ = cross_entropy_inputs(rng, (5, 7), np.float64, probs=True)
    run_and_check(x, probs, ignore_index=ignore_index, reduction="mean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_input_takes_a_one_element_target(rng, reduction) -> None:
    """(C,) input with a (1,) target, as torch (and fl.nll_loss) accept: the same
    as the 0-d target."""
    x = rng.standard_normal(6)
    want = fl.cross_entropy_and_grad(x, np.array(4), reduction=reduction)
    got = fl.cross_entropy_and_grad(x, np.array([4]), reduction=reduction)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    ref = F.cross_entropy(torch.from_numpy(x), torch.tensor([4]), reduction=reduction)
    assert np.isclose(got[0], ref.item(), rtol=1e-12) and np.shape(got[0]) == tuple(ref.shape)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5)], ids=["rows", "columns"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_finite_weight_of_an_untargeted_class_stays_there(rng, reduction, bad, shape) -> None:
    """Without smoothing, a class's weight reaches only the rows that target it:
    a NaN or inf weight of a class no row targets leaves every gradient finite, as
    torch's (the weights' sum, used by smoothing alone, had spread it as 0 * NaN)."""
    x = rng.standard_normal(shape)
    target = np.zeros((shape[0], *shape[2:]), np.int64)
    target[1] = 1
    target[2] = 3
    w = np.ones(4)
    w[2] = bad
    run_and_check(x, target, weight=w, reduction=reduction)
    _, grad = fl.cross_entropy_and_grad(x, target, weight=w, reduction=reduction)
    assert np.isfinite(grad).all()


# ------------------------------------------------------------ long sums stay accurate


def _rel_error(got: Any, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


LONG_SUMS = {
    # (logits, target kind, label_smoothing): sums over C of equal terms, the worst
    # case for a running float sum (zero logits), and a long probability target.
    "kdim_C32000_zero_smoothing1": (lambda r: np.zeros((2, 32000, 4), np.float32), "index", 1.0),
    "kdim_C32000_zero_smoothing0.1": (lambda r: np.zeros((2, 32000, 4), np.float32), "index", 0.1),
    "kdim_C100003_probs": (lambda r: (r.standard_normal((1, 100003, 16)) * 10).astype(np.float32),
                           "probs", 0.0),
    "rows_C8191_zero_smoothing1": (lambda r: np.zeros((8, 8191), np.float32), "index", 1.0),
    "rows_C50257_probs": (lambda r: r.standard_normal((4, 50257)).astype(np.float32), "probs", 0.0),
}


@pytest.mark.parametrize("case", list(LONG_SUMS), ids=list(LONG_SUMS))
def test_long_class_sums_as_accurate_as_torch(capability, case):
    """Per-position float32 losses against float64 torch: no worse than torch's own
    float32 result plus one float32 ULP (6e-8). Running float sums over C lost up
    to 1e-4 here (label smoothing, C = 32000)."""
    rng = np.random.default_rng(11)
    make, kind, smoothing = LONG_SUMS[case]
    x = make(rng)
    classes = x.shape[1]
    if kind == "index":
        t = rng.integers(0, classes, (x.shape[0],) + x.shape[2:])
        tt64 = tt32 = torch.from_numpy(t)
    else:
        t = rng.random(x.shape).astype(np.float32)
        t /= t.sum(1, keepdims=True)
        tt64, tt32 = torch.from_numpy(t).double(), torch.from_numpy(t)
    ref = F.cross_entropy(torch.from_numpy(x).double(), tt64, reduction="none",
                          label_smoothing=smoothing).numpy()
    torch32 = F.cross_entropy(torch.from_numpy(x), tt32, reduction="none",
                              label_smoothing=smoothing).numpy()
    ours = fl.cross_entropy(x, t, reduction="none", label_smoothing=smoothing)
    assert _rel_error(ours, ref) <= _rel_error(torch32, ref) + 6e-8


@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean"])
def test_float64_reductions_over_many_positions(reduction):
    """float64 sum / mean / weighted mean over 1e6 positions against an exact
    (sorted long double) sum of long-double per-position losses: within 4e-16
    relative, torch's accuracy (one running sum was 2e-14, and 8e-12 for the
    weighted mean's denominator)."""
    rng = np.random.default_rng(5)
    n, classes = 1_000_000, 3
    x = rng.standard_normal((n, classes)) * 100
    t = rng.integers(0, classes, n)
    w = rng.random(classes)
    xl = x.astype(np.longdouble)
    top = xl.max(1, keepdims=True)
    per = np.log(np.exp(xl - top).sum(1)) + top[:, 0] - xl[np.arange(n), t]
    if reduction == "weighted_mean":
        wt = w.astype(np.longdouble)[t]
        ref = np.sum(np.sort(per * wt)) / np.sum(np.sort(wt))
        got = fl.cross_entropy(x, t, weight=w, reduction="mean")
    else:
        ref = np.sum(np.sort(per)) / (n if reduction == "mean" else 1)
        got = fl.cross_entropy(x, t, reduction=reduction)
    assert abs(float((np.longdouble(got) - ref) / ref)) <= 4e-16


@pytest.mark.parametrize("upstream", [2.5, np.float32(2.5), np.float64(2.5), np.array(2.5, np.float32)])
def test_unreduced_scalar_loss_takes_a_number_as_grad_output(upstream):
    """reduction='none' on one (C,) sample gives a 0-d loss: a number (what 2 * loss
    is in NumPy) is a grad_output of its shape, as a 0-d array is."""
    x = np.random.default_rng(3).standard_normal(7).astype(np.float32)
    t = np.array(4)
    _, grad = fl.cross_entropy_and_grad(x, t, reduction="none", grad_output=upstream)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    F.cross_entropy(xt, torch.tensor(4), reduction="none").backward(torch.tensor(2.5, dtype=torch.float64))
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-7)
    a, b = x[:1].reshape(()), x[1:2].reshape(())  # 0-d arrays: a 0-d unreduced loss
    _, mse_grad = fl.mse_loss_and_grad(a, b, reduction="none", grad_output=upstream)
    np.testing.assert_allclose(mse_grad, 2.5 * 2 * (a - b), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float16_loss_overflow_is_inf_without_warning(reduction):
    """A float16 loss beyond 65504 is inf, as torch gives it, and raises no NumPy
    overflow warning (the narrowing from the float32 accumulator is expected)."""
    import warnings

    x = np.array([[60000.0, -60000.0]], np.float16)
    t = np.array([1])
    expected = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), reduction=reduction).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = fl.cross_entropy(x, t, reduction=reduction)
        loss2, _ = fl.cross_entropy_and_grad(x, t, reduction=reduction)
    np.testing.assert_array_equal(loss, expected)
    np.testing.assert_array_equal(loss2, expected)
    assert np.asarray(loss).dtype == np.float16
    # MSE / L1 narrow their loss the same way: 600^2 and 120000 overflow float16
    # (every element, so that the mean overflows too)
    overflowing = {"mse_loss": (300.0, -300.0), "l1_loss": (60000.0, -60000.0)}
    for name, (high, low) in overflowing.items():
        a, b = np.full(2, high, np.float16), np.full(2, low, np.float16)
        ref = getattr(F, name)(torch.from_numpy(a), torch.from_numpy(b), reduction=reduction).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = getattr(fl, name)(a, b, reduction=reduction)
            got2, _ = getattr(fl, f"{name}_and_grad")(a, b, reduction=reduction)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got2, ref)
