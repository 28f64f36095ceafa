"""fl.nll_loss / fl.nll_loss_and_grad against torch.nn.functional.nll_loss.

Tolerances: tests/conftest.py (float32, float64) and tests/class_loss_checks.py
(float16). The input values are arbitrary reals (nll only reads them), drawn as
cross-entropy logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fusedloss as fl
from class_loss_checks import (
    DRAWN,
    DTYPES,
    check,
    check_drawn,
    draw_call_options,
    restore_threads,  # noqa: F401 (fixture)
    run_and_check,
    same_bits_for_any_thread_count,
    upstream,
)
from conftest import REDUCTIONS, cross_entropy_inputs

NAME = "nll_loss"

# name -> (input shape, cross_entropy_inputs options, loss options)
CASES: dict[str, tuple[tuple[int, ...], dict[str, Any], dict[str, Any]]] = {
    "index": ((7, 5), {}, {}),
    "weight": ((7, 5), {"weight": True}, {}),
    "ignore_default": ((9, 5), {"ignore_frac": 0.3}, {}),
    "ignore_valid_class": ((9, 5), {"ignore_frac": 0.3}, {"ignore_index": 2}),
    "weight_ignore": ((11, 13), {"weight": True, "ignore_frac": 0.3}, {"ignore_index": -1}),
    "kdim1_weight_ignore": ((3, 5, 4), {"weight": True, "ignore_frac": 0.3}, {}),
    "kdim2_weight_ignore": ((2, 6, 3, 4), {"weight": True, "ignore_frac": 0.25}, {}),
    "kdim3": ((2, 3, 2, 3, 5), {}, {}),
    "single_row": ((5,), {}, {}),
    "single_row_weight": ((5,), {"weight": True}, {}),
    "single_row_ignored": ((5,), {"ignore_frac": 1.0}, {}),
}


def make_case(rng: np.random.Generator, name: str, dtype: Any):
    shape, input_opts, loss_opts = CASES[name]
    x, target, weight = cross_entropy_inputs(
        rng, shape, dtype, ignore_index=loss_opts.get("ignore_index", -100), **input_opts
    )
    return x, target, {"weight": weight, **loss_opts}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    run_and_check(NAME, x, target, reduction=reduction, **opts)


@pytest.mark.parametrize(
    "target_dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint64]
)
def test_any_integer_target_dtype(rng, target_dtype):
    signed = np.issubdtype(target_dtype, np.signedinteger)
    x, target, weight = cross_entropy_inputs(
        rng, (13, 7), np.float64, weight=True, target_dtype=target_dtype, ignore_index=-1,
        ignore_frac=0.3 if signed else 0.0,
    )
    run_and_check(NAME, x, target, weight=weight, ignore_index=-1)


def test_single_sample_target_may_be_shaped_1(rng):
    # torch takes a (1,) target for a (C,) input, as a 0-d one; the loss is 0-d.
    x = rng.standard_normal(6)
    for reduction in REDUCTIONS:
        loss, grad = fl.nll_loss_and_grad(x, np.array([4]), reduction=reduction)
        check(NAME, loss, grad, x, np.array(4), reduction=reduction)


# Rows: the gradient is swept as one flat run of vectors across rows, so class
# counts around every vector width (4, 8, 16 lanes) put targets in every lane,
# several rows in one vector, and rows across vector boundaries.
@pytest.mark.parametrize("classes", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129])
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_counts(capability, rng, dtype, classes):
    x, target, weight = cross_entropy_inputs(rng, (11, classes), dtype, weight=True,
                                             ignore_frac=0.2)
    run_and_check(NAME, x, target, weight=weight, reduction="mean")


# K-dim: tiles of 64 inner positions; their tails too.
@pytest.mark.parametrize("inner", [2, 3, 7, 8, 9, 17, 63, 64, 65, 130])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inner_sizes(capability, rng, dtype, inner):
    x, target, weight = cross_entropy_inputs(rng, (3, 5, inner), dtype, weight=True,
                                             ignore_frac=0.2)
    run_and_check(NAME, x, target, weight=weight, reduction="none")


GRAD_CASES = ["weight_ignore", "kdim2_weight_ignore", "single_row_weight"]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_output_array(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    loss_shape = np.asarray(fl.nll_loss(x, target, reduction="none", **opts)).shape
    gout = upstream(rng, loss_shape, dtype, reduction)
    loss, grad = fl.nll_loss_and_grad(x, target, reduction=reduction, grad_output=gout, **opts)
    check(NAME, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts)


@pytest.mark.parametrize("gout", [0.0, -1.5, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_python_number(rng, reduction, gout):
    x, target, opts = make_case(rng, "weight_ignore", np.float32)
    loss, grad = fl.nll_loss_and_grad(x, target, reduction=reduction, grad_output=gout, **opts)
    check(NAME, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts)


@pytest.mark.parametrize("destination", ["out", "inplace", "out_strided", "inplace_strided"])
@pytest.mark.parametrize("case", GRAD_CASES + ["index"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_destination(capability, rng, dtype, reduction, case, destination):
    # out=: the gradient lands in the caller's buffer (returned as is), input untouched.
    # inplace=True: input is overwritten by its gradient (the kernel reads each
    # target's value before the vector holding it is written); the loss is that of
    # the values as they were, so the reference is taken on a copy of them.
    x, target, opts = make_case(rng, case, dtype)
    x_before = x.copy()
    strided = destination.endswith("strided")
    if destination.startswith("inplace"):
        buffer = np.repeat(x, 2, axis=-1)[..., ::2] if strided else x.copy()
        loss, grad = fl.nll_loss_and_grad(buffer, target, reduction=reduction, inplace=True,
                                          **opts)
        assert grad is buffer
    else:
        buffer = np.full(x.shape + (2,), np.nan, dtype)[..., 0] if strided else np.full_like(
            x, np.nan)
        loss, grad = fl.nll_loss_and_grad(x, target, reduction=reduction, out=buffer, **opts)
        assert grad is buffer
    np.testing.assert_array_equal(x, x_before)
    check(NAME, loss, grad, x, target, reduction=reduction, **opts)


@pytest.mark.parametrize("layout", ["transposed", "step", "negative", "step_kdim"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous(capability, rng, dtype, reduction, layout):
    if layout == "step_kdim":
        # (Not Fortran order: torch's own K-dim backward then fails, "grad_input must
        # be contiguous".)
        x, target, weight = cross_entropy_inputs(rng, (3, 5, 8, 6), dtype, weight=True,
                                                 ignore_frac=0.2)
        x, target = x[:, :, ::2, 1:], target[:, ::2, 1:]
    else:
        x, target, weight = cross_entropy_inputs(rng, (14, 24), dtype, weight=True,
                                                 ignore_frac=0.2)
        if layout == "transposed":
            x = np.ascontiguousarray(x.T).T
        elif layout == "step":
            x, target, weight = x[::2, ::3], np.where(target >= 0, target % 8, target)[::2], \
                weight[::3]
        else:
            x, target, weight = x[::-1, ::-1], target[::-1], weight[::-1]
    assert not x.flags.c_contiguous
    run_and_check(NAME, x, target, weight=weight, reduction=reduction)


@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (2, 5, 0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_input(capability, rng, dtype, reduction, shape):
    # torch: mean over nothing is NaN, sum 0, none an empty array; the gradient empty.
    x, target, weight = cross_entropy_inputs(rng, shape, dtype, weight=True)
    ref = run_and_check(NAME, x, target, weight=weight, reduction=reduction)
    if reduction == "mean":
        assert np.isnan(ref.loss)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3), (5,)])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_targets_ignored(capability, rng, dtype, reduction, weight, shape):
    # torch: mean -> NaN loss (0/0) with an all-zero gradient; sum -> 0.
    x, target, w = cross_entropy_inputs(rng, shape, dtype, weight=weight, ignore_frac=1.0)
    assert (target == -100).all()
    ref = run_and_check(NAME, x, target, weight=w, reduction=reduction)
    if reduction == "mean":
        assert np.isnan(ref.loss) and not ref.grad.any()


@pytest.mark.parametrize(
    "weight,target",
    [
        ([0.0, 0.0, 1.0], [0, 1, 0, -100]),  # nothing weighed: mean 0/0 = NaN, NaN gradient
        ([1.0, 0.0, -1.0], [0, 2, 1, 1]),  # weights that cancel: +-inf
        ([2.0, 0.5, 1.0], [2, 2, 2, 2]),
    ],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_and_cancelling_weights(capability, dtype, reduction, weight, target):
    x = np.array([[0.5, -1.5, 2.0], [1.0, 2.0, 3.0], [-0.25, 4.0, 1.0], [3.0, -2.0, 0.5]],
                 dtype)
    run_and_check(NAME, x, np.array(target), weight=np.array(weight, dtype), reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_input(capability, dtype, reduction):
    # NaN / inf at a target propagate into its loss; elsewhere (and at ignored
    # positions) they are not read. The gradient does not depend on the values.
    x = np.zeros((5, 4), dtype)
    x[0, 1], x[1, 2], x[2, 0], x[3, 3], x[4, :] = np.nan, np.inf, -np.inf, np.nan, np.nan
    target = np.array([1, 2, 0, 1, -100])
    run_and_check(NAME, x, target, reduction=reduction)
    run_and_check(NAME, x[3:], target[3:], reduction=reduction)  # the NaNs are not targets


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape,target,ignore_index",
    [
        ((3, 4), [0, 4, 1], -100),
        ((3, 4), [0, -1, 1], -100),
        ((3, 4), [0, -100, 2], 1),
        ((2, 4, 3), [[0, 1, 2], [3, 9, 0]], -100),
        ((4,), 7, -100),
        ((3, 0), [0, 0, 0], -100),
    ],
)
def test_target_out_of_range_raises_index_error_before_writing(capability, shape, target,
                                                               ignore_index):
    x = np.ones(shape, np.float32)
    t = np.array(target)
    with pytest.raises(IndexError):
        F.nll_loss(torch.from_numpy(x), torch.from_numpy(t), ignore_index=ignore_index)
    out = np.full(shape, 7.0, np.float32)
    for call in (
        lambda: fl.nll_loss(x, t, ignore_index=ignore_index),
        lambda: fl.nll_loss_and_grad(x, t, ignore_index=ignore_index, out=out),
        lambda: fl.nll_loss_and_grad(x, t, ignore_index=ignore_index, inplace=True),
    ):
        with pytest.raises(IndexError, match="target"):
            call()
    assert (out == 7).all() and (x == 1).all()


BAD = {
    "0-d input": (lambda x, t: (np.ones((), np.float32), np.array(0)), {}, ValueError,
                  "input"),
    "int input": (lambda x, t: (x.astype(np.int64), t), {}, TypeError, "input"),
    "list input": (lambda x, t: (x.tolist(), t), {}, TypeError, "input"),
    "complex input": (lambda x, t: (x.astype(np.complex64), t), {}, TypeError, "input"),
    "float target": (lambda x, t: (x, t.astype(np.float32)), {}, TypeError, "target"),
    "bool target": (lambda x, t: (x, t > 0), {}, TypeError, "target"),
    "target shape": (lambda x, t: (x, t[:2]), {}, ValueError, "target"),
    "target list": (lambda x, t: (x, t.tolist()), {}, TypeError, "target"),
    "weight length": (lambda x, t: (x, t), {"weight": np.ones(5)}, ValueError, "weight"),
    "weight complex": (lambda x, t: (x, t), {"weight": np.ones(4, np.complex64)}, TypeError,
                       "weight"),
    "reduction": (lambda x, t: (x, t), {"reduction": "avg"}, ValueError, "reduction"),
    "ignore_index float": (lambda x, t: (x, t), {"ignore_index": 1.5}, TypeError, "ignore_index"),
    "ignore_index bool": (lambda x, t: (x, t), {"ignore_index": True}, TypeError, "ignore_index"),
    "ignore_index huge": (lambda x, t: (x, t), {"ignore_index": 2**64}, ValueError,
                          "ignore_index"),
}
BAD_GRAD = {
    "grad_output shape": ({"reduction": "none", "grad_output": np.ones(4)}, ValueError,
                          "grad_output"),
    "grad_output array for mean": ({"grad_output": np.ones(3)}, ValueError, "grad_output"),
    "grad_output bool": ({"grad_output": True}, TypeError, "grad_output"),
    "out dtype": ({"out": np.empty((3, 4), np.float64)}, TypeError, "out"),
    "out shape": ({"out": np.empty((4, 3), np.float32)}, ValueError, "out"),
    "out read-only": ({"out": np.broadcast_to(np.float32(0), (3, 4))}, ValueError, "out"),
    "out and inplace": ({"out": np.empty((3, 4), np.float32), "inplace": True}, ValueError,
                        "out"),
    "inplace not bool": ({"inplace": "yes"}, TypeError, "inplace"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_the_argument(case):
    make, kwargs, error, name = BAD[case]
    x, t = make(np.zeros((3, 4), np.float32), np.array([0, 1, 3]))
    for fn in (fl.nll_loss, fl.nll_loss_and_grad):
        with pytest.raises(error, match=name):
            fn(x, t, **kwargs)


@pytest.mark.parametrize("case", list(BAD_GRAD), ids=list(BAD_GRAD))
def test_bad_gradient_arguments_name_the_argument(case):
    kwargs, error, name = BAD_GRAD[case]
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(error, match=name):
        fl.nll_loss_and_grad(x, np.array([0, 1, 3]), **kwargs)
    assert not x.any()


def test_out_overlapping_input_is_rejected():
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match="out"):
        fl.nll_loss_and_grad(x[:, :4], np.array([0, 1, 3]), out=x[:, 4:])


# ------------------------------------------------------ big inputs, threads, paths


@pytest.mark.slow
@pytest.mark.parametrize("inplace", [False, True])
def test_streamed_gradient(capability, restore_threads, inplace):
    """A gradient beyond the caches (>= 64 MiB: non-temporal stores, rows off the
    vector grid) against its exact float64 value, -w[t] * grad_output / sum(w[t])."""
    rows, classes = 1023, 16411  # 67 MB of float32, odd row length
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    target = rng.integers(0, classes, rows)
    target[::7] = -100
    weight = (rng.random(classes) + 0.5).astype(np.float32)
    kept = target != -100
    wt = np.where(kept, weight[np.where(kept, target, 0)].astype(np.float64), 0.0)
    xt = x[np.arange(rows), np.where(kept, target, 0)].astype(np.float64)
    expected_loss = -(wt * xt).sum() / wt.sum()
    expected = np.zeros((rows, classes), np.float32)
    expected[np.arange(rows)[kept], target[kept]] = -(wt[kept] * 0.5 / wt.sum())
    for threads in (1, 2):
        fl.set_num_threads(threads)
        buffer = x.copy() if inplace else np.empty_like(x)
        kwargs = {"inplace": True} if inplace else {"out": buffer}
        source = buffer if inplace else x
        loss, grad = fl.nll_loss_and_grad(source, target, weight=weight, grad_output=0.5,
                                          **kwargs)
        assert grad is buffer
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
        np.testing.assert_array_equal(grad == 0, expected == 0)
        np.testing.assert_allclose(grad, expected, rtol=2e-7, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(512, 4096), (8, 21, 64, 64), (4097,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_for_any_thread_count(restore_threads, dtype, shape, reduction):
    rng = np.random.default_rng(sum(shape))
    x, target, weight = cross_entropy_inputs(rng, shape, dtype, weight=True, ignore_frac=0.1)
    go = upstream(rng, np.asarray(fl.nll_loss(x, target, reduction="none")).shape, dtype,
                  reduction)
    out = np.empty_like(x)

    def call():
        loss, grad = fl.nll_loss_and_grad(x, target, weight=weight, reduction=reduction,
                                          grad_output=go, out=out)
        return fl.nll_loss(x, target, weight=weight, reduction=reduction), loss, grad.copy()

    same_bits_for_any_thread_count(call)


@st.composite
def problems(draw):
    classes = draw(st.integers(1, 40))
    rank = draw(st.sampled_from(["single", "2d", "kdim"]))
    if rank == "single":
        shape: tuple[int, ...] = (classes,)
    else:
        extra = draw(st.lists(st.integers(0, 9), min_size=1, max_size=2)) if rank == "kdim" else []
        shape = (draw(st.integers(0, 9)), classes, *extra)
    return {
        "shape": shape,
        "ignore_index": draw(st.sampled_from([-100, -1, 0, classes - 1])),
        "ignore_frac": draw(st.sampled_from([0.0, 0.3, 1.0])),
        **draw_call_options(draw),
    }


@DRAWN
@given(problems())
def test_drawn_problems_match_torch(problem):
    rng = np.random.default_rng(problem["seed"])
    x, target, weight = cross_entropy_inputs(
        rng, problem["shape"], problem["dtype"], weight=problem["weight"] != "none",
        ignore_index=problem["ignore_index"], ignore_frac=problem["ignore_frac"],
    )
    check_drawn(NAME, problem, rng, x, target, target.shape, weight=weight,
                ignore_index=problem["ignore_index"])
