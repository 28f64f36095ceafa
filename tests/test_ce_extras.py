"""fl.cross_entropy's LLM options (logit_scale, softcap, lse_square_scale,
num_items_in_batch, lse_out) against the same loss composed of torch ops.

The reference (:func:`ce_extras_reference`) is written with torch, independently of
the kernels: ``z = x * logit_scale``, ``softcap * tanh(z / softcap)``,
``F.cross_entropy(z, reduction="none")`` plus ``lse_square_scale * logsumexp(z)**2``
on the positions that are not ignored, reduced as documented (mean: divided by
torch's own denominator, the count or the targets' weights; num_items_in_batch:
the sum divided by it). Tolerances: tests/conftest.py (float64 rtol 1e-10; float32
no worse than 2x torch's float32 error against float64, floor 4 ULP of the
magnitude, which for cross-entropy is at least that at all-zero logits).
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
    assert_loss_type,
    assert_matches,
    cross_entropy_inputs,
    forced_capability,
    references,
    torch_loss_and_grad,
    upstream_gradient,
)
from test_cross_entropy import CASES, GRAD_CASES, make_case

EXTRAS = ("logit_scale", "softcap", "lse_square_scale", "num_items_in_batch")

OPTION_SETS: dict[str, dict[str, Any]] = {
    "scale": {"logit_scale": 0.7},
    "softcap": {"softcap": 4.0},
    "zloss": {"lse_square_scale": 1e-2},
    "all": {"logit_scale": 1.3, "softcap": 5.0, "lse_square_scale": 1e-3},
    "negative_scale_cap": {"logit_scale": -0.5, "softcap": 2.0, "lse_square_scale": 0.1},
}


def transformed(x: torch.Tensor, logit_scale: float = 1.0, softcap: float | None = None):
    z = x * logit_scale
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def ce_extras_reference(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    lse_square_scale: float = 0.0,
    num_items_in_batch: float | None = None,
) -> torch.Tensor:
    """The documented loss, composed of torch ops."""
    z = transformed(x, logit_scale, softcap)
    per = F.cross_entropy(
        z, target, weight=weight, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing,
    )
    lse = torch.logsumexp(z, dim=0 if z.dim() == 1 else 1)
    keep = torch.ones_like(lse, dtype=torch.bool)
    if not target.is_floating_point():
        keep = target != ignore_index
    per = per + lse_square_scale * torch.where(keep, lse.square(), 0.0)
    if reduction == "none":
        return per
    if num_items_in_batch is not None:
        return per.sum() / num_items_in_batch
    if reduction == "sum":
        return per.sum()
    denominator = keep.sum().to(per.dtype)  # torch's mean: count, or the targets' weights
    if weight is not None and not target.is_floating_point():
        denominator = (weight[torch.where(keep, target, 0)] * keep).sum()
    return per.sum() / denominator


def reference_lse(x: np.ndarray, target: np.ndarray, options: dict[str, Any], ignore_index=-100):
    """logsumexp(z) per position in float64, NaN where the target is ignored."""
    xt = torch.from_numpy(x.astype(np.float64))
    z = transformed(xt, options.get("logit_scale", 1.0), options.get("softcap"))
    lse = torch.logsumexp(z, dim=0 if z.dim() == 1 else 1).numpy()
    if np.issubdtype(target.dtype, np.integer):
        lse = np.where(target == ignore_index, np.nan, lse)
    return lse


def reference(x, target, **kwargs):
    """(float64 result, torch's at x's precision or None, loss and gradient magnitudes)."""
    wide, low = references(ce_extras_reference, x, target, **kwargs)
    at_zero = torch_loss_and_grad(
        ce_extras_reference, np.zeros(x.shape), target, compute_dtype=np.float64, **kwargs
    )
    scales = [float(np.max(np.abs(a), initial=0.0, where=np.isfinite(a))) for a in at_zero]
    return wide, low, scales


def compare(ref, x, loss, grad, reduction="mean"):
    wide, low, (loss_scale, grad_scale) = ref
    assert_loss_type(loss, x.dtype, reduction, wide.loss.shape)
    assert_matches(loss, wide.loss, None if low is None else low.loss, x.dtype, "loss", loss_scale)
    if grad is not None:
        assert grad.dtype == x.dtype and grad.shape == x.shape
        assert_matches(grad, wide.grad, None if low is None else low.grad, x.dtype, "grad",
                       grad_scale)


def check(x, target, loss, grad, **kwargs):
    """fusedloss's (loss, grad) against the reference (see the module docstring)."""
    compare(reference(x, target, **kwargs), x, loss, grad, kwargs.get("reduction", "mean"))


def run_and_check(x, target, **kwargs):
    """Forward-only and fused calls against the reference; inputs left untouched."""
    saved = x.copy(), target.copy()
    ref = reference(x, target, **kwargs)
    reduction = kwargs.get("reduction", "mean")
    compare(ref, x, fl.cross_entropy(x, target, **kwargs), None, reduction)
    loss, grad = fl.cross_entropy_and_grad(x, target, **kwargs)
    compare(ref, x, loss, grad, reduction)
    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(target, saved[1])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_all_options_every_case(capability, rng, dtype, reduction, case):
    x, target, opts = make_case(rng, case, dtype)
    run_and_check(x, target, reduction=reduction, **opts, **OPTION_SETS["all"])


@pytest.mark.parametrize("options", sorted(OPTION_SETS))
@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_each_option(capability, rng, dtype, reduction, case, options):
    x, target, opts = make_case(rng, case, dtype)
    loss_shape = np.asarray(fl.cross_entropy(x, target, reduction="none", **opts)).shape
    gout = upstream_gradient(rng, loss_shape, dtype, reduction)
    run_and_check(x, target, reduction=reduction, **opts, **OPTION_SETS[options])
    loss, grad = fl.cross_entropy_and_grad(
        x, target, reduction=reduction, grad_output=gout, **opts, **OPTION_SETS[options]
    )
    check(x, target, loss, grad, reduction=reduction, grad_output=gout, **opts,
          **OPTION_SETS[options])


# Every kernel route: rows of at most 4 vectors (in blocks), rows with the
# pipelined e scratch, rows without it (forward only, or C past the scratch
# limit), few long rows shared by threads chunk by chunk, and columns (inner > 1,
# full and partial tiles).
KERNEL_SHAPES = [(37, 7), (20, 64), (9, 3001), (3, 70001), (2, 20001), (4, 21, 130)]


@pytest.fixture
def two_threads():
    before = fl.get_num_threads()
    fl.set_num_threads(2)
    yield
    fl.set_num_threads(before)


@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_kernel_routes(capability, rng, two_threads, dtype, shape, probs):
    x, target, weight = cross_entropy_inputs(
        rng, shape, dtype, probs=probs, weight=True, ignore_frac=0.0 if probs else 0.2, scale=4.0
    )
    run_and_check(x, target, weight=weight, label_smoothing=0.1, reduction="mean",
                  **OPTION_SETS["all"])
    if x.size < 50_000:
        run_and_check(x, target, reduction="sum", softcap=3.0)


# Capped rows shift their exps by the cap instead of the row's max where the cap
# keeps every exp(z - cap) normal (up to 40 in float, 320 in double): caps on both
# sides of that bound, on rows that saturate at -cap (every exp at e^(-2 cap)),
# at +cap, or spread over [-cap, cap], on every row route.
@pytest.mark.parametrize("softcap", [0.5, 40.0, 41.0, 60.0, 300.0, 400.0])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_caps_around_the_fixed_shift_bound(capability, rng, two_threads, dtype, shape, softcap):
    x, target, _ = cross_entropy_inputs(rng, shape, dtype, ignore_frac=0.1, scale=2.0 * softcap)
    x[0] = -1e4 * softcap  # saturated at -cap
    x[1] = 1e4 * softcap  # saturated at +cap
    x[-1] = np.abs(x[-1]) - 3.0 * softcap  # mostly below the cap's knee
    run_and_check(x, target, reduction="none", softcap=softcap, lse_square_scale=1e-3)
    run_and_check(x, target, reduction="sum", softcap=softcap, logit_scale=0.7)


@pytest.mark.parametrize("options", sorted(OPTION_SETS))
def test_results_do_not_depend_on_threads(options):
    rng = np.random.default_rng(5)
    cases = [((64, 3001), False), ((3, 70001), True), ((2, 20001), False), ((4, 21, 130), True)]
    before = fl.get_num_threads()
    try:
        for shape, probs in cases:
            x, target, _ = cross_entropy_inputs(rng, shape, np.float32, probs=probs, scale=4.0)
            lse = np.empty(x.shape[:1] + x.shape[2:], np.float32)
            results = []
            for threads in (1, 2, 3):
                fl.set_num_threads(threads)
                loss, grad = fl.cross_entropy_and_grad(x, target, reduction="sum", lse_out=lse,
                                                       **OPTION_SETS[options])
                results.append((np.asarray(loss).tobytes(), grad.tobytes(), lse.tobytes()))
            assert results[0] == results[1] == results[2], f"{shape}: bits depend on threads"
    finally:
        fl.set_num_threads(before)


def test_defaults_given_explicitly_change_nothing(rng):
    x, target, opts = make_case(rng, "weight_smoothing_ignore", np.float32)
    plain = fl.cross_entropy_and_grad(x, target, **opts)
    given = fl.cross_entropy_and_grad(
        x, target, logit_scale=1, softcap=None, lse_square_scale=0, **opts
    )
    assert plain[0].tobytes() == given[0].tobytes() and plain[1].tobytes() == given[1].tobytes()


# ----------------------------------------------------------------- num_items_in_batch


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_num_items_in_batch(capability, rng, dtype, case):
    x, target, opts = make_case(rng, case, dtype)
    for items in (7, 2.5):
        run_and_check(x, target, num_items_in_batch=items, **opts)
        run_and_check(x, target, num_items_in_batch=items, **opts, **OPTION_SETS["all"])
        loss, grad = fl.cross_entropy_and_grad(x, target, num_items_in_batch=items,
                                               grad_output=-1.5, **opts)
        check(x, target, loss, grad, num_items_in_batch=items, grad_output=-1.5, **opts)


def test_num_items_in_batch_all_ignored_is_zero():
    x = np.ones((3, 4))
    target = np.full(3, -100)
    loss, grad = fl.cross_entropy_and_grad(x, target, num_items_in_batch=5)
    assert loss == 0 and not grad.any()
    assert np.isnan(fl.cross_entropy(x, target))  # the mean over nothing, as torch


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_num_items_in_batch_needs_mean(reduction):
    x, target = np.zeros((2, 3)), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="num_items_in_batch.*reduction='mean'"):
        fl.cross_entropy(x, target, reduction=reduction, num_items_in_batch=4)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fl.cross_entropy_and_grad(x, target, reduction=reduction, num_items_in_batch=4)


# ------------------------------------------------------------------------------ lse_out


@pytest.mark.parametrize("case", ["weight_smoothing_ignore", "probs_weight", "kdim2_weight_ignore",
                                  "single_row_index"])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_lse_out(capability, rng, dtype, case):
    x, target, opts = make_case(rng, case, dtype)
    options = OPTION_SETS["all"]
    ignore = opts.get("ignore_index", -100)
    expected = reference_lse(x, target, options, ignore)
    lse = np.full(expected.shape, 7.0, dtype)
    loss = fl.cross_entropy(x, target, lse_out=lse, **opts, **options)
    check(x, target, loss, None, **opts, **options)  # the loss is unchanged by asking
    rtol = 1e-12 if dtype is np.float64 else 4 * np.finfo(np.float32).eps
    np.testing.assert_allclose(lse, expected, rtol=rtol, equal_nan=True)
    lse2 = np.empty_like(lse)
    fl.cross_entropy_and_grad(x, target, lse_out=lse2, **opts, **options)
    np.testing.assert_array_equal(lse2, lse)


# (N, C, inner) shapes over every kernel route: small rows, rows in chunks, and
# columns (C small enough for the tiles' one-hot compare, and not).
CONFIDENT_SHAPES = [(8, 1, 1), (8, 7, 1), (4, 3000, 1), (3, 1, 37), (3, 7, 37), (2, 300, 37)]


CONFIDENT_OPTIONS = {
    "plain": {},
    "zloss": {"lse_square_scale": 3e-5},
    "softcap_zloss": {"softcap": 30.0, "lse_square_scale": 3e-5},  # the fixed shift (cap <= 40)
}


@pytest.mark.parametrize("options", sorted(CONFIDENT_OPTIONS))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", CONFIDENT_SHAPES, ids=str)
def test_confident_positions_keep_their_digits(capability, rng, shape, weighted, options):
    """float32 where the target's probability rounds to 1 (one class, or a target
    logit of 30, the rest in [-1, 1]): the loss is about e^-30 C (plus z-loss's lam LSE^2) and
    the target lane's gradient z-loss's 2 lam LSE p minus nearly nothing. Each
    position's loss and target-lane gradient must be as accurate as torch's float32
    (2x its error, or 4 ULP of the value itself): the suite's array-wide tolerance
    would hide an error of the ulp of 1 on a value of 1e-10 or 1e-3 (a float
    coefficient or exp-sum rounded before the cancellation)."""
    n, c, inner = shape
    x = rng.uniform(-1, 1, (n, c, inner)).astype(np.float32)
    target = rng.integers(0, c, (n, inner))
    np.put_along_axis(x, target[:, None, :], 30.0, axis=1)
    if inner == 1:
        x, target = x[:, :, 0], target[:, 0]
    kwargs = {**CONFIDENT_OPTIONS[options], "reduction": "none"}
    if weighted:
        kwargs["weight"] = rng.uniform(0.5, 2, c).astype(np.float32)
    wide = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float64, **kwargs)
    low = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float32, **kwargs)
    loss, grad = fl.cross_entropy_and_grad(x, target, **kwargs)
    lane = lambda g: np.take_along_axis(np.asarray(g, np.float64), np.expand_dims(target, 1), axis=1)
    for what, ours, ref, torch32 in [("loss", loss, wide.loss, low.loss),
                                     ("target-lane gradient", lane(grad), lane(wide.grad), lane(low.grad))]:
        ours, ref, torch32 = (np.asarray(a, np.float64) for a in (ours, ref, torch32))
        bound = np.maximum(2 * np.abs(torch32 - ref), 4 * np.finfo(np.float32).eps * np.abs(ref))
        assert np.all(np.abs(ours - ref) <= bound), (what, np.max(np.abs(ours - ref) / bound))


def softmax_relative_errors(grad, wide, target):
    """|grad / ref - 1| of every element but the targets' (there grad is p - 1)."""
    keep = np.ones(grad.shape, bool)
    np.put_along_axis(keep, np.expand_dims(target, 1), False, axis=1)
    ref = np.asarray(wide, np.float64)[keep]
    return np.abs(np.asarray(grad, np.float64)[keep] - ref) / np.abs(ref)


@pytest.mark.parametrize("softcap", [None, 15.0, 30.0, 50.0])
@pytest.mark.parametrize("shape", [(8, 300), (4, 5000), (2, 300, 9)], ids=str)
def test_each_probability_as_accurate_as_torchs(capability, shape, softcap):
    """float32 rows long enough for the chunked kernel, whose capped exps are shifted
    before the max is known ([Note fixed shift]): each gradient element p_c relative
    to the float64 one, median and 99th percentile over the array, within 1.5x
    torch's float32, whose exps are shifted by the max (a shift 20 above the first
    step's max, or the cap itself, gives 2.1-2.3x torch's median error; the shift
    at the first step's max 0.2-1.13x on AVX2, the most at softcap 30)."""
    rng = np.random.default_rng(sum(shape) + int(softcap or 0))
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    kwargs = {"reduction": "sum", "softcap": softcap}
    wide = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float64, **kwargs)
    low = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float32, **kwargs)
    _, grad = fl.cross_entropy_and_grad(x, target, **kwargs)
    ours = softmax_relative_errors(grad, wide.grad, target)
    torchs = softmax_relative_errors(low.grad, wide.grad, target)
    for q in (50, 99):
        assert np.percentile(ours, q) <= 1.5 * np.percentile(torchs, q), (
            q, np.percentile(ours, q), np.percentile(torchs, q))


@pytest.mark.parametrize("classes", [1000, 2048, 2049, 5000, 8192])
def test_largest_gradient_error_within_torchs(capability, classes):
    """float32 rows of the medium and the chunked kernels, weighted, the whole
    gradient's largest error against float64 within 1.5x torch's float32 on each of
    24 draws. Two roundings once made it 1.8x-4x: exps shifted by a chunk's first
    step's max (x - shift rounded for the logits far above it, the ones whose p
    matter), and exp-sums kept in float over up to 128 terms per lane (now into
    double every 8: draw 16 at C = 1000 has a row whose max holds p = 0.96)."""
    for seed in range(24):
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal((37, classes)) * 3).astype(np.float32)
        target = rng.integers(0, classes, 37)
        weight = (rng.random(classes) + 0.5).astype(np.float32)
        kwargs = {"reduction": "sum", "weight": weight}
        wide = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float64, **kwargs)
        low = torch_loss_and_grad(ce_extras_reference, x, target, compute_dtype=np.float32, **kwargs)
        _, grad = fl.cross_entropy_and_grad(x, target, **kwargs)
        ours, torchs = np.abs(grad - wide.grad).max(), np.abs(low.grad - wide.grad).max()
        assert ours <= 1.5 * torchs, (seed, ours, torchs)


@pytest.mark.parametrize("layout", ["float16", "float64_for_float32", "strided"])
def test_lse_out_any_float_array(rng, layout):
    x, target, _ = cross_entropy_inputs(rng, (6, 9), np.float32, ignore_frac=0.3)
    expected = reference_lse(x, target, {})
    if layout == "strided":
        base = np.zeros((6, 2), np.float32)
        lse = base[:, 0]
    else:
        lse = np.zeros(6, np.float16 if layout == "float16" else np.float64)
    fl.cross_entropy(x, target, lse_out=lse)
    tol = 1e-3 if layout == "float16" else 1e-6
    np.testing.assert_allclose(lse, expected, rtol=tol, equal_nan=True)


def test_lse_out_all_ignored_and_extremes():
    x = np.array([[0.0, 1000.0, -1000.0], [-np.inf, 0.0, 0.0], [1.0, 2.0, 3.0]])
    target = np.array([0, 1, -100])
    lse = np.empty(3)
    fl.cross_entropy(x, target, lse_out=lse)
    np.testing.assert_allclose(lse[:2], [1000.0, np.log(2.0)], rtol=1e-15)
    assert np.isnan(lse[2])
    fl.cross_entropy(x, np.full(3, -100), lse_out=lse)
    assert np.isnan(lse).all()


@pytest.mark.parametrize("classes", [3, 40, 5000])  # small rows, chunked rows, and columns below
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lse_out_infinite_logits_like_torch(capability, classes, dtype):
    """Positions whose max is infinite: torch.logsumexp's +-inf, or NaN where the
    position also has a NaN (which the max skips), on rows and columns alike."""
    torch = pytest.importorskip("torch")
    inf, nan = np.inf, np.nan
    heads = [[inf, 0, 1], [-inf, -inf, -inf], [inf, -inf, 2], [inf, inf, 0], [inf, nan, 1],
             [-inf, nan, -inf], [nan, 1, 2], [1, 2, 3]]
    x = np.random.default_rng(0).standard_normal((len(heads), classes))
    for row, head in zip(x, heads):
        row[:] = -inf if head[0] == -inf and head[2] == -inf else row
        row[:3] = head
    x = x.astype(dtype)
    expected = torch.logsumexp(torch.from_numpy(x).double(), 1).numpy()
    for logits, target in ((x, np.zeros(len(heads), np.int64)),
                           (np.ascontiguousarray(x.T[None]), np.zeros((1, len(heads)), np.int64))):
        lse = np.empty(target.shape, dtype)
        fl.cross_entropy(logits, target, reduction="none", lse_out=lse)
        np.testing.assert_allclose(lse.ravel(), expected, rtol=1e-6)  # NaN where NaN


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logit_scale": float("inf")}, ValueError, "logit_scale"),
        ({"logit_scale": float("nan")}, ValueError, "logit_scale"),
        ({"logit_scale": "2"}, TypeError, "logit_scale"),
        ({"logit_scale": True}, TypeError, "logit_scale"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": -3}, ValueError, "softcap"),
        ({"softcap": float("inf")}, ValueError, "softcap"),
        ({"softcap": "30"}, TypeError, "softcap"),
        ({"lse_square_scale": -1e-4}, ValueError, "lse_square_scale"),
        ({"lse_square_scale": float("nan")}, ValueError, "lse_square_scale"),
        ({"lse_square_scale": None}, TypeError, "lse_square_scale"),
        ({"num_items_in_batch": 0}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": -4}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": float("inf")}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": "8"}, TypeError, "num_items_in_batch"),
        ({"num_items_in_batch": False}, TypeError, "num_items_in_batch"),
        ({"lse_out": np.empty(3)}, ValueError, "lse_out"),
        ({"lse_out": np.empty(4, np.int64)}, TypeError, "lse_out"),
        ({"lse_out": [0.0] * 4}, TypeError, "lse_out"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, match):
    x, target = np.zeros((4, 5)), np.zeros(4, np.int64)
    grad_before = np.full_like(x, 3.0)
    for call in (fl.cross_entropy, fl.cross_entropy_and_grad):
        with pytest.raises(error, match=match):
            out = {"out": grad_before} if call is fl.cross_entropy_and_grad else {}
            call(x, target, **kwargs, **out)
    assert (grad_before == 3.0).all(), "nothing may be written before the error"


def test_lse_out_read_only_or_overlapping():
    x, target = np.zeros((4, 5)), np.zeros(4, np.int64)
    frozen = np.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="lse_out: array is read-only"):
        fl.cross_entropy(x, target, lse_out=frozen)
    with pytest.raises(ValueError, match="lse_out: shares memory with input"):
        fl.cross_entropy(x, target, lse_out=x[:, 0])
    grad = np.empty_like(x)
    with pytest.raises(ValueError, match="lse_out: shares memory with out"):
        fl.cross_entropy_and_grad(x, target, out=grad, lse_out=grad[0, :4])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logit_scale": float("inf")}, "logit_scale"),
        ({"softcap": -1.0}, "softcap"),
        ({"softcap": float("nan")}, "softcap"),
        ({"lse_square_scale": -1.0}, "lse_square_scale"),
        ({"lse_out": np.empty(3, np.float64)}, "lse_out"),
        ({"lse_out": np.empty(4, np.float32)}, "lse_out"),
    ],
)
def test_binding_checks_its_own_arguments(kwargs, match):
    from fusedloss import _core

    x, target = np.zeros((4, 5)), np.zeros(4, np.int64)
    with pytest.raises((ValueError, TypeError), match=match):
        _core.cross_entropy(x, target, None, -100, 0.0, 1, None, None, None, 1.0, False, 4, 5, 1,
                            **kwargs)


def test_lse_out_must_not_alias_the_gradient():
    from fusedloss import _core

    x, target, grad = np.zeros((4, 5)), np.zeros(4, np.int64), np.empty((4, 5))
    with pytest.raises(ValueError, match="lse_out"):
        _core.cross_entropy(x, target, None, -100, 0.0, 1, None, grad, None, 1.0, False, 4, 5, 1,
                            lse_out=grad[0, :4])


def test_every_capability_agrees_with_the_reference_at_lm_scale(rng):
    # One LLM-shaped call per path: 2 rows of a 32000 vocabulary, float32.
    x, target, _ = cross_entropy_inputs(rng, (2, 32000), np.float32, scale=8.0)
    options = {"logit_scale": 0.9, "softcap": 30.0, "lse_square_scale": 1e-4}
    for name in CAPABILITIES:
        with forced_capability(name):
            run_and_check(x, target, **options)
