"""fusedloss.torch's cross-entropy against torch.nn.functional: values, gradients,
options, errors (the elementwise losses: test_torch_elementwise.py).

References are torch's own functions, never fusedloss. Tolerances per dtype:

* float64: ``rtol=1e-9``, ``atol=1e-12`` — same O(C) float64 work per row as torch;
  only summation order and the kernels' exp/log (a few ULP) differ.
* float32: compared with torch float64 on the same float32 values, ``rtol=1e-5``,
  ``atol=1e-6 * max|ref|``: float32 accumulation over C <= 11 terms plus one
  rounding of the result stays far below that; an algorithmic slip does not.
* float16 / bfloat16: read as they are, accumulated in float32, rounded once to
  the half type (the gradient once more when scaled by a grad_output != 1). So
  against torch float64 on the same half values: ``rtol = 4 * eps`` and
  ``atol = 4 * eps * max|ref|`` (eps = 2**-10 for float16, 2**-7 for bfloat16).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from fusedloss import _torch_ops  # noqa: E402

from gan_formulas import DISCRIMINATOR, GENERATOR  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
CE_SHAPES = [(11,), (8, 11), (3, 5, 4, 2)]
IGNORE = 1  # a real class id used as ignore_index in the option matrix


def tolerances(dtype):
    if dtype is torch.float64:
        return 1e-9, 1e-12
    if dtype is torch.float32:
        return 1e-5, 1e-6
    eps = torch.finfo(dtype).eps
    return 4 * eps, 4 * eps


def assert_close(ours, ref, dtype, what):
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    rtol, atol = tolerances(dtype)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(
        ours.double(), ref, rtol=rtol, atol=atol * max(scale, 1e-30), equal_nan=True, msg=what
    )


def make_ce(shape, dtype, probs, weight, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    classes = shape[0] if len(shape) == 1 else shape[1]
    cdim = 0 if len(shape) == 1 else 1
    if probs:
        t = torch.rand(shape, generator=g).add_(1e-3)
        t = (t / t.sum(cdim, keepdim=True)).to(dtype)
    else:
        tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
        t = torch.randint(0, classes, tshape, generator=g)
        if t.dim():  # ~25 % ignored
            t = torch.where(torch.rand(tshape, generator=g) < 0.25, IGNORE, t)
    w = (torch.rand(classes, generator=g) + 0.1).to(dtype) if weight else None
    return x, t, w


def loss_and_grads(fn, x, t, gout_seed=7, **kw):
    """(loss, d/dx, d/dt or None) of sum(grad_output * loss), grad_output random."""
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(t.is_floating_point())
    loss = fn(x, t, **kw)
    g = torch.Generator().manual_seed(gout_seed)
    gout = (torch.randn(loss.shape, generator=g) + 0.5).to(loss.dtype)
    inputs = [x, t] if t.requires_grad else [x]
    grads = torch.autograd.grad(loss, inputs, gout)
    return loss.detach(), grads[0], grads[1] if t.requires_grad else None


def reference(fn, x, t, **kw):
    """torch in float64 on the very values given (half types exactly widened)."""
    if kw.get("weight") is not None:
        kw["weight"] = kw["weight"].double()
    t64 = t.double() if t.is_floating_point() else t
    return loss_and_grads(fn, x.double(), t64, **kw)


# ----------------------------------------------------------------- parity matrix


def ce_options(smoothing):
    """The option matrix: shape x target kind x weight x label_smoothing, readable ids."""
    return [
        pytest.param(s, p, w, ls, id=f"{'x'.join(map(str, s))}-{'probs' if p else 'index'}"
                                     f"{'-weight' if w else ''}{f'-ls{ls}' if ls else ''}")
        for s, p, w, ls in itertools.product(CE_SHAPES, (False, True), (False, True), smoothing)
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,probs,weight,smoothing", ce_options((0.0, 0.15)))
def test_cross_entropy_matches_torch(dtype, reduction, shape, probs, weight, smoothing):
    x, t, w = make_ce(shape, dtype, probs, weight, seed=hash((shape, probs, weight)) % 1000)
    ignore = -100 if probs else IGNORE  # torch refuses ignore_index with probabilities
    kw = dict(reduction=reduction, label_smoothing=smoothing, ignore_index=ignore)
    loss, gx, gt = loss_and_grads(flt.cross_entropy, x, t, weight=w, **kw)
    rloss, rgx, rgt = reference(F.cross_entropy, x, t, weight=w, **kw)
    assert_close(loss, rloss, dtype, "loss")
    assert_close(gx, rgx, dtype, "grad input")
    if probs:
        assert_close(gt, rgt, dtype, "grad target")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_same_dtype_torch(dtype):
    """Also against torch at the same precision, default options."""
    x, t, _ = make_ce((16, 33), dtype, False, False, seed=3)
    loss, gx, _ = loss_and_grads(flt.cross_entropy, x, t)
    rloss, rgx, _ = loss_and_grads(F.cross_entropy, x, t)
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(gx, rgx)


@pytest.mark.parametrize("ignore_index", [-100, -1])
def test_probabilities_with_a_negative_ignore_index_are_fused(monkeypatch, ignore_index):
    """torch accepts any negative ignore_index with probability targets (it names no
    class); the kernel runs there too, with torch's values."""
    calls = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t, _ = make_ce((16, 33), torch.float64, True, False, seed=4)
    loss, gx, gt = loss_and_grads(flt.cross_entropy, x, t, ignore_index=ignore_index)
    assert calls == []
    monkeypatch.undo()
    rloss, rgx, rgt = loss_and_grads(F.cross_entropy, x, t, ignore_index=ignore_index)
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gt, rgt)


def test_half_types_are_not_upcast(monkeypatch):
    seen = []
    real = _torch_ops._core.cross_entropy

    def spy(inp, *args):
        seen.append((str(inp.dtype), args[9]))  # args[9]: the bfloat16 flag
        return real(inp, *args)

    monkeypatch.setattr(_torch_ops._core, "cross_entropy", spy)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 6, dtype=dtype, requires_grad=True)
        flt.cross_entropy(x, torch.tensor([0, 1, 2, 3])).backward()
        assert x.grad.dtype == dtype
    assert seen == [("float16", False), ("uint16", True)]


def test_float16_label_smoothing_computed_in_float32():
    """Float16 cross-entropy with label smoothing over many classes: torch's float16
    sum of the log-probabilities overflows (inf), fusedloss gives float32's value
    rounded once (the README's half-precision note)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(300, 1000, generator=g) * 30).half()
    t = torch.randint(0, 1000, (300,), generator=g)
    assert torch.isinf(F.cross_entropy(x, t, reduction="sum", label_smoothing=0.5))
    ours = flt.cross_entropy(x, t, reduction="sum", label_smoothing=0.5)
    reference = F.cross_entropy(x.double(), t, reduction="sum", label_smoothing=0.5)
    torch.testing.assert_close(ours.double(), reference, rtol=2 * 2**-10, atol=0)


# -------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,probs,weight,smoothing", ce_options((0.0, 0.3)))
def test_cross_entropy_gradcheck(reduction, shape, probs, weight, smoothing):
    x, t, w = make_ce(shape, torch.float64, probs, weight, seed=11)
    x.requires_grad_(True)
    t.requires_grad_(probs)

    def fn(x, t):
        return flt.cross_entropy(
            x, t, weight=w, reduction=reduction, label_smoothing=smoothing,
            ignore_index=-100 if probs else IGNORE,
        )

    assert torch.autograd.gradcheck(fn, (x, t))


@pytest.mark.parametrize(
    "call",
    [
        lambda x, t, y: flt.cross_entropy(x, t),
        lambda x, t, y: flt.cross_entropy(x, torch.softmax(y, 1), reduction="none").sum(),
    ],
    ids=["ce", "ce-probs"],
)
def test_double_backward_raises(call):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, dtype=torch.float64)
    loss = call(x, torch.tensor([0, 1, 2, 3]), y)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_retain_graph_twice_with_scaled_grad_output():
    x = torch.randn(6, 7, requires_grad=True)
    t = torch.randint(0, 7, (6,))
    loss = 3.0 * flt.cross_entropy(x, t)
    loss.backward(retain_graph=True)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    (6.0 * F.cross_entropy(x2, t)).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_gradient_accumulates_into_leaf_without_copy():
    x = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(0, 8, (5,))
    flt.cross_entropy(x, t).backward()
    first = x.grad.clone()
    flt.cross_entropy(x, t, reduction="sum").backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.cross_entropy(x2, t).backward()
    F.cross_entropy(x2, t, reduction="sum").backward()
    torch.testing.assert_close(first, F.softmax(x2.detach(), 1).sub(F.one_hot(t, 8)).div(5))
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_big_gradients_allocated_through_numpy(dtype):
    """Gradients of 4 MiB and more come from NumPy (huge pages, see new_gradient): same
    values as torch, ordinary contiguous tensors that accumulate, step an optimizer
    and survive their array going out of scope."""
    x, t, _ = make_ce((128, 20000), dtype, False, False, 3)  # >= 4 MiB in every dtype
    assert x.numel() * x.element_size() >= _torch_ops._NUMPY_ALLOC_BYTES
    ours = loss_and_grads(flt.cross_entropy, x, t)
    ref = reference(F.cross_entropy, x, t)
    assert_close(ours[0], ref[0], dtype, "loss")
    assert_close(ours[1], ref[1], dtype, "grad")
    assert ours[1].is_contiguous() and ours[1].device.type == "cpu"
    leaf = x.detach().clone().requires_grad_(True)
    flt.cross_entropy(leaf, t).backward()
    flt.cross_entropy(leaf, t).backward()  # accumulates into the NumPy-backed grad
    ref_leaf = x.detach().double().requires_grad_(True)
    F.cross_entropy(ref_leaf, t).backward()
    F.cross_entropy(ref_leaf, t).backward()
    assert_close(leaf.grad, ref_leaf.grad, dtype, "accumulated grad")
    opt = torch.optim.SGD([leaf], lr=0.5)
    before = leaf.detach().clone()
    opt.step()
    torch.testing.assert_close(leaf.detach(), before - 0.5 * leaf.grad)
    y = torch.randn(x.shape).to(dtype)
    ours = loss_and_grads(flt.mse_loss, x, y, reduction="sum")  # (mean: half subnormals)
    ref = reference(F.mse_loss, x, y, reduction="sum")
    assert_close(ours[1], ref[1], dtype, "mse grad")


def test_big_gradient_through_the_custom_op():
    x = torch.randn(64, 20000, requires_grad=True)
    t = torch.randint(0, 20000, (64,))
    loss, grad, _ = _torch_ops.cross_entropy_op(x, t, None, 1, -100, 0.0, True, False)
    ref = torch.softmax(x.detach().double(), 1)
    ref[torch.arange(64), t] -= 1
    torch.testing.assert_close(grad.double(), ref / 64, rtol=1e-5, atol=1e-9)
    torch.library.opcheck(_torch_ops.cross_entropy_op, (x, t, None, 1, -100, 0.0, True, False))


def test_no_grad_and_target_only_grad():
    x = torch.randn(5, 8)
    p = torch.softmax(torch.randn(5, 8), 1).requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(flt.cross_entropy(x, p), F.cross_entropy(x, p))
    flt.cross_entropy(x, p, label_smoothing=0.2).backward()
    p2 = p.detach().clone().requires_grad_(True)
    F.cross_entropy(x, p2, label_smoothing=0.2).backward()
    torch.testing.assert_close(p.grad, p2.grad)


# ----------------------------------------------------- small problems go to torch


def test_small_problems_run_on_torchs_kernel(monkeypatch, fusedloss_kernel_at_every_size):
    """Below flt.TORCH_KERNEL_BELOW input elements (twice as many with a class
    weight, reduction "none" or K-dim input), eager cross-entropy is torch's own
    (same bits as F.cross_entropy, loss and gradient); from there on, fusedloss's
    kernel; with the LLM options or inplace_backward, always fusedloss's."""
    default = fusedloss_kernel_at_every_size
    assert default > 64 * 10
    monkeypatch.setattr(flt, "TORCH_KERNEL_BELOW", default)
    fused_calls = []
    apply = _torch_ops.cross_entropy_apply
    monkeypatch.setattr(_torch_ops, "cross_entropy_apply",
                        lambda *a: fused_calls.append(a[0].shape) or apply(*a))
    g = torch.Generator().manual_seed(0)
    rows = default // 1000 + 1  # rows x 1000: just past the common call's bound
    general = flt._GENERAL_CALL_FACTOR * default
    for shape, options, fused in [
        ((64, 10), {}, False), ((4, 5, 16, 16), {}, False), ((rows, 1000), {}, True),
        ((64, 1024), {}, True), ((rows, 1000), {"reduction": "sum"}, True),
        ((rows, 1000), {"reduction": "none"}, False), ((rows, 1000), {"weight": "w"}, False),
        ((rows, 10, 10, 10), {}, False), ((general // 1000 + 1, 1000), {"weight": "w"}, True),
        ((general // 1000 + 1, 1000), {"reduction": "none"}, True),
    ]:
        fused_calls.clear()
        x = torch.randn(shape, generator=g, requires_grad=True)
        t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
        x2 = x.detach().clone().requires_grad_()
        if "weight" in options:
            options = {"weight": torch.rand(shape[1], generator=g)}
        kw = dict(label_smoothing=0.1, **options)
        loss, ref = flt.cross_entropy(x, t, **kw).sum(), F.cross_entropy(x2, t, **kw).sum()
        loss.backward(), ref.backward()
        assert fused_calls == ([shape] if fused else []), (shape, options)
        if not fused:
            assert torch.equal(loss, ref) and torch.equal(x.grad, x2.grad)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(x.grad, x2.grad)
    x = torch.randn(8, 10, requires_grad=True)
    flt.cross_entropy(x, torch.zeros(8, dtype=torch.int64), softcap=30.0).backward()
    flt.cross_entropy(x * 1, torch.zeros(8, dtype=torch.int64), inplace_backward=True).backward()
    assert fused_calls[-2:] == [(8, 10), (8, 10)]


# ---------------------------------------------------------------- inplace_backward


def _logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(6, 4, generator=g)
    w = torch.randn(4, 9, generator=g, requires_grad=True)
    return h, w, torch.randint(0, 9, (6,), generator=g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_inplace_backward_gradients(reduction):
    h, w, t = _logits()
    logits = h @ w
    loss = flt.cross_entropy(logits, t, reduction=reduction, label_smoothing=0.1,
                             inplace_backward=True)
    (2.0 * loss).backward()
    w2 = w.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(h @ w2, t, reduction=reduction, label_smoothing=0.1)
    (2.0 * ref).backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(w.grad, w2.grad)


def test_inplace_backward_module():
    h, w, t = _logits(1)
    crit = flt.CrossEntropyLoss(inplace_backward=True)
    assert "inplace_backward=True" in repr(crit)
    crit(h @ w, t).backward()
    w2 = w.detach().clone().requires_grad_(True)
    torch.nn.CrossEntropyLoss()(h @ w2, t).backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_inplace_backward_caught_by_version_counter():
    """An op that saved the logits before the loss overwrote them."""
    h, w, t = _logits(2)
    logits = h @ w
    aux = logits.pow(2).mean()  # pow saves its input
    loss = flt.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + aux).backward()


def test_inplace_backward_logits_used_afterwards_raises():
    h, w, t = _logits(3)
    logits = h @ w
    loss = flt.cross_entropy(logits, t, inplace_backward=True)
    later = (logits * 2).sum()
    with pytest.raises(RuntimeError, match="overwritten"):
        (loss + later).backward()


def _lm_logits(seed=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 3, 4, generator=g)
    w = torch.randn(4, 9, generator=g, requires_grad=True)
    return h, w, torch.randint(0, 9, (2, 3), generator=g)


@pytest.mark.parametrize("view", ["view", "reshape", "flatten", "full_slice", "partial_slice"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_inplace_backward_on_views(view, reduction):
    """A language model's ``logits.view(-1, V)`` (a view of a non-leaf): a reshape of
    the whole tensor is overwritten through its base; a partial view gets its own
    gradient buffer. Either way the gradients are torch's."""
    make = {
        "view": lambda z, t: (z.view(-1, 9), t.view(-1)),
        "reshape": lambda z, t: (z.reshape(-1, 9), t.reshape(-1)),
        "flatten": lambda z, t: (z.flatten(0, 1), t.flatten()),
        "full_slice": lambda z, t: (z.view(-1, 9)[:, :9], t.view(-1)),
        "partial_slice": lambda z, t: (z[1], t[1]),
    }[view]
    h, w, t = _lm_logits()
    logits, tt = make(h @ w, t)
    loss = flt.cross_entropy(logits, tt, reduction=reduction, inplace_backward=True)
    w2 = w.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(*make(h @ w2, t), reduction=reduction)
    upstream = torch.linspace(0.5, 2.0, ref.numel()).view(ref.shape)
    (loss * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(w.grad, w2.grad)


def test_inplace_backward_view_base_used_afterwards_raises():
    h, w, t = _lm_logits(5)
    logits = h @ w
    loss = flt.cross_entropy(logits.view(-1, 9), t.view(-1), inplace_backward=True)
    later = (logits * 2).sum()
    with pytest.raises(RuntimeError, match="overwritten"):
        (loss + later).backward()


def test_inplace_backward_refuses_leaf():
    x = torch.randn(4, 5, requires_grad=True)
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        flt.cross_entropy(x, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    assert torch.equal(x.detach(), before)


# ---------------------------------------------------- layouts, devices, fallbacks


def test_non_contiguous_inputs():
    base = torch.randn(9, 6, 3, dtype=torch.float64)
    x = base.permute(2, 1, 0)[:, :, ::2].requires_grad_(True)  # (3, 6, 5), strided
    t = torch.randint(0, 6, (5, 3)).t()
    loss, gx, _ = loss_and_grads(flt.cross_entropy, x, t, reduction="none")
    rloss, rgx, _ = loss_and_grads(F.cross_entropy, x, t, reduction="none")
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(gx, rgx)


def test_meta_tensors_use_torch():
    x = torch.empty(4, 5, device="meta", requires_grad=True)
    t = torch.empty(4, dtype=torch.long, device="meta")
    loss = flt.cross_entropy(x, t)
    assert loss.device.type == "meta" and loss.shape == ()


def test_non_cpu_falls_back_to_torch(monkeypatch):
    """The device check routes to torch (simulated: no GPU here)."""
    calls = []
    real = F.cross_entropy
    monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    flt.cross_entropy(torch.randn(3, 4), torch.randint(0, 4, (3,)))
    assert calls == [1]


def test_empty_input_agrees_with_torch():
    empty = torch.empty(0, 5, requires_grad=True)
    torch.testing.assert_close(
        flt.cross_entropy(empty, torch.empty(0, dtype=torch.long)),
        F.cross_entropy(empty, torch.empty(0, dtype=torch.long)),
        equal_nan=True,
    )


# ------------------------------------------------------- negative-bit views


class _TorchNamesakes:
    """torch's function or module of each name in ``flt.__all__``; the losses without a
    torch namesake written in torch ops (DESIGN.md's formulas)."""

    def __getattr__(self, name):
        return getattr(F, name, None) or getattr(torch.nn, name)

    @staticmethod
    def gan_discriminator_loss(real, fake):
        real_term, fake_term = DISCRIMINATOR["minimax"]
        return real_term(real).mean() + fake_term(fake).mean()

    @staticmethod
    def gan_generator_loss(fake):
        return GENERATOR["non_saturating"](fake).mean()

    @staticmethod
    def kl_div_with_logits(x, t):
        return F.kl_div(F.log_softmax(x, -1), F.log_softmax(t, -1), reduction="batchmean",
                        log_target=True)

    @staticmethod
    def KLDivWithLogitsLoss():
        return _TorchNamesakes.kl_div_with_logits


def _linear_ce_module(m, dtype, w):
    """m.LinearCrossEntropyLoss with the same linear weight for ours and torch's."""
    module = m.LinearCrossEntropyLoss(8, 5, weight=w, dtype=dtype)
    with torch.no_grad():
        module.linear.weight.copy_(torch.linspace(-1, 1, 40).view(5, 8))
    return module


# name -> (kinds of its tensors, call(m, dtype, *tensors) with m = flt or _TorchNamesakes()).
# Kinds (batch 4, 5 classes): x logits / real values, p probabilities, lp log-probabilities,
# q a distribution per row, i class indices, w class weight, we elementwise weight, pw
# pos_weight, h (4, 8) hidden states, lw (5, 8) linear weight, b (5,) bias; tl teacher
# logits (no gradient: a constant to kl_div_with_logits).
NEG_VIEW_CASES = {
    "cross_entropy": ("x i w", lambda m, d, x, i, w: m.cross_entropy(x, i, w, reduction="none")),
    "cross_entropy(probabilities)": ("x q w", lambda m, d, x, q, w: m.cross_entropy(x, q, w)),
    "CrossEntropyLoss": ("x i w", lambda m, d, x, i, w: m.CrossEntropyLoss(w)(x, i)),
    "nll_loss": ("lp i w", lambda m, d, x, i, w: m.nll_loss(x, i, w)),
    "NLLLoss": ("lp i w", lambda m, d, x, i, w: m.NLLLoss(w, reduction="sum")(x, i)),
    "multi_margin_loss": ("x i w", lambda m, d, x, i, w: m.multi_margin_loss(x, i, weight=w)),
    "MultiMarginLoss": ("x i w", lambda m, d, x, i, w: m.MultiMarginLoss(p=2, weight=w)(x, i)),
    "mse_loss": ("x x", lambda m, d, x, t: m.mse_loss(x, t, reduction="none")),
    "MSELoss": ("x x", lambda m, d, x, t: m.MSELoss()(x, t)),
    "l1_loss": ("x x", lambda m, d, x, t: m.l1_loss(x, t)),
    "L1Loss": ("x x", lambda m, d, x, t: m.L1Loss(reduction="sum")(x, t)),
    "huber_loss": ("x x we", lambda m, d, x, t, w: m.huber_loss(x, t, delta=0.5, weight=w)),
    "HuberLoss": ("x x", lambda m, d, x, t: m.HuberLoss(delta=0.5)(x, t)),
    "smooth_l1_loss": ("x x", lambda m, d, x, t: m.smooth_l1_loss(x, t, beta=0.5)),
    "SmoothL1Loss": ("x x", lambda m, d, x, t: m.SmoothL1Loss(beta=0.5)(x, t)),
    "binary_cross_entropy": ("p p we", lambda m, d, x, t, w: m.binary_cross_entropy(x, t, w)),
    "BCELoss": ("p p we", lambda m, d, x, t, w: m.BCELoss(w)(x, t)),
    "binary_cross_entropy_with_logits": (
        "x p we pw", lambda m, d, x, t, w, pw: m.binary_cross_entropy_with_logits(
            x, t, w, pos_weight=pw, reduction="none")),
    "BCEWithLogitsLoss": ("x p we pw", lambda m, d, x, t, w, pw: m.BCEWithLogitsLoss(
        w, pos_weight=pw)(x, t)),
    "kl_div": ("lp q", lambda m, d, x, t: m.kl_div(x, t, reduction="batchmean")),
    "kl_div(log_target)": ("lp lp", lambda m, d, x, t: m.kl_div(x, t, reduction="sum",
                                                                 log_target=True)),
    "KLDivLoss": ("lp q", lambda m, d, x, t: m.KLDivLoss(reduction="batchmean")(x, t)),
    "kl_div_with_logits": ("x tl", lambda m, d, x, t: m.kl_div_with_logits(x, t)),
    "KLDivWithLogitsLoss": ("x tl", lambda m, d, x, t: m.KLDivWithLogitsLoss()(x, t)),
    "gan_discriminator_loss": ("x x", lambda m, d, r, f: m.gan_discriminator_loss(r, f)),
    "gan_generator_loss": ("x", lambda m, d, f: m.gan_generator_loss(f)),
    "linear_cross_entropy": ("h lw i b w", lambda m, d, h, lw, i, b, w: m.linear_cross_entropy(
        h, lw, i, linear_bias=b, weight=w)),
    "LinearCrossEntropyLoss": ("h i w", lambda m, d, h, i, w: _linear_ce_module(m, d, w)(h, i)),
}
_NO_GRAD_KINDS = {"i", "w", "we", "pw", "tl"}


def _tensor_of_kind(kind, g):
    shapes = {"h": (4, 8), "lw": (5, 8), "b": (5,), "w": (5,), "pw": (5,), "i": (4,)}
    shape = shapes.get(kind, (4, 5))
    if kind == "i":
        return torch.randint(0, 5, shape, generator=g)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    return {"p": torch.sigmoid(z), "lp": torch.log_softmax(z, -1), "q": torch.softmax(z, -1),
            "w": z.abs() + 0.5, "we": z.abs() + 0.5, "pw": z.abs() + 0.5}.get(kind, z)


def _neg_view_results(call, m, dtype, values, kinds, neg):
    """(loss, gradients of each tensor that takes one); ``neg``: each tensor passed as a
    view with the negative bit set (its memory holds minus the values), the input of
    torch's test_neg_view."""
    leaves = [v.to(dtype if v.is_floating_point() else v.dtype).requires_grad_(
        k not in _NO_GRAD_KINDS) for v, k in zip(values, kinds)]
    passed = [torch._neg_view(v.neg()) if neg else v for v in leaves]
    assert not neg or all(t.is_neg() for t in passed)
    loss = call(m, dtype, *passed)
    wrt = [v for v in leaves if v.requires_grad]
    gout = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    return [loss.detach(), *torch.autograd.grad(loss, wrt, gout)]


def test_neg_view_cases_cover_every_loss():
    assert {name.split("(")[0] for name in NEG_VIEW_CASES} == set(flt.__all__)


@pytest.mark.parametrize("name,dtype", [
    pytest.param(name, dtype, id=f"{name}-{dtype}") for name in NEG_VIEW_CASES for dtype in DTYPES
    if not ("ulti" in name and dtype in _torch_ops.HALF)  # (torch: no half multi_margin_loss)
])
def test_negative_bit_views_like_torch(name, dtype):
    """Every tensor (input, target, weight, pos_weight) with torch's negative bit set,
    as torch's test_neg_view passes them: loss and gradients are torch float64's on
    the plain values (NumPy cannot see the bit: fusedloss resolves it)."""
    kinds, call = NEG_VIEW_CASES[name]
    kinds = kinds.split()
    g = torch.Generator().manual_seed(len(name))
    values = [_tensor_of_kind(k, g) for k in kinds]
    values = [v.to(dtype) if v.is_floating_point() else v for v in values]  # (rounded once)
    ours = _neg_view_results(call, flt, dtype, values, kinds, neg=True)
    ref = _neg_view_results(call, _TorchNamesakes(), torch.float64, values, kinds, neg=False)
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert_close(a, b.double(), dtype, f"{name} {'loss' if k == 0 else f'grad {k}'}")


def test_negative_bit_views_under_torch_compile():
    """torch.compile(fullgraph=True) of a loss on views with the bit set (leaves here:
    dynamo warns when it reads a non-leaf's .grad): fake tensors and the custom op."""
    torch._dynamo.reset()
    compiled = torch.compile(flt.binary_cross_entropy_with_logits, fullgraph=True,
                             backend="aot_eager")
    g = torch.Generator().manual_seed(5)
    x, t, w, pw = (_tensor_of_kind(k, g) for k in ["x", "p", "we", "pw"])
    x_neg, t_neg = (torch._neg_view(v.neg()).detach().requires_grad_(True) for v in (x, t))
    assert x_neg.is_leaf and x_neg.is_neg()
    ours = compiled(x_neg, t_neg, torch._neg_view(w.neg()), pos_weight=torch._neg_view(pw.neg()))
    x, t = x.requires_grad_(True), t.requires_grad_(True)
    expected = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw)
    for a, b in zip([ours, *torch.autograd.grad(ours, [x_neg, t_neg])],
                    [expected, *torch.autograd.grad(expected, [x, t])]):
        assert_close(a.detach(), b.detach(), torch.float64, "compiled")


def test_inplace_backward_of_a_negative_bit_view():
    """The kernel reads a resolved copy of such logits, and their base holds the
    negated values: the gradient gets its own buffer, not the logits' storage."""
    x, t, _ = make_ce((8, 11), torch.float64, False, False, seed=3)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = flt.cross_entropy(torch._neg_view(a * -1.0), t, inplace_backward=True)
    ours.backward()
    expected = F.cross_entropy(b, t)
    expected.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(a.grad, b.grad)


# ------------------------------------------------------------------ bad input


BAD_CE = {
    "index out of range": lambda: (torch.randn(3, 4), torch.tensor([0, 4, 1]), {}),
    "negative index": lambda: (torch.randn(3, 4), torch.tensor([0, -1, 1]), {}),
    "int32 target": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 1], dtype=torch.int32), {}),
    "float target wrong shape": lambda: (torch.randn(3, 4), torch.rand(3, 5), {}),
    "batch mismatch": lambda: (torch.randn(3, 4), torch.tensor([0, 1]), {}),
    "bad reduction": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]), {"reduction": "avg"}),
    "smoothing > 1": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                              {"label_smoothing": 1.5}),
    "weight length": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                              {"weight": torch.rand(5)}),
    "weight dtype": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                             {"weight": torch.rand(4, dtype=torch.float64)}),
    "ignore_index with probs": lambda: (torch.randn(3, 4), torch.rand(3, 4),
                                        {"ignore_index": 1}),
    "int input": lambda: (torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]), {}),
    "scalar input": lambda: (torch.tensor(1.0), torch.tensor(0), {}),
    "list input": lambda: ([[1.0, 2.0]], torch.tensor([0]), {}),
    "ignore_index above int64": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                         {"ignore_index": 2**63}),
    "ignore_index below int64": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                         {"ignore_index": -(2**63) - 1}),
}


def _exception(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e)
    return None


@pytest.mark.parametrize("case", list(BAD_CE), ids=list(BAD_CE))
def test_bad_cross_entropy_input_raises_like_torch(case):
    x, t, kw = BAD_CE[case]()
    expected = _exception(lambda: F.cross_entropy(x, t, **kw).sum().item())
    assert expected is not None, "torch accepts this case; the table is wrong"
    got = _exception(lambda: flt.cross_entropy(x, t, **kw))
    assert got is expected


def test_out_of_range_target_raises_before_writing():
    x = torch.randn(3, 4).mul(1).requires_grad_(True)
    logits = x * 1
    snapshot = logits.detach().clone()
    with pytest.raises(IndexError):
        flt.cross_entropy(logits, torch.tensor([0, 9, 1]), inplace_backward=True)
    assert torch.equal(logits.detach(), snapshot)


# --------------------------------------------------------- legacy args, modules


def test_legacy_size_average_reduce_warn_like_torch():
    x = torch.randn(5, 6)
    t = torch.randint(0, 6, (5,))
    msg = "size_average and reduce args will be deprecated"
    for sa, rd in [(False, None), (None, False), (True, True)]:
        with pytest.warns(UserWarning, match=msg):
            ours = flt.cross_entropy(x, t, size_average=sa, reduce=rd)
        with pytest.warns(UserWarning, match=msg):
            ref = F.cross_entropy(x, t, size_average=sa, reduce=rd)
        torch.testing.assert_close(ours, ref)
    with pytest.warns(UserWarning, match=msg):
        m = flt.CrossEntropyLoss(size_average=False)
    assert m.reduction == "sum"


@pytest.mark.parametrize(
    "ours,theirs,kwargs",
    [
        (flt.CrossEntropyLoss, torch.nn.CrossEntropyLoss,
         {"weight": torch.rand(6) + 0.1, "ignore_index": 2, "label_smoothing": 0.1}),
        (flt.CrossEntropyLoss, torch.nn.CrossEntropyLoss, {"reduction": "none"}),
    ],
)
def test_modules_are_drop_ins(ours, theirs, kwargs):
    a, b = ours(**kwargs), theirs(**kwargs)
    assert isinstance(a, theirs)
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(5, 6, requires_grad=True)
    t = torch.tensor([0, 2, 5, 2, 1])
    la, lb = a(x, t), b(x, t)
    torch.testing.assert_close(la, lb)
    ga = torch.autograd.grad(la.sum(), x)[0]
    gb = torch.autograd.grad(lb.sum(), x)[0]
    torch.testing.assert_close(ga, gb)


def test_custom_ops_pass_opcheck():
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.tensor([0, 1, 5, 2])
    p = torch.softmax(torch.randn(4, 6), 1).requires_grad_(True)
    w = torch.rand(6)
    torch.library.opcheck(_torch_ops.cross_entropy_op, (x, t, w, 1, -100, 0.1, True, False))
    torch.library.opcheck(_torch_ops.cross_entropy_op, (x, p, None, 0, -100, 0.0, True, False))
    h = x.detach().bfloat16().requires_grad_(True)
    torch.library.opcheck(_torch_ops.cross_entropy_op, (h, t, None, 2, -100, 0.0, True, True))


def test_import_fusedloss_does_not_import_torch():
    code = "import sys, fusedloss; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_with_an_older_torch_says_which_torch_it_needs():
    """A torch before 2.13 (no F.linear_cross_entropy) gets an ImportError naming the
    version, not an AttributeError from inside the layer."""
    code = ("import torch; from torch.torch_version import TorchVersion; "
            "torch.__version__ = TorchVersion('2.11.0+cu130'); import fusedloss.torch")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "ImportError: fusedloss.torch needs torch 2.13 or newer (found 2.11.0+cu130)" in out.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cpu_autocast_dtypes_like_torch(dtype, reduction):
    """Under CPU autocast torch runs cross-entropy in float32: float32 loss,
    gradient in the input's dtype. The weight may then be float32 too."""
    x, t, _ = make_ce((6, 9), dtype, False, False, seed=4)
    w = torch.rand(9) + 0.5
    cases = [
        (flt.cross_entropy, F.cross_entropy, t, {"weight": w, "label_smoothing": 0.1}),
    ]
    for ours, theirs, target, kw in cases:
        with torch.autocast("cpu", dtype=dtype):
            a = loss_and_grads(ours, x, target, reduction=reduction, **kw)
            b = loss_and_grads(theirs, x, target, reduction=reduction, **kw)
        assert a[0].dtype == b[0].dtype == torch.float32
        assert a[1].dtype == b[1].dtype == dtype
        rtol, atol = tolerances(dtype)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=atol * float(b[1].abs().max()))


def test_torch_func_transforms_use_torch_semantics() -> None:
    """Under torch.func (grad, vmap) the losses give torch's results (torch's own code runs)."""
    x = torch.randn(4, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (4,))
    ours = torch.func.grad(lambda z: flt.cross_entropy(z, t, label_smoothing=0.1))(x)
    ref = torch.func.grad(lambda z: F.cross_entropy(z, t, label_smoothing=0.1))(x)
    torch.testing.assert_close(ours, ref)
    a, b = torch.randn(3, 4), torch.randint(0, 4, (3,))
    torch.testing.assert_close(
        torch.func.vmap(flt.cross_entropy)(a, b), torch.func.vmap(F.cross_entropy)(a, b)
    )
