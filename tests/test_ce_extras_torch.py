"""fusedloss.torch.cross_entropy / CrossEntropyLoss with the LLM options: values,
gradients (input and probability target), return_lse, num_items_in_batch (number or
tensor), torch.compile, gradcheck, the torch-op route and bad options.

The reference is ``ce_extras_reference`` (tests/test_ce_extras.py: the documented loss
composed of torch ops) in float64 on the very values given; tolerances per dtype as
tests/test_torch.py states them.
"""

from __future__ import annotations

import math
import pickle

import pytest

torch = pytest.importorskip("torch")

import fusedloss.torch as flt  # noqa: E402
from test_ce_extras import OPTION_SETS, ce_extras_reference, transformed  # noqa: E402
from test_torch import (  # noqa: E402
    CE_SHAPES,
    DTYPES,
    IGNORE,
    REDUCTIONS,
    assert_close,
    ce_options,
    loss_and_grads,
    make_ce,
    reference,
)

OPTIONS = {**OPTION_SETS, "num_items": {"num_items_in_batch": 13}}
OPTIONS["all_num_items"] = {**OPTION_SETS["all"], "num_items_in_batch": 6.5}


def reductions_and(options):
    """(reduction, options) pairs: num_items_in_batch goes with the mean only."""
    return [pytest.param(r, o, id=f"{r}-{o}") for o in options for r in REDUCTIONS
            if r == "mean" or "num_items_in_batch" not in OPTIONS[o]]


def _kw(probs, reduction, smoothing, options):
    return dict(reduction=reduction, label_smoothing=smoothing,
                ignore_index=-100 if probs else IGNORE, **OPTIONS[options])


@pytest.mark.parametrize("reduction,options", reductions_and(sorted(OPTIONS)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,probs,weight,smoothing", ce_options((0.0, 0.15)))
def test_matches_reference(dtype, reduction, shape, probs, weight, smoothing, options):
    x, t, w = make_ce(shape, dtype, probs, weight, seed=hash((shape, probs, weight)) % 1000)
    kw = _kw(probs, reduction, smoothing, options)
    loss, gx, gt = loss_and_grads(flt.cross_entropy, x, t, weight=w, **kw)
    rloss, rgx, rgt = reference(ce_extras_reference, x, t, weight=w, **kw)
    assert_close(loss, rloss, dtype, "loss")
    assert_close(gx, rgx, dtype, "grad input")
    if probs:
        assert_close(gt, rgt, dtype, "grad target")


@pytest.mark.parametrize("reduction,options",
                         reductions_and(["all", "all_num_items", "negative_scale_cap"]))
@pytest.mark.parametrize("shape,probs,weight,smoothing", ce_options((0.0, 0.3)))
def test_gradcheck(reduction, shape, probs, weight, smoothing, options):
    x, t, w = make_ce(shape, torch.float64, probs, weight, seed=11)
    x.requires_grad_(True)
    t.requires_grad_(probs)
    kw = _kw(probs, reduction, smoothing, options)
    assert torch.autograd.gradcheck(lambda x, t: flt.cross_entropy(x, t, weight=w, **kw), (x, t))


def _reference_lse(x, t, options, ignore_index):
    z = transformed(x.double(), options.get("logit_scale", 1.0), options.get("softcap"))
    lse = torch.logsumexp(z, 0 if x.dim() == 1 else 1)
    return lse if t.is_floating_point() else lse.masked_fill(t == ignore_index, math.nan)


@pytest.mark.parametrize("route", ["no_grad", "autograd", "inplace_backward"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,probs", [((11,), False), ((8, 11), False), ((8, 11), True),
                                         ((3, 5, 4, 2), False)])
def test_return_lse(dtype, shape, probs, route):
    x, t, _ = make_ce(shape, dtype, probs, False, seed=3)
    options = OPTIONS["all"]
    ignore = -100 if probs else IGNORE
    logits = x
    if route != "no_grad":
        x.requires_grad_(True)
        logits = x * 1 if route == "inplace_backward" else x  # model output, not a leaf
    loss, lse = flt.cross_entropy(logits, t, ignore_index=ignore, return_lse=True,
                                  inplace_backward=route == "inplace_backward", **options)
    expected_dtype = torch.float64 if dtype is torch.float64 else torch.float32
    assert lse.dtype is expected_dtype and not lse.requires_grad
    assert lse.shape == (shape[:1] + shape[2:] if len(shape) > 1 else ())
    rtol = 1e-12 if dtype is torch.float64 else 1e-6
    ref = _reference_lse(x.detach(), t, options, ignore)
    torch.testing.assert_close(lse.double(), ref, rtol=rtol, atol=0, equal_nan=True)
    alone = flt.cross_entropy(x.detach(), t, ignore_index=ignore, **options)
    torch.testing.assert_close(loss.detach(), alone, rtol=0, atol=0)  # asking changes nothing
    if route != "no_grad":
        loss.backward()


def test_num_items_in_batch_as_a_tensor():
    x, t, w = make_ce((8, 11), torch.float64, False, True, seed=5)
    items = torch.tensor(13)
    kw = dict(weight=w, ignore_index=IGNORE, softcap=4.0)
    loss, gx, _ = loss_and_grads(flt.cross_entropy, x, t, num_items_in_batch=items, **kw)
    rloss, rgx, _ = reference(ce_extras_reference, x, t, num_items_in_batch=13, **kw)
    assert_close(loss, rloss, torch.float64, "loss")
    assert_close(gx, rgx, torch.float64, "grad input")


def test_torch_compile_fullgraph_traces_the_options():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    options = dict(logit_scale=0.8, softcap=5.0, lse_square_scale=1e-3)

    def objective(x, t, p, items):
        loss, lse = flt.cross_entropy(x, t, ignore_index=IGNORE, num_items_in_batch=items,
                                      return_lse=True, **options)
        return loss + flt.cross_entropy(x, p, reduction="none", **options).mean(), lse

    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    for seed in range(2):
        x, t, _ = make_ce((8, 11), torch.float32, False, False, seed=seed)
        p = make_ce((8, 11), torch.float32, True, False, seed=seed)[1].requires_grad_(True)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ps = [p.detach().clone().requires_grad_(True) for _ in range(2)]
        loss, lse = compiled(xs[0], t, ps[0], torch.tensor(9.0))
        loss.backward()
        ref, ref_lse = objective(xs[1], t, ps[1], 9.0)  # eager
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lse, ref_lse, equal_nan=True)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ps[0].grad, ps[1].grad, rtol=1e-6, atol=1e-7)
    assert graphs and all("fusedloss.cross_entropy" in g for g in graphs)


def _fusedloss_graphs() -> tuple[list[str], object]:
    """A backend that records each graph's text, then runs aot_eager."""
    graphs: list[str] = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    return graphs, backend


def test_torch_compile_dynamic_shapes_plain_call():
    """dynamic=True: the option defaults may reach the call as symbolic floats, so
    their identity tests fail; the checked values (not identities) decide, and the
    plain call still traces into the fused op over changing batch sizes."""
    torch._dynamo.reset()
    graphs, backend = _fusedloss_graphs()
    compiled = torch.compile(lambda x, t: flt.cross_entropy(x, t), dynamic=True, fullgraph=True,
                             backend=backend)
    for n in (8, 13, 21):
        x, t, _ = make_ce((n, 11), torch.float32, False, False, seed=n)
        loss, gx, _ = loss_and_grads(compiled, x, t)
        rloss, rgx, _ = loss_and_grads(torch.nn.functional.cross_entropy, x, t)
        torch.testing.assert_close(loss, rloss)
        torch.testing.assert_close(gx, rgx)
    assert graphs and all("fusedloss.cross_entropy" in g for g in graphs)


@pytest.mark.parametrize("option", ["num_items_in_batch", "logit_scale"])
def test_torch_compile_fullgraph_float_option_that_changes(option):
    """A Python float option that changes from call to call becomes symbolic after
    the first change: its checks trace (no math.isfinite on it) under fullgraph."""
    torch._dynamo.reset()
    graphs, backend = _fusedloss_graphs()
    compiled = torch.compile(lambda x, t, v: flt.cross_entropy(x, t, **{option: v}),
                             fullgraph=True, backend=backend)
    x, t, _ = make_ce((8, 11), torch.float64, False, False, seed=3)
    for value in (10.0, 12.0, 13.0):
        got = compiled(x, t, value)
        ref = flt.cross_entropy(x, t, **{option: value})  # eager
        torch.testing.assert_close(got, ref)
    assert graphs and all("fusedloss.cross_entropy" in g for g in graphs)


def test_custom_op_with_options_passes_opcheck():
    from fusedloss import _torch_ops

    x, t, w = make_ce((6, 9), torch.float32, False, True, seed=2)
    x.requires_grad_(True)
    # ignore_index -100: no ignored position, so no NaN in lse (opcheck compares without equal_nan)
    args = (x, t, w, 1, -100, 0.1, True, False, 0.5, 3.0, 1e-2, True)
    torch.library.opcheck(_torch_ops.cross_entropy_op, args)


def test_module_takes_the_options():
    x, t, w = make_ce((8, 11), torch.float64, False, True, seed=9)
    crit = flt.CrossEntropyLoss(weight=w, ignore_index=IGNORE, logit_scale=0.5, softcap=3.0,
                                lse_square_scale=1e-2, num_items_in_batch=10)
    text = repr(crit)
    assert "logit_scale=0.5" in text and "softcap=3.0" in text and "num_items_in_batch=10" in text
    assert repr(flt.CrossEntropyLoss()) == "CrossEntropyLoss()"
    # an unpickled module holds equal floats, not the default objects
    assert repr(pickle.loads(pickle.dumps(flt.CrossEntropyLoss()))) == "CrossEntropyLoss()"
    kw = dict(weight=w, ignore_index=IGNORE, logit_scale=0.5, softcap=3.0, lse_square_scale=1e-2)
    for items, module_call in ((10, lambda x, t: crit(x, t)),
                               (4, lambda x, t: crit(x, t, num_items_in_batch=4))):
        loss, gx, _ = loss_and_grads(module_call, x, t)
        rloss, rgx, _ = reference(ce_extras_reference, x, t, num_items_in_batch=items, **kw)
        assert_close(loss, rloss, torch.float64, "loss")
        assert_close(gx, rgx, torch.float64, "grad input")


def test_options_on_the_torch_op_route():
    # A weight that requires grad is not for the kernel: the same loss in torch ops
    # (probability targets: torch differentiates the weight there).
    x, p, w = make_ce((8, 11), torch.float64, True, True, seed=1)
    kw = dict(logit_scale=1.5, softcap=4.0, lse_square_scale=1e-2, num_items_in_batch=3)
    grads = []
    for fn in (flt.cross_entropy, ce_extras_reference):
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        loss = fn(xi, p, weight=wi, **kw)
        grads.append((loss,) + torch.autograd.grad(loss, (xi, wi)))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    _, lse = flt.cross_entropy(x, p, weight=w.requires_grad_(True), return_lse=True, **kw)
    torch.testing.assert_close(lse, _reference_lse(x, p, kw, -100))


def test_torch_func_transforms_see_the_options():
    x, t, _ = make_ce((5, 7), torch.float64, False, False, seed=8)
    kw = dict(ignore_index=IGNORE, softcap=2.0, lse_square_scale=0.1, num_items_in_batch=3)
    ours = torch.func.grad(lambda x: flt.cross_entropy(x, t, **kw))(x)
    ref = torch.func.grad(lambda x: ce_extras_reference(x, t, **kw))(x)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logit_scale": math.inf}, ValueError, "logit_scale"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": "5"}, TypeError, "softcap"),
        ({"lse_square_scale": -1.0}, ValueError, "lse_square_scale"),
        ({"num_items_in_batch": 0}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": torch.tensor(-2.0)}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": torch.ones(2)}, ValueError, "num_items_in_batch"),
        ({"num_items_in_batch": 4, "reduction": "sum"}, ValueError, "reduction='mean'"),
        ({"return_lse": 1}, TypeError, "return_lse"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, match):
    x = torch.zeros(4, 5, requires_grad=True)
    t = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(error, match=match):
        flt.cross_entropy(x, t, **kwargs)
    module_kwargs = {k: v for k, v in kwargs.items() if k != "return_lse"}
    if module_kwargs:
        with pytest.raises(error, match=match):
            flt.CrossEntropyLoss(**module_kwargs)


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_defaults_given_explicitly_are_the_plain_call(shape):
    x, t, _ = make_ce(shape, torch.float32, False, False, seed=4)
    plain = flt.cross_entropy(x, t)
    given = flt.cross_entropy(x, t, logit_scale=1, softcap=None, lse_square_scale=0)
    assert torch.equal(plain, given)


@pytest.mark.parametrize("extra", [{"softcap": 3.0}, {"logit_scale": 2.0},
                                   {"lse_square_scale": 0.1}, {"return_lse": True}])
def test_integer_logits_raise_torchs_error(extra):
    """Integer logits: torch's own error, as without the options (scaling or capping
    them first would turn them into floats and hide it)."""
    x, t = torch.ones(4, 5, dtype=torch.long), torch.tensor([0, 1, 2, 3])
    with pytest.raises(NotImplementedError) as theirs:
        torch.nn.functional.cross_entropy(x, t)
    with pytest.raises(NotImplementedError) as ours:
        flt.cross_entropy(x, t, **extra)
    assert str(ours.value) == str(theirs.value)
