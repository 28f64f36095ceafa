"""fl.kl_div_with_logits(_and_grad) and flt.kl_div_with_logits against torch.

Reference: ``T**2 * F.kl_div(F.log_softmax(x / T), F.log_softmax(t / T), log_target=True,
reduction="none")`` summed per row, then reduced over rows (batchmean and mean: / N,
which for (N, C) input is torch's own "batchmean"), with torch autograd for the
gradient, in float64 on the very values given. Tolerances: tests/conftest.py (float64
rtol 1e-10; float32 no worse than 2x torch's float32 error, floor 4 ULP of the
magnitude). The magnitude of the loss is that of ``T**2 * sum_j p_j |log p_j - log q_j|``
(the terms the sum cancels), of the gradient ``T * (p + q)`` times grad_output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
import fusedloss.torch as flt
from conftest import (
    REAL_DTYPES,
    assert_loss_type,
    assert_matches,
    references,
    upstream_gradient,
)
from test_torch import DTYPES, assert_close

REDUCTIONS = ("batchmean", "mean", "sum", "none")
SHAPES = [(7, 5), (5, 97), (1, 1), (13,), (3, 1000)]


def kl_reference(x, t, temperature=1.0, reduction="batchmean"):
    # F.kl_div(log_q, log_p, log_target=True)'s terms, 0 where p = 0 (0 log 0 = 0;
    # F.kl_div gives NaN there): test_batchmean_is_torchs compares with it directly.
    log_q, log_p = F.log_softmax(x / temperature, -1), F.log_softmax(t / temperature, -1)
    p = log_p.exp()
    per_row = temperature**2 * torch.where(p == 0, 0.0, p * (log_p - log_q)).sum(-1)
    if reduction == "none":
        return per_row
    rows = x.shape[0] if x.dim() == 2 else 1
    return per_row.sum() if reduction == "sum" else per_row.sum() / rows


def magnitudes(x, t, temperature, reduction, grad_output):
    x64, t64 = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(t.astype(np.float64))
    lq = F.log_softmax(x64 / temperature, -1)
    lp = F.log_softmax(t64 / temperature, -1)
    terms = temperature**2 * (lp.exp() * (lp - lq).abs()).sum(-1)
    rows = x.shape[0] if x.ndim == 2 else 1
    divide = rows if reduction in ("batchmean", "mean") else 1
    go = 1.0 if grad_output is None else float(np.max(np.abs(grad_output), initial=0.0))
    grad = temperature * (lp.exp() + lq.exp()) * go / divide
    return float(terms.max()) / divide * (rows if reduction != "none" else 1), float(grad.max())


def check(x, t, loss, grad, temperature=1.0, reduction="batchmean", grad_output=None):
    wide, low = references(kl_reference, x, t, temperature=temperature, reduction=reduction,
                           grad_output=grad_output)
    loss_scale, grad_scale = magnitudes(x, t, temperature, reduction, grad_output)
    assert_loss_type(loss, x.dtype, "none" if reduction == "none" else "sum", wide.loss.shape)
    assert_matches(loss, wide.loss, None if low is None else low.loss, x.dtype, "loss", loss_scale)
    if grad is not None:
        assert grad.dtype == x.dtype and grad.shape == x.shape
        assert_matches(grad, wide.grad, None if low is None else low.grad, x.dtype, "grad",
                       grad_scale)


def inputs(rng, shape, dtype, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    t = (rng.standard_normal(shape) * scale).astype(dtype)
    return x, t


def run_and_check(x, t, **kwargs):
    saved = x.copy(), t.copy()
    check(x, t, fl.kl_div_with_logits(x, t, **kwargs), None, **kwargs)
    loss, grad = fl.kl_div_with_logits_and_grad(x, t, **kwargs)
    check(x, t, loss, grad, **kwargs)
    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(t, saved[1])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_matches_torch(capability, rng, dtype, reduction, shape, temperature):
    x, t = inputs(rng, shape, dtype)
    run_and_check(x, t, temperature=temperature, reduction=reduction)


def test_batchmean_is_torchs(rng):
    x, t = inputs(rng, (6, 40), np.float64)
    T = 2.0
    ref = T**2 * F.kl_div(F.log_softmax(torch.from_numpy(x) / T, 1),
                          F.log_softmax(torch.from_numpy(t) / T, 1), log_target=True,
                          reduction="batchmean")
    np.testing.assert_allclose(fl.kl_div_with_logits(x, t, T), float(ref), rtol=1e-13)


# A teacher that rules classes out (-inf logits: a masked vocabulary, top-k logits):
# p log p = 0 there, also where the student is -inf too. Rows past one chunk (2048 to
# 4096 classes) take the full steps' tested loop, short ones the partial step.
@pytest.mark.parametrize("shape", [(5, 37), (3, 5000), (1, 9)], ids=str)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_teacher_minus_inf_adds_nothing(capability, rng, dtype, shape):
    x, t = inputs(rng, shape, dtype)
    masked = rng.random(shape) < 0.5
    masked[..., 0] = False  # every row keeps a class
    t[masked] = -np.inf
    x[masked & (rng.random(shape) < 0.3)] = -np.inf
    for reduction in ("none", "sum"):
        loss = fl.kl_div_with_logits(x, t, 2.0, reduction)
        assert np.all(np.isfinite(loss))
        run_and_check(x, t, temperature=2.0, reduction=reduction)


def test_student_minus_inf_where_teacher_is_not_is_inf(capability):
    x = np.array([[0.0, -np.inf, 1.0], [0.0, 1.0, 2.0]])
    t = np.array([[0.0, 0.5, -np.inf], [0.0, 1.0, 2.0]])
    loss, grad = fl.kl_div_with_logits_and_grad(x, t, reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1]) and np.all(np.isfinite(grad))


# The kernel's routes: rows with the exps kept in scratch, rows without (C past its
# limit, or forward only), few long rows shared by threads chunk by chunk.
@pytest.mark.parametrize("classes", [1000, 2049, 8192])
def test_largest_gradient_error_within_torchs(capability, classes):
    """float32, the whole gradient's largest error against float64 within 1.5x torch's
    float32 on each of 16 draws (a teacher near the student). Exp-sums kept in float
    over 32 steps a lane once made it 3.9x at C = 2049 (a row's dominant logit)."""
    def torch_grad(x, t, dtype):
        xt = torch.from_numpy(x.astype(dtype)).requires_grad_()
        F.kl_div(F.log_softmax(xt, 1), F.log_softmax(torch.from_numpy(t.astype(dtype)), 1),
                 log_target=True, reduction="sum").backward()
        return xt.grad.numpy()
    for seed in range(16):
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal((37, classes)) * 3).astype(np.float32)
        t = (x + rng.standard_normal((37, classes))).astype(np.float32)
        _, grad = fl.kl_div_with_logits_and_grad(x, t, reduction="sum")
        wide = torch_grad(x, t, np.float64)
        ours, torchs = np.abs(grad - wide).max(), np.abs(torch_grad(x, t, np.float32) - wide).max()
        assert ours <= 1.5 * torchs, (seed, ours, torchs)


@pytest.mark.parametrize("shape", [(64, 3001), (3, 70001), (2, 20001), (40, 33)], ids=str)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_kernel_routes(capability, rng, dtype, shape):
    before = fl.get_num_threads()
    fl.set_num_threads(2)
    try:
        x, t = inputs(rng, shape, dtype, scale=5.0)
        run_and_check(x, t, temperature=2.0, reduction="sum")
    finally:
        fl.set_num_threads(before)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_grad_output(capability, rng, dtype, reduction):
    x, t = inputs(rng, (9, 31), dtype)
    shape = (9,) if reduction == "none" else ()
    gout = upstream_gradient(rng, shape, dtype, "none" if reduction == "none" else "mean")
    loss, grad = fl.kl_div_with_logits_and_grad(x, t, 3.0, reduction, grad_output=gout)
    check(x, t, loss, grad, 3.0, reduction, grad_output=gout)


@pytest.mark.parametrize("destination", ["out", "inplace"])
def test_gradient_destination(rng, destination):
    x, t = inputs(rng, (5, 17), np.float32)
    if destination == "inplace":
        buffer = x.copy()
        loss, grad = fl.kl_div_with_logits_and_grad(buffer, t, 2.0, inplace=True)
    else:
        buffer = np.full_like(x, np.nan)
        loss, grad = fl.kl_div_with_logits_and_grad(x, t, 2.0, out=buffer)
    assert grad is buffer or np.shares_memory(grad, buffer)
    check(x, t, loss, buffer, 2.0)


def test_float16_input(rng):
    x, t = inputs(rng, (6, 50), np.float16)
    loss, grad = fl.kl_div_with_logits_and_grad(x, t, 2.0, "none")
    ref = kl_reference(torch.from_numpy(x.astype(np.float64)).requires_grad_(True),
                       torch.from_numpy(t.astype(np.float64)), 2.0, "none")
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    np.testing.assert_allclose(loss.astype(np.float64), ref.detach().numpy(), rtol=4e-3, atol=4e-3)


def test_results_do_not_depend_on_threads():
    rng = np.random.default_rng(2)
    before = fl.get_num_threads()
    try:
        for shape in [(64, 3001), (3, 70001), (2, 20001)]:
            x, t = inputs(rng, shape, np.float32)
            results = []
            for threads in (1, 2, 3):
                fl.set_num_threads(threads)
                loss, grad = fl.kl_div_with_logits_and_grad(x, t, 1.5)
                results.append((np.asarray(loss).tobytes(), grad.tobytes()))
            assert results[0] == results[1] == results[2], f"{shape}: bits depend on threads"
    finally:
        fl.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_class_is_exactly_zero(capability, dtype):
    """One class: p = q = 1, loss and gradient exactly 0 at any temperature, as torch's
    log_softmax gives (x / T - max, the product rounded before the subtraction)."""
    x = (np.random.default_rng(1).standard_normal((64, 1)) * 30).astype(dtype)
    t = x[::-1].copy()
    for temperature in (1.0, 0.7, 3.0, 10.0, 123.4):
        loss, grad = fl.kl_div_with_logits_and_grad(x, t, temperature, "none")
        assert not loss.any() and not grad.any()


def test_identical_and_empty():
    x = np.random.default_rng(0).standard_normal((4, 9))
    loss, grad = fl.kl_div_with_logits_and_grad(x, x.copy(), 2.0, "none")
    np.testing.assert_allclose(loss, 0.0, atol=1e-14)
    np.testing.assert_allclose(grad, 0.0, atol=1e-16)
    empty = np.zeros((0, 5))
    assert math.isnan(fl.kl_div_with_logits(empty, empty))  # 0 / 0, as torch's batchmean
    assert fl.kl_div_with_logits(empty, empty, reduction="sum") == 0.0
    assert fl.kl_div_with_logits(empty, empty, reduction="none").shape == (0,)
    assert fl.kl_div_with_logits(np.zeros((3, 0)), np.zeros((3, 0)), reduction="sum") == 0.0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": 0.0}, ValueError, "temperature"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": -1}, ValueError, "temperature"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": math.inf}, ValueError,
         "temperature"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": "2"}, TypeError, "temperature"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": True}, TypeError, "temperature"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"reduction": "avg"}, ValueError, "reduction"),
        ((np.zeros((2, 3)), np.zeros((3, 2))), {}, ValueError, "target"),
        ((np.zeros((2, 3)), np.zeros((2, 3), np.int64)), {}, TypeError, "target"),
        ((np.zeros((2, 3, 4)), np.zeros((2, 3, 4))), {}, ValueError, "input"),
        ((np.zeros(()), np.zeros(())), {}, ValueError, "input"),
        ((np.zeros((2, 3), np.int64), np.zeros((2, 3))), {}, TypeError, "input"),
        (([[0.0]], np.zeros((1, 1))), {}, TypeError, "input"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fl.kl_div_with_logits(*args, **kwargs)
    with pytest.raises(error, match=match):
        fl.kl_div_with_logits_and_grad(*args, **kwargs)


def test_binding_checks_its_own_arguments():
    from fusedloss import _core

    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="temperature"):
        _core.kl_div_with_logits(x, x, 0.0, 1, None, None, None)
    with pytest.raises(ValueError, match="target"):
        _core.kl_div_with_logits(x, np.zeros((2, 4)), 1.0, 1, None, None, None)
    with pytest.raises(ValueError, match="loss_out"):
        _core.kl_div_with_logits(x, x, 1.0, 0, None, None, None)
    with pytest.raises(ValueError, match="target"):
        _core.kl_div_with_logits(x, x, 1.0, 1, None, x, None)  # gradient over the target


# ------------------------------------------------------------------------ torch layer


def torch_pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(shape, generator=g) * 3).to(dtype),
            (torch.randn(shape, generator=g) * 3).to(dtype))


@pytest.mark.parametrize("shape", [(9,), (6, 13)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_matches_reference(dtype, reduction, shape):
    x, t = torch_pair(shape, dtype)
    xg = x.clone().requires_grad_(True)
    loss = flt.kl_div_with_logits(xg, t, 2.0, reduction)
    gout = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1)).to(loss.dtype)
    (grad,) = torch.autograd.grad(loss, xg, gout)
    x64 = x.double().requires_grad_(True)
    ref = kl_reference(x64, t.double(), 2.0, reduction)
    (ref_grad,) = torch.autograd.grad(ref, x64, gout.double())
    assert_close(loss.detach(), ref.detach(), dtype, "loss")
    assert_close(grad, ref_grad, dtype, "grad input")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(7,), (4, 9)], ids=str)
def test_torch_gradcheck(reduction, shape):
    x, t = torch_pair(shape, torch.float64, seed=3)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: flt.kl_div_with_logits(x, t, 1.7, reduction), (x,))


def test_torch_module():
    x, t = torch_pair((4, 9), torch.float64)
    crit = flt.KLDivWithLogitsLoss(temperature=2.0, reduction="sum")
    assert "temperature=2.0" in repr(crit)
    torch.testing.assert_close(crit(x, t), kl_reference(x, t, 2.0, "sum"))


def test_torch_target_is_a_constant():
    x, t = torch_pair((4, 9), torch.float32)
    t.requires_grad_(True)
    loss = flt.kl_div_with_logits(x, t)
    assert not loss.requires_grad  # only the input can carry a gradient
    x.requires_grad_(True)
    flt.kl_div_with_logits(x, t).backward()
    assert t.grad is None and x.grad is not None


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def objective(x, t):
        return flt.kl_div_with_logits(x * 2, t, 3.0) + flt.kl_div_with_logits(x, t, 1.0, "none")[0]

    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    for seed in range(2):
        x, t = torch_pair((5, 21), torch.float32, seed)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        loss = compiled(xs[0], t)
        loss.backward()
        ref = objective(xs[1], t)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
    assert graphs and all("fusedloss.kl_div_with_logits" in g for g in graphs)


def test_torch_custom_op_passes_opcheck():
    from fusedloss._torch_kl import kl_div_with_logits_op

    x, t = torch_pair((6, 11), torch.float32)
    x.requires_grad_(True)
    for reduction in (0, 1, 2):
        torch.library.opcheck(kl_div_with_logits_op, (x, t, 2.0, reduction, True, False))


def test_torch_other_routes_use_the_same_formula():
    x, t = torch_pair((4, 9), torch.float64)
    t[:, 3:6] = -math.inf  # p = 0 there: 0 on every route
    ours = torch.func.grad(lambda x: flt.kl_div_with_logits(x, t, 2.0))(x)
    ref = torch.func.grad(lambda x: kl_reference(x, t, 2.0))(x)
    torch.testing.assert_close(ours, ref)
    for route in (flt.kl_div_with_logits, torch.func.functionalize(flt.kl_div_with_logits)):
        loss = route(x, t, 2.0, "none")
        assert torch.isfinite(loss).all()
        torch.testing.assert_close(loss, kl_reference(x, t, 2.0, "none"))
    meta = flt.kl_div_with_logits(x.to("meta"), t.to("meta"), 2.0, "none")
    assert meta.shape == (4,) and meta.is_meta
    empty = torch.zeros(0, 3)
    assert torch.isnan(flt.kl_div_with_logits(empty, empty))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": 0.0}, ValueError, "temperature"),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), {"reduction": "avg"}, ValueError, "reduction"),
        ((torch.zeros(2, 3), torch.zeros(3, 2)), {}, ValueError, "target"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), {}, ValueError, "input"),
        ((np.zeros((2, 3)), torch.zeros(2, 3)), {}, TypeError, "input"),
    ],
)
def test_torch_bad_input_names_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        flt.kl_div_with_logits(*args, **kwargs)
