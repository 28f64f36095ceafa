"""fusedloss.torch's linear_cross_entropy and LinearCrossEntropyLoss against torch.

References: torch's ``F.cross_entropy`` on materialised logits in float64 (and
float32, for the float32 tolerance of tests/conftest.py), torch 2.13's own
``F.linear_cross_entropy`` (reference and chunked paths) and
``nn.LinearCrossEntropyLoss``; gradcheck. torch.compile, DDP and peak memory:
tests/test_torch_linear_ce_training.py.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from fusedloss import _linear_ce_chunks  # noqa: E402
from linear_ce_cases import (  # noqa: E402
    EXTRA_CASES,
    OPTION_CASES,
    check_result,
    make_case,
    torch_reference,
)
from test_linear_cross_entropy import needs_extras  # noqa: E402

N, H, C = 37, 16, 101


def _tensors(case, dtype=None):
    """(x, w, b) leaves requiring grad, target, class weight as torch tensors."""
    def leaf(a):
        t = torch.from_numpy(np.array(a))
        return (t if dtype is None else t.to(dtype)).requires_grad_()

    x, w = leaf(case.x), leaf(case.w)
    b = None if case.b is None else leaf(case.b)
    t = torch.from_numpy(case.target)
    if t.is_floating_point() and dtype is not None:
        t = t.to(dtype)
    weight = None if case.weight is None else torch.from_numpy(case.weight)
    if weight is not None and dtype is not None:
        weight = weight.to(dtype)
    return x, w, b, t, weight


def _ours(case, reduction="mean", go=None, dtype=None, **kwargs):
    """flt.linear_cross_entropy's loss and gradients, as NumPy arrays."""
    x, w, b, t, weight = _tensors(case, dtype)
    loss = flt.linear_cross_entropy(
        x, w, t, linear_bias=b, weight=weight, reduction=reduction,
        ignore_index=case.kwargs.get("ignore_index"),
        label_smoothing=case.kwargs.get("label_smoothing", 0.0), **kwargs)
    upstream = torch.ones_like(loss) if go is None else torch.as_tensor(go, dtype=loss.dtype)
    loss.backward(upstream.reshape(loss.shape))
    grads = [a.grad for a in (x, w, b) if a is not None]
    out = [loss.detach(), *grads] + ([None] if b is None else [])
    def array(g):  # NumPy has no bfloat16: half results come back widened
        return g.detach().double().numpy() if g.dtype in (torch.bfloat16, torch.float16) \
            else g.detach().numpy()

    return tuple(None if g is None else array(g) for g in out)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("options", list(OPTION_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_grads_match_torch(rng, dtype, reduction, options, bias) -> None:
    """Eight tokens per chunk (a ragged last chunk); reduction none with a random
    upstream gradient (its backward recomputes the chunks)."""
    case = make_case(rng, N, H, C, dtype, bias=bias, **OPTION_CASES[options])
    go = rng.standard_normal(N).astype(dtype) if reduction == "none" else None
    ours = _ours(case, reduction, go, chunk_bytes=8 * C * np.dtype(dtype).itemsize)
    check_result(ours, case, reduction, go)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [False, True], ids=["unweighted", "weighted"])
def test_matches_torch_chunked_path(rng, reduction, weight) -> None:
    """torch 2.13's own chunked F.linear_cross_entropy (LinearCrossEntropyOptions),
    in float64, where it applies (index targets, no label smoothing)."""
    case = make_case(rng, 64, H, C, np.float64, weight=weight, ignore_frac=0.2)
    x, w, b, t, wt = _tensors(case)
    ref = F.linear_cross_entropy(
        x, w, t, linear_bias=b, weight=wt, reduction=reduction,
        options=nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=16))
    go = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(go)
    ours = _ours(case, reduction, go.numpy(),
                 options=nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=16))
    for got, want in zip(ours, (ref, x.grad, w.grad, b.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_matches_torch_reference_path_k_dimensional(rng, probs) -> None:
    """F.linear_cross_entropy with a K-dimensional weight (C, d1, d2, H), options=None."""
    case = make_case(rng, 9, 8, 11, np.float64, out_features=(3, 2), probs=probs,
                     label_smoothing=0.1)
    x, w, b, t, _ = _tensors(case)
    ref = F.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1)
    ref.backward()
    ours = _ours(case, chunk_bytes=3 * 11 * 6 * 8)
    for got, want in zip(ours, (ref, x.grad, w.grad, b.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(rng, dtype, reduction) -> None:
    """Half input: no less accurate than torch's own half computation, and the
    weight's gradient accumulates in float32 over 64 one-token chunks (a bfloat16
    accumulation would lose ~2**-9 relative per chunk)."""
    case = make_case(rng, 64, H, C, np.float64, weight=True, ignore_frac=0.1)
    case = case._replace(x=case.x.astype(np.float32), w=case.w.astype(np.float32),
                         b=case.b.astype(np.float32), weight=case.weight.astype(np.float32))
    # Values representable in the half dtype, so both sides see the same operands.
    half = {k: torch.from_numpy(getattr(case, k)).to(dtype) for k in ("x", "w", "b", "weight")}
    case = case._replace(**{k: v.float().numpy() for k, v in half.items()})
    go = rng.standard_normal(64).astype(np.float32) if reduction == "none" else None
    ours = _ours(case, reduction, go, dtype=dtype, chunk_bytes=C * 4)
    ref = torch_reference(case, np.float64, reduction, go)
    x, w, b, t, wt = _tensors(case, dtype)
    logits = x @ w.T + b
    loss = F.cross_entropy(logits, t, weight=wt, reduction=reduction)
    loss.backward(torch.ones_like(loss) if go is None else torch.from_numpy(go).to(dtype))
    torch_half = (loss, x.grad, w.grad, b.grad)
    for k, name in enumerate(("loss", "grad_input", "grad_linear_weight", "grad_linear_bias")):
        err = np.abs(ours[k] - ref[k]).max()
        torch_err = np.abs(torch_half[k].detach().double().numpy() - ref[k]).max()
        ulp = float(torch.finfo(dtype).eps) * np.abs(ref[k]).max()
        assert err <= max(torch_err, ulp), f"{name}: {err:.3g} vs torch {torch_err:.3g}"
        if name == "grad_linear_weight":  # one rounding of the float32 sum: <= half an ulp
            assert err <= 0.5 * ulp + 1e-6 * np.abs(ref[k]).max(), f"{name}: {err:.3g}"


def test_half_loss_dtypes(rng) -> None:
    """bf16 loss and gradients in the operands' dtypes; a float32 loss under autocast."""
    case = make_case(rng, 8, H, C, np.float32)
    x, w, b, t, _ = _tensors(case, torch.bfloat16)
    loss = flt.linear_cross_entropy(x, w, t, linear_bias=b)
    loss.backward()
    assert loss.dtype == x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert flt.linear_cross_entropy(x, w, t, linear_bias=b).dtype == torch.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_gradcheck(rng, reduction, probs) -> None:
    case = make_case(rng, 6, 4, 7, np.float64, probs=probs, weight=True,
                     ignore_frac=0.0 if probs else 0.3, label_smoothing=0.1)
    _, _, _, t, wt = _tensors(case)
    x, w, b = (torch.tensor(a, requires_grad=True) for a in (case.x, case.w, case.b))

    def fn(x, w, b):
        return flt.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, reduction=reduction,
                                        label_smoothing=0.1, chunk_bytes=2 * 7 * 8)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_unbatched_input(rng) -> None:
    case = make_case(rng, 1, H, C, np.float64, batched=False)
    for reduction in ("mean", "none"):
        ours = _ours(case, reduction)
        assert ours[0].shape == () and ours[1].shape == (H,)
        check_result(ours, case, reduction)


def test_all_tokens_ignored_is_nan_as_torch(rng) -> None:
    case = make_case(rng, N, H, C, np.float64, ignore_frac=1.0)
    ours = _ours(case, chunk_bytes=1000)
    assert np.isnan(ours[0])
    check_result(ours, case)


def test_retain_graph_backward_twice(rng) -> None:
    """Gradients are scaled in place only when the graph is not retained."""
    case = make_case(rng, N, H, C, np.float64)
    x, w, b, t, _ = _tensors(case)
    loss = flt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_bytes=3000) * 3
    loss.backward(retain_graph=True)
    first = [a.grad.clone() for a in (x, w, b)]
    loss.backward()
    for a, g in zip((x, w, b), first):
        torch.testing.assert_close(a.grad, 2 * g)


def test_only_some_operands_need_grad(rng) -> None:
    case = make_case(rng, N, H, C, np.float64)
    x, w, b, t, _ = _tensors(case)
    w.requires_grad_(False)
    b.requires_grad_(False)
    flt.linear_cross_entropy(x, w, t, linear_bias=b, reduction="none").sum().backward()
    ref = torch_reference(case, np.float64, "none")
    np.testing.assert_allclose(x.grad.numpy(), ref.grad_x, rtol=1e-10, atol=1e-13)
    with torch.no_grad():
        loss = flt.linear_cross_entropy(x, w, t, linear_bias=b)
    assert loss.grad_fn is None
    np.testing.assert_allclose(loss.numpy(), torch_reference(case, np.float64).loss, rtol=1e-12)


@needs_extras
@pytest.mark.parametrize("extras", list(EXTRA_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_llm_options_match_torch_composition(rng, dtype, reduction, extras) -> None:
    case = make_case(rng, N, H, C, dtype, **OPTION_CASES["ignore-smooth-weight"])
    go = rng.standard_normal(N).astype(dtype) if reduction == "none" else None
    ours = _ours(case, reduction, go, chunk_bytes=8 * C * np.dtype(dtype).itemsize,
                 **EXTRA_CASES[extras])
    check_result(ours, case, reduction, go, **EXTRA_CASES[extras])


@needs_extras
def test_num_items_in_batch(rng) -> None:
    case = make_case(rng, N, H, C, np.float64, weight=True, ignore_frac=0.2)
    for items in (77, torch.tensor(77)):
        ours = _ours(case, num_items_in_batch=items, chunk_bytes=3000)
        check_result(ours, case, "mean", None, num_items_in_batch=77)


@needs_extras
def test_fallback_keeps_the_llm_options(rng) -> None:
    """A target that requires grad takes torch's path (logits materialised, then
    flt.cross_entropy) with the options intact."""
    case = make_case(rng, 8, H, C, np.float64, probs=True)
    x, w, b, t, _ = _tensors(case)
    t.requires_grad_()
    extras = EXTRA_CASES["all"]
    loss = flt.linear_cross_entropy(x, w, t, linear_bias=b, **extras)
    loss.backward()
    ref = torch_reference(case, np.float64, "mean", None, **extras)
    np.testing.assert_allclose(loss.detach().numpy(), ref.loss, rtol=1e-12)
    for got, want in zip((x.grad, w.grad, b.grad), ref[1:]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-13)
    assert t.grad is not None


# ------------------------------------------------------------------ the module


@pytest.mark.parametrize("out_features", [(), (2, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_module_is_torchs_module(out_features, bias) -> None:
    """Same parameters as nn.LinearCrossEntropyLoss from the same seed, same
    outputs and gradients; an instance of torch's class."""
    kwargs = dict(out_features=out_features, bias=bias, dtype=torch.float64,
                  weight=torch.rand(11, dtype=torch.float64) + 0.5, label_smoothing=0.05)
    torch.manual_seed(0)
    ours = flt.LinearCrossEntropyLoss(8, 11, chunk_bytes=200, **kwargs)
    torch.manual_seed(0)
    ref = nn.LinearCrossEntropyLoss(8, 11, **kwargs)
    assert isinstance(ours, nn.LinearCrossEntropyLoss)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (10, *out_features))
    x2 = x.detach().clone().requires_grad_()
    a, r = ours(x, t), ref(x2, t)
    a.backward()
    r.backward()
    torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-13)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13)
    assert "chunk_bytes=200" in repr(ours)


# ------------------------------------------------------------------ fallbacks


def test_fallbacks_give_torchs_results_and_errors(rng) -> None:
    case = make_case(rng, 8, H, C, np.float64, probs=True)
    x, w, b, t, _ = _tensors(case)
    # A target that requires grad: torch's reference path, with the target's gradient.
    t.requires_grad_()
    flt.linear_cross_entropy(x, w, t, linear_bias=b).backward()
    t2 = t.detach().clone().requires_grad_()
    F.linear_cross_entropy(x.detach(), w.detach(), t2, linear_bias=b.detach()).backward()
    torch.testing.assert_close(t.grad, t2.grad)
    # Bad arguments raise torch's own errors.
    with pytest.raises(RuntimeError, match="ignore_index"):
        flt.linear_cross_entropy(x, w, t.detach(), ignore_index=-100)
    with pytest.raises(RuntimeError, match="in_features"):
        flt.linear_cross_entropy(x, w[:, :3], t.detach())
    with pytest.raises(RuntimeError):
        flt.linear_cross_entropy(x, w.float(), t.detach())
    with pytest.raises(RuntimeError, match="linear_bias"):
        flt.linear_cross_entropy(x, w, t.detach(), linear_bias=b[:-1])
    with pytest.raises(ValueError, match="num_items_in_batch"):
        flt.linear_cross_entropy(x, w, t.detach(), reduction="sum", num_items_in_batch=3)
    with pytest.raises(ValueError, match="softcap"):
        flt.linear_cross_entropy(x, w, t.detach(), softcap=-1.0)
    # Meta tensors: torch's own shapes.
    loss = flt.linear_cross_entropy(x.to("meta"), w.to("meta"), t.detach().to("meta"),
                                    reduction="none")
    assert loss.shape == (8,) and loss.device.type == "meta"


def test_llm_options_keep_torchs_argument_errors_and_empty_features(rng) -> None:
    """With an LLM option set, bad shapes still raise F.linear_cross_entropy's own
    messages (not those of the matmul the reference path composes), and
    in_features 0 gives the bias-only loss as torch does."""
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    bad = [
        ({"input": x, "linear_weight": w[:, :5], "target": t}, "in_features"),
        ({"input": x, "linear_weight": w, "target": t, "linear_bias": torch.zeros(4)},
         "linear_bias shape"),
        ({"input": x.reshape(2, 2, 6), "linear_weight": w, "target": t}, "dimensionality"),
        ({"input": x[0], "linear_weight": w.reshape(5, 1, 6), "target": t}, "batched input"),
        ({"input": x, "linear_weight": w, "target": torch.full((4, 5), 0.2, dtype=torch.float64),
          "ignore_index": 1}, "ignore_index"),
    ]
    for kwargs, message in bad:
        with pytest.raises(RuntimeError, match=message):
            F.linear_cross_entropy(**kwargs)
        for extra in ({"softcap": 3.0}, {"logit_scale": 2.0}, {"lse_square_scale": 1e-3}):
            with pytest.raises(RuntimeError, match=message):
                flt.linear_cross_entropy(**kwargs, **extra)
    h, w0 = torch.randn(4, 0, dtype=torch.float64), torch.randn(5, 0, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    expected = F.cross_entropy(3.0 * torch.tanh(b.expand(4, 5) / 3.0), t)
    torch.testing.assert_close(flt.linear_cross_entropy(h, w0, t, linear_bias=b, softcap=3.0),
                               expected)


def test_target_out_of_range_raises_index_error(rng) -> None:
    case = make_case(rng, 8, H, C, np.float64)
    x, w, b, t, _ = _tensors(case)
    t[3] = C
    with pytest.raises(IndexError, match="target"):
        flt.linear_cross_entropy(x, w, t, linear_bias=b)
    assert x.grad is None


def test_options_batch_chunk_size_sets_the_chunk(monkeypatch, rng) -> None:
    seen = []
    run = _linear_ce_chunks.run_chunks

    def spy(plan, *args, **kwargs):
        seen.append(plan.chunk_tokens)
        return run(plan, *args, **kwargs)

    monkeypatch.setattr(_linear_ce_chunks, "run_chunks", spy)
    case = make_case(rng, N, H, C, np.float64)
    x, w, b, t, _ = _tensors(case)
    opts = nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=5)
    flt.linear_cross_entropy(x, w, t, options=opts).backward()
    flt.linear_cross_entropy(x, w, t, options=nn.LinearCrossEntropyOptions(), chunk_bytes=C * 8 * 3)
    flt.linear_cross_entropy(x, w, t)
    # torch honours batch_chunk_size under chunking_method="auto" too, and a named method:
    # aspect_ratio = next_pow2(ceil(N / ceil(C / H))) = next_pow2(ceil(37 / 7)) = 8.
    flt.linear_cross_entropy(x, w, t, options=nn.LinearCrossEntropyOptions(batch_chunk_size=6))
    flt.linear_cross_entropy(x, w, t, options=nn.LinearCrossEntropyOptions(
        chunking_method="aspect_ratio"))
    assert seen == [5, 3, N, 6, 8]


# ------------------------------------------- options: torch's observable behaviour


def _outcome(call):
    """(call()'s result or the exception it raised, its warnings as (category, text))."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as e:  # noqa: BLE001 - compared with torch's own
            result = e
    return result, [(w.category, str(w.message)) for w in caught]


_IGNORED = {  # calls whose options torch's chunked path cannot take
    "k-dimensional": dict(out_features=(3,)),
    "k-dimensional-bias": dict(out_features=(2, 2), bias=True),
    "label_smoothing": dict(label_smoothing=0.1),
    "probabilities": dict(probs=True),
}


@pytest.mark.parametrize("case_kwargs", [*_IGNORED.values(), {}], ids=[*_IGNORED, "taken"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_options_warn_like_torch_where_ignored(rng, case_kwargs, reduction) -> None:
    """torch warns that ``options`` are ignored when its chunked path cannot take
    them (under -W error it raises): the same category and words here, and the same
    loss; where the chunked path takes them, neither warns."""
    case = make_case(rng, 9, 8, 11, np.float64, **case_kwargs)
    x, w, b, t, _ = _tensors(case)
    kwargs = dict(linear_bias=b, reduction=reduction, options=nn.LinearCrossEntropyOptions(),
                  label_smoothing=case.kwargs.get("label_smoothing", 0.0))
    theirs, their_warnings = _outcome(lambda: F.linear_cross_entropy(x, w, t, **kwargs))
    ours, our_warnings = _outcome(lambda: flt.linear_cross_entropy(x, w, t, **kwargs))
    assert our_warnings == their_warnings
    assert len(their_warnings) == (1 if case_kwargs else 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-13)
    if case_kwargs:  # the module (its options passed on) and the LLM options' torch path
        module = dict(out_features=case_kwargs.get("out_features", ()), dtype=torch.float64,
                      label_smoothing=kwargs["label_smoothing"], reduction=reduction,
                      options=kwargs["options"])
        inputs = (x, t.argmax(1)) if case.target.dtype != np.int64 else (x, t)
        assert (_outcome(lambda: flt.LinearCrossEntropyLoss(8, 11, **module)(*inputs))[1]
                == _outcome(lambda: nn.LinearCrossEntropyLoss(8, 11, **module)(*inputs))[1])
        # (a probability target that requires grad: the LLM options' torch path)
        t = t.detach().requires_grad_(t.is_floating_point())
        with_extras = _outcome(lambda: flt.linear_cross_entropy(x, w, t, logit_scale=0.5,
                                                                **kwargs))
        assert with_extras[1] == their_warnings


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunked", [False, True], ids=["no-options", "options"])
def test_autocast_loss_dtype_like_torch(rng, dtype, reduction, chunked) -> None:
    """Under CPU autocast, half input: torch's reference path gives a float32 loss,
    its chunked path (options) the input's dtype. Gradients in the operands' dtypes;
    values no further from float64 than torch's own plus two half ULP."""
    case = make_case(rng, 12, H, C, np.float32)
    options = nn.LinearCrossEntropyOptions() if chunked else None
    results = []
    for fn in (flt.linear_cross_entropy, F.linear_cross_entropy):
        x, w, b, t, _ = _tensors(case, dtype)
        with torch.autocast("cpu", dtype=dtype):
            loss = fn(x, w, t, linear_bias=b, reduction=reduction, options=options)
        loss.sum().backward()
        results.append([loss.detach(), x.grad, w.grad, b.grad])
    x, w, b, t, _ = _tensors(case, dtype)
    ref = F.linear_cross_entropy(x.double(), w.double(), t, linear_bias=b.double(),
                                 reduction=reduction)
    ref.sum().backward()
    ref = [ref.detach(), x.grad, w.grad, b.grad]
    for k, (a, theirs, r) in enumerate(zip(*results, ref)):
        assert a.dtype == theirs.dtype, f"result {k}: {a.dtype}, torch {theirs.dtype}"
        if k == 0:
            assert a.dtype == (dtype if chunked else torch.float32)
        err, torch_err = ((v.double() - r.double()).abs().max() for v in (a, theirs))
        assert err <= 2 * torch_err + 2 * torch.finfo(dtype).eps * r.abs().max(), f"result {k}"


def test_options_errors_like_torch(rng) -> None:
    """torch resolves the options on its chunked path: its ValueError for a chunk size
    that disagrees with chunking_method, its AttributeError for options that are not
    options (here a TypeError naming the argument); options it ignores, it ignores."""
    case = make_case(rng, 6, 4, 5, np.float64)
    x, w, b, t, _ = _tensors(case)
    conflict = nn.LinearCrossEntropyOptions(batch_chunk_size=3, chunking_method="aspect_ratio")
    theirs = _outcome(lambda: F.linear_cross_entropy(x, w, t, options=conflict))[0]
    assert isinstance(theirs, ValueError) and "different chunk sizes" in str(theirs)
    with pytest.raises(ValueError, match=re.escape(str(theirs))):
        flt.linear_cross_entropy(x, w, t, options=conflict)
    with pytest.raises(AttributeError):
        F.linear_cross_entropy(x, w, t, options="garbage")
    with pytest.raises(TypeError, match="options must be a torch.nn.LinearCrossEntropyOptions"):
        flt.linear_cross_entropy(x, w, t, options="garbage")
    ours, our_warnings = _outcome(lambda: flt.linear_cross_entropy(
        x, w, t, options="garbage", label_smoothing=0.1))
    theirs, their_warnings = _outcome(lambda: F.linear_cross_entropy(
        x, w, t, options="garbage", label_smoothing=0.1))
    assert our_warnings == their_warnings and len(their_warnings) == 1
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("allow_retain_graph", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_backward_like_torch(rng, reduction, allow_retain_graph) -> None:
    """torch's chunked op consumes its saved gradients unless allow_retain_graph: a
    second backward (after retain_graph=True) raises its RuntimeError for mean / sum;
    reduction none recomputes and allows it. Where it works, the gradients are torch's."""
    case = make_case(rng, 9, 8, 11, np.float64)
    options = nn.LinearCrossEntropyOptions(allow_retain_graph=allow_retain_graph)
    outcomes = []
    for fn in (flt.linear_cross_entropy, F.linear_cross_entropy):
        x, w, b, t, _ = _tensors(case)
        loss = fn(x, w, t, linear_bias=b, reduction=reduction, options=options).sum()
        loss.backward(retain_graph=True)
        second, _ = _outcome(loss.backward)
        outcomes.append((second, x.grad, w.grad, b.grad))
    (ours, *our_grads), (theirs, *their_grads) = outcomes
    assert type(ours) is type(theirs) and str(ours) == str(theirs)
    assert isinstance(theirs, RuntimeError) == (reduction != "none" and not allow_retain_graph)
    for a, r in zip(our_grads, their_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_allow_retain_graph_backward_again_like_torch(rng, reduction) -> None:
    """With allow_retain_graph=True torch's chunked op keeps its gradients: backward
    after backward, no retain_graph asked, adds them again each time."""
    case = make_case(rng, 9, 8, 11, np.float64)
    options = nn.LinearCrossEntropyOptions(allow_retain_graph=True)
    grads = []
    for fn in (flt.linear_cross_entropy, F.linear_cross_entropy):
        x, w, b, t, _ = _tensors(case)
        loss = fn(x, w, t, linear_bias=b, reduction=reduction, options=options)
        loss.backward()
        once = (x.grad.clone(), w.grad.clone(), b.grad.clone())
        loss.backward()
        (loss * 2).backward()  # a new upstream gradient, the kept gradients unchanged
        for g, g1 in zip((x.grad, w.grad, b.grad), once):
            torch.testing.assert_close(g, 4 * g1, rtol=1e-12, atol=1e-14)
        grads.append(once)
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
def test_options_acc_dtype_checked_like_torch(rng, dtype) -> None:
    """acc_dtype changes nothing here, but one that torch refuses for the input's dtype
    raises torch's RuntimeError."""
    case = make_case(rng, 6, 4, 5, np.float32)
    x, w, _, t, _ = _tensors(case)
    x, w = x.detach().to(dtype), w.detach().to(dtype)
    for acc in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
        options = nn.LinearCrossEntropyOptions(acc_dtype=acc)
        theirs = _outcome(lambda: F.linear_cross_entropy(x, w, t, options=options))[0]
        ours = _outcome(lambda: flt.linear_cross_entropy(x, w, t, options=options))[0]
        if isinstance(theirs, Exception):
            assert type(ours) is type(theirs) and str(ours) == str(theirs)
        else:
            assert not isinstance(ours, Exception), ours


def test_torch_compile_dynamic_batch_and_changing_num_items() -> None:
    """dynamic=True over changing batch sizes, and a float num_items_in_batch that
    changes per call (symbolic after the first change), both under fullgraph:
    the option checks trace, and the fused op is in every graph."""
    torch._dynamo.reset()
    graphs: list[str] = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(C, H, generator=gen, dtype=torch.float64)
    def objective(h, t, v):
        return flt.linear_cross_entropy(h, w, t, num_items_in_batch=v)

    compiled = torch.compile(objective, dynamic=True, fullgraph=True, backend=backend)
    for n, items in ((8, 10.0), (11, 12.0), (20, 13.0)):
        h = torch.randn(n, H, generator=gen, dtype=torch.float64, requires_grad=True)
        t = torch.randint(0, C, (n,), generator=gen)
        got = compiled(h, t, items)
        (gh,) = torch.autograd.grad(got, h)
        ref = F.cross_entropy(h @ w.T, t, reduction="sum") / items
        (rh,) = torch.autograd.grad(ref, h)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(gh, rh)
    assert graphs and all("fusedloss.linear_cross_entropy" in g for g in graphs)
