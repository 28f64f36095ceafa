"""fusedloss.torch's nll_loss / NLLLoss and multi_margin_loss / MultiMarginLoss against
torch.nn.functional: values, gradients, options, compile, modules, fallbacks, errors.

References are torch's own functions in float64 on the very values given; the
tolerances per dtype are those of tests/test_torch.py (float32: rtol 1e-5, atol
1e-6 * max|ref|; half types: 4 eps, read as they are and rounded once).
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from fusedloss import _torch_class_losses  # noqa: E402
from test_torch import (  # noqa: E402
    DTYPES,
    REDUCTIONS,
    _exception,
    assert_close,
    loss_and_grads,
    reference,
    tolerances,
)

IGNORE = 1  # a real class id used as ignore_index


def make_nll(shape, dtype, weight, seed, ignore=IGNORE):
    g = torch.Generator().manual_seed(seed)
    classes = shape[0] if len(shape) == 1 else shape[1]
    x = torch.log_softmax(torch.randn(shape, generator=g) * 2, 0 if len(shape) == 1 else 1)
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, classes, tshape, generator=g)
    if t.dim():  # ~25 % ignored
        t = torch.where(torch.rand(tshape, generator=g) < 0.25, ignore, t)
    elif t == ignore:  # one sample: not ignored (a mean over nothing is NaN, tested elsewhere)
        t = (t + 1) % classes
    w = (torch.rand(classes, generator=g) + 0.1).to(dtype) if weight else None
    return x.to(dtype), t, w


def make_margin(shape, dtype, weight, seed):
    g = torch.Generator().manual_seed(seed)
    classes = shape[-1]
    x = torch.randn(shape, generator=g).to(dtype)
    t = torch.randint(0, classes, shape[:1] if len(shape) == 2 else (), generator=g)
    w = (torch.rand(classes, generator=g) + 0.1).to(dtype) if weight else None
    return x, t, w


def _id(*parts):
    return "-".join(str(p) for p in parts if p != "")


NLL_OPTIONS = [
    pytest.param(s, w, ig, id=_id("x".join(map(str, s)), "weight" if w else "", f"ignore{ig}"))
    for s, w, ig in itertools.product([(11,), (8, 11), (3, 5, 4, 2)], (False, True), (-100, IGNORE))
]
MARGIN_OPTIONS = [
    pytest.param(s, w, p, m, id=_id("x".join(map(str, s)), "weight" if w else "", f"p{p}",
                                    f"margin{m}"))
    for s, w, p, m in itertools.product([(11,), (8, 11)], (False, True), (1, 2), (1.0, 0.7))
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weight,ignore", NLL_OPTIONS)
def test_nll_loss_matches_torch(dtype, reduction, shape, weight, ignore):
    x, t, w = make_nll(shape, dtype, weight, seed=len(shape) + weight)
    kw = dict(weight=w, ignore_index=ignore, reduction=reduction)
    loss, gx, _ = loss_and_grads(flt.nll_loss, x, t, **kw)
    rloss, rgx, _ = reference(F.nll_loss, x, t, **kw)
    assert_close(loss, rloss, dtype, "loss")
    assert_close(gx, rgx, dtype, "grad input")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weight,p,margin", MARGIN_OPTIONS)
def test_multi_margin_loss_matches_torch(dtype, reduction, shape, weight, p, margin):
    # torch has no float16/bfloat16 multi_margin_loss on the CPU: the fused one reads
    # them; the reference is torch float64 on the same values.
    x, t, w = make_margin(shape, dtype, weight, seed=len(shape) + 2 * p)
    kw = dict(p=p, margin=margin, weight=w, reduction=reduction)
    loss, gx, _ = loss_and_grads(flt.multi_margin_loss, x, t, **kw)
    rloss, rgx, _ = reference(F.multi_margin_loss, x, t, **kw)
    assert_close(loss, rloss, dtype, "loss")
    assert_close(gx, rgx, dtype, "grad input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_same_dtype_torch(dtype):
    """Also against torch at the same precision, default options."""
    for make, ours, theirs in [(make_nll, flt.nll_loss, F.nll_loss),
                               (make_margin, flt.multi_margin_loss, F.multi_margin_loss)]:
        x, t, _ = make((16, 33), dtype, False, seed=3)
        a, b = loss_and_grads(ours, x, t), loss_and_grads(theirs, x, t)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("shape", [(1, 5), (5,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin_target_shapes_like_torch(shape, reduction):
    # One sample: a 0-d or (1,) target; the unreduced loss takes the target's shape.
    x = torch.randn(shape, dtype=torch.float64)
    for t in (torch.tensor(3), torch.tensor([3])):
        a = loss_and_grads(flt.multi_margin_loss, x, t, p=2, reduction=reduction)
        b = loss_and_grads(F.multi_margin_loss, x, t, p=2, reduction=reduction)
        assert a[0].shape == b[0].shape
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])


def test_half_types_are_not_upcast(monkeypatch):
    seen = []
    for name in ("nll", "multi_margin"):
        real = getattr(_torch_class_losses._core, name)

        def spy(inp, *args, real=real, name=name):
            seen.append((name, str(inp.dtype)))
            return real(inp, *args)

        monkeypatch.setattr(_torch_class_losses._core, name, spy)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 6, dtype=dtype, requires_grad=True)
        t = torch.tensor([0, 1, 2, 3])
        (flt.nll_loss(x, t) + flt.multi_margin_loss(x, t)).backward()
        assert x.grad.dtype == dtype
    assert seen == [("nll", "float16"), ("multi_margin", "float16"),
                    ("nll", "uint16"), ("multi_margin", "uint16")]


# -------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weight,ignore", NLL_OPTIONS)
def test_nll_loss_gradcheck(reduction, shape, weight, ignore):
    x, t, w = make_nll(shape, torch.float64, weight, seed=11)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: flt.nll_loss(x, t, weight=w, ignore_index=ignore, reduction=reduction), (x,)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weight,p,margin", MARGIN_OPTIONS)
def test_multi_margin_loss_gradcheck(reduction, shape, weight, p, margin):
    x, t, w = make_margin(shape, torch.float64, weight, seed=12)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: flt.multi_margin_loss(x, t, p=p, margin=margin, weight=w, reduction=reduction),
        (x,),
    )


@pytest.mark.parametrize("name", ["nll_loss", "multi_margin_loss"])
def test_double_backward_raises(name):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = getattr(flt, name)(x, torch.tensor([0, 1, 2, 3]), reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("name", ["nll_loss", "multi_margin_loss"])
def test_retain_graph_and_accumulation(name):
    x = torch.randn(6, 7, requires_grad=True)
    t = torch.randint(0, 7, (6,))
    loss = 3.0 * getattr(flt, name)(x, t)
    loss.backward(retain_graph=True)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    (6.0 * getattr(F, name)(x2, t)).backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("name", ["nll_loss", "multi_margin_loss"])
def test_no_grad_gives_the_loss(name):
    x = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(0, 8, (5,))
    with torch.no_grad():
        loss = getattr(flt, name)(x, t)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, getattr(F, name)(x, t).detach())


# -------------------------------------------------------------- compile, custom ops


def test_torch_compile_fullgraph_matches_eager_torch():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 9)
    ref_lin = torch.nn.Linear(6, 9)
    ref_lin.load_state_dict(lin.state_dict())
    w = torch.rand(9) + 0.5

    def objective(m, x, t, tk, nll, margin, crit):
        out = m(x)
        logp = torch.log_softmax(out, 1)
        k = logp.view(4, 2, 9).transpose(1, 2)  # (N, C, d1): the K-dim layout
        return (
            nll(logp, t, weight=w, ignore_index=2)
            + nll(k, tk, reduction="none").sum() * 0.1
            + margin(out, t, p=2, margin=0.5, weight=w)
            + crit(out, t)
        )

    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 6, generator=g)
        t = torch.randint(0, 9, (8,), generator=g)
        tk = torch.randint(0, 9, (4, 2), generator=g)
        loss = compiled(lin, x, t, tk, flt.nll_loss, flt.multi_margin_loss,
                        flt.MultiMarginLoss(reduction="sum"))
        loss.backward()
        ref = objective(ref_lin, x, t, tk, F.nll_loss, F.multi_margin_loss,
                        torch.nn.MultiMarginLoss(reduction="sum"))
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(lin.parameters(), ref_lin.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert graphs, "nothing was compiled"
    assert all("fusedloss.nll_loss" in gr and "fusedloss.multi_margin_loss" in gr for gr in graphs)


def test_custom_ops_pass_opcheck():
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.tensor([0, 1, 5, 2])
    w = torch.rand(6)
    nll_op = _torch_class_losses.nll_loss_op
    margin_op = _torch_class_losses.multi_margin_loss_op
    torch.library.opcheck(nll_op, (x, t, w, 1, 1, True, False))
    torch.library.opcheck(nll_op, (x.detach().view(4, 3, 2).requires_grad_(), t.view(4, 1)
                                   .expand(4, 2).contiguous() % 3, None, 0, -100, True, False))
    torch.library.opcheck(margin_op, (x, t, w, 1, 2, 0.5, True, False))
    torch.library.opcheck(margin_op, (x, t, None, 0, 1, 1.0, True, False))
    h = x.detach().bfloat16().requires_grad_(True)
    torch.library.opcheck(nll_op, (h, t, None, 2, -100, True, True))
    torch.library.opcheck(margin_op, (h, t, None, 2, 1, 1.0, True, True))


# --------------------------------------------------------- modules, legacy args


@pytest.mark.parametrize(
    "ours,theirs,kwargs",
    [
        (flt.NLLLoss, torch.nn.NLLLoss, {"weight": torch.rand(6) + 0.1, "ignore_index": 2}),
        (flt.NLLLoss, torch.nn.NLLLoss, {"reduction": "none"}),
        (flt.MultiMarginLoss, torch.nn.MultiMarginLoss,
         {"p": 2, "margin": 0.5, "weight": torch.rand(6) + 0.1}),
        (flt.MultiMarginLoss, torch.nn.MultiMarginLoss, {"reduction": "sum"}),
    ],
)
def test_modules_are_drop_ins(ours, theirs, kwargs):
    a, b = ours(**kwargs), theirs(**kwargs)
    assert isinstance(a, theirs)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1]
    x = torch.randn(5, 6, requires_grad=True)
    t = torch.tensor([0, 2, 5, 2, 1])
    la, lb = a(x, t), b(x, t)
    torch.testing.assert_close(la, lb)
    ga = torch.autograd.grad(la.sum(), x)[0]
    gb = torch.autograd.grad(lb.sum(), x)[0]
    torch.testing.assert_close(ga, gb)


def test_legacy_size_average_reduce_warn_like_torch():
    x = torch.randn(5, 6)
    t = torch.randint(0, 6, (5,))
    msg = "size_average and reduce args will be deprecated"
    for name, module in [("nll_loss", "NLLLoss"), ("multi_margin_loss", "MultiMarginLoss")]:
        for sa, rd in [(False, None), (None, False), (True, True)]:
            with pytest.warns(UserWarning, match=msg):
                ours = getattr(flt, name)(x, t, size_average=sa, reduce=rd)
            with pytest.warns(UserWarning, match=msg):
                ref = getattr(F, name)(x, t, size_average=sa, reduce=rd)
            torch.testing.assert_close(ours, ref)
            with pytest.warns(UserWarning, match=msg):
                ours = getattr(flt, module)(size_average=sa, reduce=rd)(x, t)
            with pytest.warns(UserWarning, match=msg):
                ref = getattr(torch.nn, module)(size_average=sa, reduce=rd)(x, t)
            torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cpu_autocast_dtypes_like_torch(dtype, reduction):
    """Under CPU autocast torch runs both losses in float32: a float32 loss and a
    gradient in the input's dtype; the weight may then be float32."""
    x, t, _ = make_nll((6, 9), dtype, False, seed=4)
    w = torch.rand(9) + 0.5
    for ours, theirs, kw in [
        (flt.nll_loss, F.nll_loss, {"weight": w, "ignore_index": IGNORE}),
        (flt.multi_margin_loss, F.multi_margin_loss, {"weight": w, "p": 2}),
    ]:
        with torch.autocast("cpu", dtype=dtype):
            a = loss_and_grads(ours, x, t, reduction=reduction, **kw)
            b = loss_and_grads(theirs, x, t, reduction=reduction, **kw)
        assert a[0].dtype == b[0].dtype == torch.float32
        assert a[1].dtype == b[1].dtype == dtype
        rtol, atol = tolerances(dtype)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=atol * float(b[1].abs().max()))


# ---------------------------------------------------- layouts, devices, fallbacks


def test_non_contiguous_inputs():
    base = torch.randn(9, 6, 3, dtype=torch.float64)
    x = base.permute(2, 1, 0)[:, :, ::2]  # (3, 6, 5), strided
    t = torch.randint(0, 6, (5, 3)).t()
    for a, b in zip(loss_and_grads(flt.nll_loss, x, t, reduction="none"),
                    loss_and_grads(F.nll_loss, x.contiguous(), t, reduction="none")):
        torch.testing.assert_close(a, b)
    x2, t2 = base[:, :, 0].t(), torch.randint(0, 9, (12,))[::2]  # (6, 9), 6 targets
    assert not x2.is_contiguous() and not t2.is_contiguous()
    for a, b in zip(loss_and_grads(flt.multi_margin_loss, x2, t2, p=2),
                    loss_and_grads(F.multi_margin_loss, x2, t2, p=2)):
        torch.testing.assert_close(a, b)


def test_meta_tensors_use_torch():
    x = torch.empty(4, 5, device="meta", requires_grad=True)
    t = torch.empty(4, dtype=torch.long, device="meta")
    assert flt.nll_loss(x, t).device.type == "meta"
    assert flt.multi_margin_loss(x, t).device.type == "meta"


FALLBACKS = {
    "not on the cpu": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]), {}, True),
    # (sum: torch 2.13's multi_margin_loss mean over nothing reads uninitialised memory)
    "empty": lambda: (torch.empty(0, 4), torch.empty(0, dtype=torch.long), {"reduction": "sum"},
                      False),
    "weight requires grad": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                     {"weight": torch.rand(4, requires_grad=True)}, False),
    "weight of another dtype": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                        {"weight": torch.rand(4, dtype=torch.float64)}, False),
    "uint8 target (nll)": lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2],
                                                                   dtype=torch.uint8), {}, False),
    "complex input": lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.tensor([0, 1, 2]),
                              {}, False),
}


@pytest.mark.parametrize("name", ["nll_loss", "multi_margin_loss"])
@pytest.mark.parametrize("case", list(FALLBACKS), ids=list(FALLBACKS))
def test_fallbacks_call_torch(monkeypatch, name, case):
    """What the kernels do not cover goes to torch's own function, with torch's result
    or torch's error (the device check simulated: no GPU here)."""
    x, t, kw, off_cpu = FALLBACKS[case]()
    expected = _exception(lambda: getattr(F, name)(x, t, **kw))
    real = getattr(F, name)
    calls = []
    monkeypatch.setattr(F, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    if off_cpu:
        monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
    got = _exception(lambda: getattr(flt, name)(x, t, **kw))
    assert calls == [1]
    assert got is expected
    # (torch 2.13's multi_margin_loss of empty input with reduction="sum" returns
    # uninitialised memory: no value to compare with there; ours gives 0, see
    # test_multi_margin_over_no_samples.)
    if expected is None and not (case == "empty" and name == "multi_margin_loss"):
        monkeypatch.undo()
        torch.testing.assert_close(getattr(flt, name)(x, t, **kw), real(x, t, **kw),
                                   equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_margin_over_no_samples(dtype):
    """torch 2.13's CPU multi_margin_loss reduces no samples to uninitialised memory;
    ours gives the mean over nothing, NaN (as mse_loss and nll_loss), and the sum 0,
    with an empty gradient."""
    x = torch.empty(0, 4, dtype=dtype, requires_grad=True)
    t = torch.empty(0, dtype=torch.long)
    for loss in (flt.multi_margin_loss(x, t), flt.MultiMarginLoss(p=2)(x, t)):
        assert loss.dtype is dtype and loss.isnan()
        loss.backward()
        assert x.grad.shape == (0, 4)
    assert flt.multi_margin_loss(x, t, reduction="sum").item() == 0


def test_weight_requiring_grad_is_torchs_business():
    # torch does not differentiate nll_loss's weight: same error either way.
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.rand(4, requires_grad=True)
    t = torch.tensor([0, 1, 2])
    expected = _exception(lambda: F.nll_loss(x, t, weight=w).backward())
    assert _exception(lambda: flt.nll_loss(x, t, weight=w).backward()) is expected


def test_torch_func_transforms_use_torch_semantics():
    x = torch.randn(4, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (4,))
    for name in ("nll_loss", "multi_margin_loss"):
        ours = torch.func.grad(lambda z: getattr(flt, name)(z, t))(x)
        ref = torch.func.grad(lambda z: getattr(F, name)(z, t))(x)
        torch.testing.assert_close(ours, ref)


# ------------------------------------------------------------------ bad input


BOTH = ("nll_loss", "multi_margin_loss")
BAD = {
    "index out of range": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 4, 1]), {})),
    "negative index": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, -1, 1]), {})),
    "K-dim index out of range": (("nll_loss",), lambda: (
        torch.randn(2, 4, 3), torch.tensor([[0, 1, 2], [3, 4, 0]]), {})),
    "int32 target": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 1, 1], dtype=torch.int32),
                                    {})),
    "float target": (BOTH, lambda: (torch.randn(3, 4), torch.rand(3), {})),
    "batch mismatch": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 1]), {})),
    "bad reduction": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                     {"reduction": "avg"})),
    "weight length": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                     {"weight": torch.rand(5)})),
    "weight 2-d": (BOTH, lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                  {"weight": torch.rand(1, 4)})),
    "int input": (BOTH, lambda: (torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]), {})),
    "list input": (BOTH, lambda: ([[1.0, 2.0]], torch.tensor([0]), {})),
    # (torch's multi_margin_loss takes a 0-d input, and so does ours)
    "0-d input": (("nll_loss",), lambda: (torch.tensor(1.0), torch.tensor(0), {})),
    "ignore_index above int64": (("nll_loss",), lambda: (
        torch.randn(3, 4), torch.tensor([0, 1, 2]), {"ignore_index": 2**63})),
    "p = 3": (("multi_margin_loss",), lambda: (torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                               {"p": 3})),
    "3-d input": (("multi_margin_loss",), lambda: (torch.randn(3, 4, 2), torch.tensor([0, 1, 2]),
                                                   {})),
    "empty classes": (("multi_margin_loss",), lambda: (torch.randn(3, 0), torch.tensor([0, 0, 0]),
                                                       {})),
}


@pytest.mark.parametrize(
    "name,case", [(n, c) for c, (names, _) in BAD.items() for n in names],
    ids=[f"{n}-{c}" for c, (names, _) in BAD.items() for n in names],
)
def test_bad_input_raises_like_torch(name, case):
    x, t, kw = BAD[case][1]()
    expected = _exception(lambda: getattr(F, name)(x, t, **kw).sum().item())
    assert expected is not None, "torch accepts this case; the table is wrong"
    assert _exception(lambda: getattr(flt, name)(x, t, **kw)) is expected
