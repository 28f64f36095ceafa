"""fl.multi_margin_loss / fl.multi_margin_loss_and_grad against
torch.nn.functional.multi_margin_loss.

Tolerances: tests/conftest.py (float32, float64) and tests/class_loss_checks.py
(float16; torch has no float16 multi_margin_loss on the CPU, the reference is its
float64 one on the same values).
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
from conftest import REDUCTIONS

NAME = "multi_margin_loss"


def inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, weight: bool = False,
           scale: float = 1.0, target_shape: tuple[int, ...] | None = None):
    """Scores of ``shape`` ((N, C), (C,) or ()), one target per row, optional weights.
    Unit-scale scores against margin 1 leave part of the terms positive, part not."""
    x = np.asarray(rng.standard_normal(shape) * scale).astype(dtype)
    classes = shape[-1] if shape else 1
    rows = shape[0] if len(shape) == 2 else 1
    if target_shape is None:
        target_shape = (rows,) if len(shape) == 2 else ()
    target = np.asarray(rng.integers(0, classes, target_shape))
    w = (rng.random(classes) + 0.1).astype(dtype) if weight else None
    return x, target, w


# name -> (input shape, loss options, inputs options)
CASES: dict[str, tuple[tuple[int, ...], dict[str, Any], dict[str, Any]]] = {
    "p1": ((7, 5), {}, {}),
    "p2": ((7, 5), {"p": 2}, {}),
    "p1_weight": ((9, 13), {"weight": True}, {}),
    "p2_weight": ((9, 13), {"p": 2, "weight": True}, {}),
    "p1_margin0.5": ((8, 6), {"margin": 0.5}, {}),
    "p2_margin3_weight": ((8, 6), {"p": 2, "margin": 3.0, "weight": True}, {}),
    "p1_margin0": ((8, 6), {"margin": 0.0}, {}),
    "p2_margin_negative": ((8, 6), {"p": 2, "margin": -0.5}, {"scale": 0.3}),
    "p1_wide_scores": ((6, 40), {}, {"scale": 5.0}),
    "single_row": ((5,), {}, {}),
    "single_row_p2_weight": ((5,), {"p": 2, "weight": True}, {}),
    "single_row_target_1": ((5,), {"p": 2}, {"target_shape": (1,)}),
    "one_row_target_0d": ((1, 5), {}, {"target_shape": ()}),
    "one_class": ((4, 1), {"weight": True}, {}),
    "scalar": ((), {"p": 2}, {}),
}


def make_case(rng: np.random.Generator, name: str, dtype: Any):
    shape, loss_opts, input_opts = CASES[name]
    opts = dict(loss_opts)
    x, target, weight = inputs(rng, shape, dtype, weight=opts.pop("weight", False), **input_opts)
    return x, target, {"weight": weight, **opts}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    run_and_check(NAME, x, target, reduction=reduction, **opts)


@pytest.mark.parametrize("target_dtype", [np.int64, np.int32, np.uint8, np.uint64])
def test_any_integer_target_dtype(rng, target_dtype):
    x, target, weight = inputs(rng, (13, 7), np.float64, weight=True)
    fused = fl.multi_margin_loss_and_grad(x, target.astype(target_dtype), weight=weight, p=2)
    check(NAME, *fused, x, target, weight=weight, p=2)


# A row is swept in steps of 4 vectors (4 x 4, 8 or 16 lanes), its float sums
# flushed to double every 16 steps: class counts around vector, step and flush
# boundaries, each with the target in first, middle and last lanes.
@pytest.mark.parametrize(
    "classes", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 1023, 1025, 4099]
)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_counts(capability, rng, dtype, p, classes):
    x, _, weight = inputs(rng, (9, classes), dtype, weight=True)
    target = np.array([0, classes - 1, classes // 2, classes // 3, min(classes - 1, 15),
                       min(classes - 1, 16), min(classes - 1, 64), classes // 5, classes - 2])
    target = np.clip(target, 0, classes - 1)
    run_and_check(NAME, x, target, p=p, weight=weight, reduction="none")


@pytest.mark.parametrize("case", ["p1_weight", "p2_margin3_weight", "single_row_p2_weight",
                                  "one_row_target_0d", "single_row_target_1"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_output_array(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    gout = upstream(rng, target.shape, dtype, reduction)
    loss, grad = fl.multi_margin_loss_and_grad(x, target, reduction=reduction, grad_output=gout,
                                               **opts)
    check(NAME, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts)


@pytest.mark.parametrize("gout", [0.0, -1.5, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_python_number(rng, reduction, gout):
    x, target, opts = make_case(rng, "p2_weight", np.float32)
    loss, grad = fl.multi_margin_loss_and_grad(x, target, reduction=reduction, grad_output=gout,
                                               **opts)
    check(NAME, loss, grad, x, target, reduction=reduction, grad_output=gout, **opts)


@pytest.mark.parametrize("destination", ["out", "inplace", "out_strided", "inplace_strided"])
@pytest.mark.parametrize("case", ["p1_weight", "p2_margin3_weight", "single_row", "scalar"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_destination(capability, rng, dtype, reduction, case, destination):
    # inplace=True: the kernel reads the target's score first, each vector of scores
    # before writing its gradient over it; the loss is that of the scores as they were.
    x, target, opts = make_case(rng, case, dtype)
    x_before = x.copy()
    strided = destination.endswith("strided") and x.ndim > 0
    if destination.startswith("inplace"):
        buffer = np.repeat(x, 2, axis=-1)[..., ::2] if strided else x.copy()
        loss, grad = fl.multi_margin_loss_and_grad(buffer, target, reduction=reduction,
                                                   inplace=True, **opts)
    else:
        buffer = (np.full(x.shape + (2,), np.nan, dtype)[..., 0] if strided
                  else np.full_like(x, np.nan))
        loss, grad = fl.multi_margin_loss_and_grad(x, target, reduction=reduction, out=buffer,
                                                   **opts)
    assert grad is buffer
    np.testing.assert_array_equal(x, x_before)
    check(NAME, loss, grad, x, target, reduction=reduction, **opts)


@pytest.mark.parametrize("layout", ["transposed", "step", "negative"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous(capability, rng, dtype, reduction, layout):
    x, target, weight = inputs(rng, (14, 24), dtype, weight=True)
    if layout == "transposed":
        x = np.ascontiguousarray(x.T).T
    elif layout == "step":
        x, target, weight = x[::2, ::3], (target % 8)[::2], weight[::3]
    else:
        x, target, weight = x[::-1, ::-1], target[::-1], weight[::-1]
    assert not x.flags.c_contiguous
    run_and_check(NAME, x, target, p=2, weight=weight, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype, reduction):
    # torch: none -> empty, sum -> 0, and a mean read from uninitialised memory (torch
    # 2.13 CPU); here the mean over nothing is NaN, as every other mean over nothing.
    x = np.zeros((0, 5), dtype)
    target = np.zeros(0, np.int64)
    loss, grad = fl.multi_margin_loss_and_grad(x, target, reduction=reduction)
    assert grad.shape == (0, 5) and grad.dtype == dtype
    assert np.asarray(loss).dtype == dtype
    if reduction == "none":
        assert loss.shape == (0,)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert np.isnan(loss)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_scores_as_torch(capability, dtype, reduction, p):
    # torch forms z = margin - x[y] + x[j] and adds a term where z > 0: a NaN z adds
    # nothing (so a NaN score does not make the loss NaN), +inf scores give inf
    # terms, and inf - inf is NaN, nothing.
    x = np.array(
        [[np.nan, 0.5, 1.0, -1.0],  # NaN off target
         [2.0, np.nan, 0.0, 0.0],  # NaN target: every z NaN
         [np.inf, 0.0, 1.0, 2.0],  # +inf off target: inf loss
         [0.0, np.inf, 1.0, 2.0],  # +inf target: every term negative
         [np.inf, np.inf, 0.0, -np.inf],  # inf - inf
         [-np.inf, 0.5, 0.25, 0.0]],
        dtype,
    )
    target = np.array([1, 1, 1, 1, 1, 0])
    run_and_check(NAME, x, target, p=p, reduction=reduction)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_scores_float32(capability, reduction, p):
    # z = (margin - x[y]) + x[j] formed in torch's order: with scores of 1e8 the
    # margin vanishes in float32 as it does in torch, and the result follows it.
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((16, 33)) * 1e8).astype(np.float32)
    target = rng.integers(0, 33, 16)
    x[np.arange(16), target] = x[0, 0]  # ties between target and others: z = margin (or 0)
    run_and_check(NAME, x, target, p=p, reduction=reduction)


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize("target", [[0, 5, 1], [0, -1, 1], [0, -100, 1]])
def test_target_out_of_range_raises_index_error_before_writing(capability, target):
    x = np.ones((3, 5), np.float32)
    t = np.array(target)
    with pytest.raises(RuntimeError, match="target out of range"):  # torch's error
        F.multi_margin_loss(torch.from_numpy(x), torch.from_numpy(t))
    out = np.full((3, 5), 7.0, np.float32)
    for call in (
        lambda: fl.multi_margin_loss(x, t),
        lambda: fl.multi_margin_loss_and_grad(x, t, out=out),
        lambda: fl.multi_margin_loss_and_grad(x, t, inplace=True),
    ):
        with pytest.raises(IndexError, match="target"):
            call()
    assert (out == 7).all() and (x == 1).all()


BAD = {
    "3-d input": (lambda x, t: (x[None], t), {}, ValueError, "input"),
    "empty classes": (lambda x, t: (np.zeros((3, 0), np.float32), t), {}, ValueError, "input"),
    "int input": (lambda x, t: (x.astype(np.int32), t), {}, TypeError, "input"),
    "list input": (lambda x, t: (x.tolist(), t), {}, TypeError, "input"),
    "float target": (lambda x, t: (x, t.astype(np.float64)), {}, TypeError, "target"),
    "target shape": (lambda x, t: (x, t[:2]), {}, ValueError, "target"),
    "target 2-d": (lambda x, t: (x, t[:, None]), {}, ValueError, "target"),
    "target list": (lambda x, t: (x, t.tolist()), {}, TypeError, "target"),
    "p 3": (lambda x, t: (x, t), {"p": 3}, ValueError, "p"),
    "p 0": (lambda x, t: (x, t), {"p": 0}, ValueError, "p"),
    "p string": (lambda x, t: (x, t), {"p": "2"}, TypeError, "p"),
    "p bool": (lambda x, t: (x, t), {"p": True}, TypeError, "p"),
    "margin string": (lambda x, t: (x, t), {"margin": "1"}, TypeError, "margin"),
    "margin None": (lambda x, t: (x, t), {"margin": None}, TypeError, "margin"),
    "weight 2-d": (lambda x, t: (x, t), {"weight": np.ones((1, 4))}, ValueError, "weight"),
    "weight length": (lambda x, t: (x, t), {"weight": np.ones(3)}, ValueError, "weight"),
    "reduction": (lambda x, t: (x, t), {"reduction": "batchmean"}, ValueError, "reduction"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_the_argument(case):
    make, kwargs, error, name = BAD[case]
    x, t = make(np.zeros((3, 4), np.float32), np.array([0, 1, 3]))
    for fn in (fl.multi_margin_loss, fl.multi_margin_loss_and_grad):
        with pytest.raises(error, match=f"^{name}:"):
            fn(x, t, **kwargs)


def test_p_two_as_float_is_two():
    # torch takes p=2.0 (it compares p with 1 and 2); so does fusedloss.
    x = np.random.default_rng(0).standard_normal((4, 6))
    t = np.array([0, 1, 2, 5])
    assert fl.multi_margin_loss(x, t, p=2.0) == fl.multi_margin_loss(x, t, p=2)
    check(NAME, *fl.multi_margin_loss_and_grad(x, t, p=2.0), x, t, p=2)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"reduction": "none", "grad_output": np.ones(4)}, ValueError, "grad_output"),
        ({"grad_output": np.ones(3)}, ValueError, "grad_output"),
        ({"out": np.empty((3, 4), np.float64)}, TypeError, "out"),
        ({"out": np.empty((4, 3), np.float32)}, ValueError, "out"),
        ({"out": np.empty((3, 4), np.float32), "inplace": True}, ValueError, "out"),
        ({"inplace": 1}, TypeError, "inplace"),
    ],
)
def test_bad_gradient_arguments_name_the_argument(kwargs, error, name):
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(error, match=name):
        fl.multi_margin_loss_and_grad(x, np.array([0, 1, 3]), **kwargs)
    assert not x.any()


# ------------------------------------------------------ big inputs, threads, paths


@pytest.mark.slow
@pytest.mark.parametrize("p", [1, 2])
def test_streamed_gradient(capability, restore_threads, p):
    """A gradient beyond the caches (>= 24 MiB in rows of >= 6 KiB: non-temporal
    stores, rows off the vector grid), float32, against torch float64 on a sample of
    its rows (each row's result depends on that row only; the mean divides by all of
    them)."""
    rows, classes = 1023, 16411
    rng = np.random.default_rng(p)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    target = rng.integers(0, classes, rows)
    sample = np.r_[0:5, 500:503, rows - 4:rows]
    for threads in (1, 2):
        fl.set_num_threads(threads)
        loss, grad = fl.multi_margin_loss_and_grad(x, target, p=p, reduction="none",
                                                   out=np.empty_like(x))
        check(NAME, loss[sample], grad[sample], x[sample], target[sample], p=p,
              reduction="none")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(512, 4096), (3, 70001), (4097, 3)], ids=str)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_for_any_thread_count(restore_threads, dtype, p, shape, reduction):
    rng = np.random.default_rng(sum(shape) + p)
    x, target, weight = inputs(rng, shape, dtype, weight=True)
    go = upstream(rng, target.shape, dtype, reduction)
    out = np.empty_like(x)

    def call():
        kw = {"p": p, "weight": weight, "reduction": reduction}
        loss, grad = fl.multi_margin_loss_and_grad(x, target, grad_output=go, out=out, **kw)
        return fl.multi_margin_loss(x, target, **kw), loss, grad.copy()

    same_bits_for_any_thread_count(call)


@st.composite
def problems(draw):
    classes = draw(st.integers(1, 70))
    rank = draw(st.sampled_from(["scalar", "single", "2d", "2d", "2d"]))
    # (no empty batch: torch's mean over it is undefined, see test_empty_batch)
    shape = {"scalar": (), "single": (classes,)}.get(rank) or (draw(st.integers(1, 12)), classes)
    return {
        "shape": shape,
        "p": draw(st.sampled_from([1, 2])),
        "margin": draw(st.sampled_from([1.0, 0.0, 2.5, -0.5]) | st.floats(-3, 3)),
        "scale": draw(st.sampled_from([0.1, 1.0, 10.0])),
        **draw_call_options(draw),
    }


@DRAWN
@given(problems())
def test_drawn_problems_match_torch(problem):
    rng = np.random.default_rng(problem["seed"])
    x, target, weight = inputs(rng, problem["shape"], problem["dtype"],
                               weight=problem["weight"] != "none", scale=problem["scale"])
    check_drawn(NAME, problem, rng, x, target, target.shape, weight=weight, p=problem["p"],
                margin=problem["margin"])
