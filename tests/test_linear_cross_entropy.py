"""fl.linear_cross_entropy / _and_grad against torch on materialised logits.

Reference: ``F.cross_entropy(input @ W.T + b, ...)`` through torch's autograd, in
float64 (and in float32 for the float32 tolerance of tests/conftest.py); the LLM
options against their composition in torch ops (tests/linear_ce_cases.py). Small
``chunk_bytes`` force many chunks, a ragged last one, and chunks of one token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from fusedloss import _core
from linear_ce_cases import (
    EXTRA_CASES,
    OPTION_CASES,
    check_result,
    make_case,
    torch_reference,
)

N, H, C = 37, 16, 101  # C is prime: no chunk of tokens divides anything evenly
ROW_BYTES = {np.float32: C * 4, np.float64: C * 8}
# One chunk for everything; 8 tokens per chunk (4 full chunks and a ragged 5th); 1 token.
CHUNKINGS = {"one-chunk": None, "8-tokens": 8, "1-token": 1}


def _chunk_bytes(dtype: Any, tokens: int | None, classes: int = C) -> int | None:
    return None if tokens is None else tokens * classes * np.dtype(dtype).itemsize


def _options(case: Any) -> dict[str, Any]:
    return {"linear_bias": case.b, "weight": case.weight, **case.kwargs}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("options", list(OPTION_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_grads_match_torch(rng, dtype, reduction, options, bias, chunking) -> None:
    case = make_case(rng, N, H, C, dtype, bias=bias, **OPTION_CASES[options])
    go = None
    if reduction == "none":
        go = rng.standard_normal(N).astype(dtype)  # a random upstream gradient
    cb = _chunk_bytes(dtype, CHUNKINGS[chunking])
    ours = fl.linear_cross_entropy_and_grad(
        case.x, case.w, case.target, reduction=reduction, grad_output=go, chunk_bytes=cb,
        **_options(case))
    check_result(ours, case, reduction, go)
    loss_only = fl.linear_cross_entropy(case.x, case.w, case.target, reduction=reduction,
                                        chunk_bytes=cb, **_options(case))
    np.testing.assert_array_equal(loss_only, ours[0])  # same chunks, same sums


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scalar_grad_output_scales_every_gradient(rng, reduction) -> None:
    case = make_case(rng, N, H, C, np.float64, weight=True, ignore_frac=0.2)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, reduction=reduction,
                                            grad_output=-2.5, chunk_bytes=_chunk_bytes(np.float64, 5),
                                            **_options(case))
    check_result(ours, case, reduction, np.asarray(-2.5))


def test_every_kernel_path(capability, rng) -> None:
    """The kernel runs on the chunks: each compiled ISA path gives torch's values."""
    for dtype in (np.float32, np.float64):
        case = make_case(rng, N, H, C, dtype, weight=True, ignore_frac=0.2, label_smoothing=0.1)
        ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                                chunk_bytes=_chunk_bytes(dtype, 8),
                                                **_options(case))
        check_result(ours, case)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_k_dimensional_weight(rng, reduction, probs) -> None:
    """linear_weight (C, d1, d2, H): logits (N, C, d1, d2), as torch's K-dim loss."""
    case = make_case(rng, 9, 8, 11, np.float64, out_features=(3, 2), probs=probs, weight=True)
    go = rng.standard_normal((9, 3, 2)) if reduction == "none" else None
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, reduction=reduction,
                                            grad_output=go, chunk_bytes=_chunk_bytes(
                                                np.float64, 2, 11 * 6), **_options(case))
    assert ours[2].shape == case.w.shape and ours[3].shape == case.b.shape
    check_result(ours, case, reduction, go)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_one_unbatched_token(rng, reduction, probs) -> None:
    case = make_case(rng, 1, H, C, np.float64, probs=probs, batched=False)
    go = np.asarray(0.7) if reduction == "none" else None
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, reduction=reduction,
                                            grad_output=go, **_options(case))
    assert ours[1].shape == (H,)
    check_result(ours, case, reduction, go)


@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_tokens(rng, dtype, reduction, bias, probs) -> None:
    """N = 0: no chunk runs; the weight and bias gradients are zeros, as torch's
    (the weight gradient's buffer is otherwise first written by a chunk)."""
    case = make_case(rng, 0, H, C, dtype, bias=bias, probs=probs)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, reduction=reduction,
                                            **_options(case))
    check_result(ours, case, reduction)
    np.testing.assert_array_equal(ours[2], np.zeros_like(case.w))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weight", [False, True], ids=["unweighted", "weighted"])
def test_all_tokens_ignored(weight, smoothing) -> None:
    """mean over nothing: the loss is NaN (torch's 0/0), gradients as torch's."""
    rng = np.random.default_rng(3)
    case = make_case(rng, N, H, C, np.float64, weight=weight, ignore_frac=1.0,
                     label_smoothing=smoothing)
    assert (case.target == -100).all()
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, chunk_bytes=800,
                                            **_options(case))
    assert np.isnan(ours[0])
    check_result(ours, case)
    for reduction in ("sum", "none"):
        check_result(fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                                      reduction=reduction, **_options(case)),
                     case, reduction)


def test_mean_denominator_spans_all_chunks(rng) -> None:
    """The mean divides by the whole batch's weights, not each chunk's: chunks with
    every token ignored and chunks with heavy weights give torch's value."""
    case = make_case(rng, 40, H, C, np.float64, weight=True)
    target = case.target.copy()
    target[:16] = -100  # the first two chunks of 8 ignore everything
    case = case._replace(target=target)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                            chunk_bytes=_chunk_bytes(np.float64, 8),
                                            **_options(case))
    check_result(ours, case)


def test_vocabulary_not_a_multiple_of_anything(rng) -> None:
    """A larger, odd vocabulary (several kernel blocks, a vector tail) and hidden size."""
    case = make_case(rng, 67, 45, 5003, np.float32, weight=True, ignore_frac=0.1)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                            chunk_bytes=_chunk_bytes(np.float32, 13, 5003),
                                            **_options(case))
    check_result(ours, case)


def test_matches_torch_linear_cross_entropy(rng) -> None:
    """torch 2.13's own F.linear_cross_entropy (reference path) on the same operands."""
    case = make_case(rng, N, H, C, np.float64, weight=True, ignore_frac=0.2, label_smoothing=0.1)
    xt = torch.tensor(case.x, requires_grad=True)
    wt = torch.tensor(case.w, requires_grad=True)
    bt = torch.tensor(case.b, requires_grad=True)
    loss = F.linear_cross_entropy(xt, wt, torch.from_numpy(case.target), linear_bias=bt,
                                  weight=torch.from_numpy(case.weight), label_smoothing=0.1)
    loss.backward()
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                            chunk_bytes=_chunk_bytes(np.float64, 8),
                                            **_options(case))
    for got, ref in zip(ours, (loss, xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-10, atol=1e-13)


def test_num_items_in_batch_divides_the_sum(rng) -> None:
    case = make_case(rng, N, H, C, np.float64, weight=True, ignore_frac=0.2)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                            num_items_in_batch=123, chunk_bytes=3000,
                                            **_options(case))
    summed = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, reduction="sum",
                                              **_options(case))
    for got, ref in zip(ours, summed):
        np.testing.assert_allclose(got, np.asarray(ref) / 123, rtol=1e-12, atol=1e-15)


def _has_extras() -> bool:
    """The kernel takes the LLM options (branch ce-extras)."""
    x = np.zeros((1, 2))
    try:
        _core.cross_entropy(x, np.zeros(1, np.int64), None, -100, 0.0, 2, None, None, None, 1.0,
                            False, 1, 2, 1, logit_scale=1.0)
    except TypeError:
        return False
    return True


needs_extras = pytest.mark.skipif(not _has_extras(), reason="kernel without logit_scale/softcap")


@needs_extras
@pytest.mark.parametrize("chunking", ["one-chunk", "8-tokens"])
@pytest.mark.parametrize("options", ["plain", "ignore-smooth-weight", "probs-smooth-weight"])
@pytest.mark.parametrize("extras", list(EXTRA_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_llm_options_match_torch_composition(rng, dtype, reduction, extras, options,
                                             chunking) -> None:
    case = make_case(rng, N, H, C, dtype, **OPTION_CASES[options])
    go = rng.standard_normal(N).astype(dtype) if reduction == "none" else None
    ours = fl.linear_cross_entropy_and_grad(
        case.x, case.w, case.target, reduction=reduction, grad_output=go,
        chunk_bytes=_chunk_bytes(dtype, CHUNKINGS[chunking]), **EXTRA_CASES[extras],
        **_options(case))
    check_result(ours, case, reduction, go, **EXTRA_CASES[extras])


@needs_extras
def test_llm_options_with_num_items_in_batch(rng) -> None:
    case = make_case(rng, N, H, C, np.float64, weight=True, ignore_frac=0.2)
    extras = dict(EXTRA_CASES["all"], num_items_in_batch=50)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, chunk_bytes=2000,
                                            **extras, **_options(case))
    check_result(ours, case, "mean", None, **extras)


# --------------------------------------------------------------------- bad input


def _valid() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "input": rng.standard_normal((4, 3)),
        "linear_weight": rng.standard_normal((5, 3)),
        "target": np.array([0, 1, 4, -100]),
    }


BAD: list[tuple[str, dict[str, Any], type, str]] = [
    ("H mismatch", {"linear_weight": np.zeros((5, 4))}, ValueError, "linear_weight"),
    ("1-d weight", {"linear_weight": np.zeros(3)}, ValueError, "linear_weight"),
    ("3-d input", {"input": np.zeros((2, 2, 3))}, ValueError, "input"),
    ("0-d input", {"input": np.zeros(())}, ValueError, "input"),
    ("no classes", {"linear_weight": np.zeros((0, 3))}, ValueError, "linear_weight"),
    ("int input", {"input": np.zeros((4, 3), np.int64)}, TypeError, "input"),
    ("complex input", {"input": np.zeros((4, 3), np.complex128)}, TypeError, "input"),
    ("float16 weight", {"linear_weight": np.zeros((5, 3), np.float16)}, TypeError,
     "linear_weight"),
    ("list input", {"input": [[0.0] * 3] * 4}, TypeError, "input"),
    ("weight dtype", {"linear_weight": np.zeros((5, 3), np.float32)}, TypeError,
     "linear_weight"),
    ("bias length", {"linear_bias": np.zeros(4)}, ValueError, "linear_bias"),
    ("bias dtype", {"linear_bias": np.zeros(5, np.float32)}, TypeError, "linear_bias"),
    ("target length", {"target": np.array([0, 1, 2])}, ValueError, "target"),
    ("target above C", {"target": np.array([0, 1, 5, 2])}, IndexError, "target"),
    ("target negative", {"target": np.array([0, -1, 2, 2])}, IndexError, "target"),
    ("bool target", {"target": np.array([True, False, True, False])}, TypeError, "target"),
    ("probs shape", {"target": np.full((4, 4), 0.25)}, ValueError, "target"),
    ("probs with ignore_index", {"target": np.full((4, 5), 0.2), "ignore_index": 3},
     ValueError, "ignore_index"),
    ("class weight length", {"weight": np.ones(4)}, ValueError, "weight"),
    ("reduction", {"reduction": "batchmean"}, ValueError, "reduction"),
    ("label_smoothing", {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ("ignore_index float", {"ignore_index": 1.5}, TypeError, "ignore_index"),
    ("softcap zero", {"softcap": 0.0}, ValueError, "softcap"),
    ("logit_scale nan", {"logit_scale": float("nan")}, ValueError, "logit_scale"),
    ("z-loss negative", {"lse_square_scale": -1.0}, ValueError, "lse_square_scale"),
    ("num_items with sum", {"num_items_in_batch": 3, "reduction": "sum"}, ValueError,
     "num_items_in_batch"),
    ("num_items zero", {"num_items_in_batch": 0}, ValueError, "num_items_in_batch"),
    ("chunk_bytes zero", {"chunk_bytes": 0}, ValueError, "chunk_bytes"),
    ("grad_output shape", {"reduction": "none", "grad_output": np.ones(3)}, ValueError,
     "grad_output"),
]


@pytest.mark.parametrize("change, error, name", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(change, error, name) -> None:
    args = _valid()
    args.update(change)
    before = {k: np.array(a, copy=True) for k, a in args.items() if isinstance(a, np.ndarray)}
    with pytest.raises(error, match=name):
        fl.linear_cross_entropy_and_grad(**args)
    for k, a in before.items():
        np.testing.assert_array_equal(args[k], a)  # nothing written


def test_inputs_are_not_modified(rng) -> None:
    case = make_case(rng, N, H, C, np.float32, weight=True)
    copies = [np.array(a, copy=True) for a in (case.x, case.w, case.b, case.target, case.weight)]
    fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, chunk_bytes=1000,
                                     **_options(case))
    for a, c in zip((case.x, case.w, case.b, case.target, case.weight), copies):
        np.testing.assert_array_equal(a, c)


def test_non_contiguous_operands(rng) -> None:
    """Transposed (tied-embedding) weights and strided inputs give the same values."""
    case = make_case(rng, N, H, C, np.float64, weight=True)
    w_t = np.asfortranarray(case.w)  # (C, H) viewed from an (H, C) array
    x_s = np.repeat(case.x, 2, axis=1)[:, ::2]
    ours = fl.linear_cross_entropy_and_grad(x_s, w_t, case.target, chunk_bytes=4000,
                                            **_options(case))
    check_result(ours, case)


def test_byte_swapped_operands(rng) -> None:
    """Big-endian input, weight and bias are read as their values, as everywhere else."""
    case = make_case(rng, N, H, C, np.float64, bias=True)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (case.x, case.w, case.b)]
    ours = fl.linear_cross_entropy_and_grad(swapped[0], swapped[1], case.target,
                                            linear_bias=swapped[2], chunk_bytes=4000)
    check_result(ours, case)


def test_probabilities_with_a_negative_ignore_index(rng) -> None:
    """A negative ignore_index names no class: with probability targets torch accepts it
    and ignores nothing."""
    case = make_case(rng, N, H, C, np.float64, probs=True)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target, ignore_index=-1,
                                            chunk_bytes=4000, **_options(case))
    check_result(ours, case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_in_small_blocks(monkeypatch, rng, dtype) -> None:
    """Later chunks add their weight gradient through a block of classes at a time
    (here 3 classes: many blocks, a ragged last one)."""
    from fusedloss import _linear_ce

    monkeypatch.setattr(_linear_ce, "_WEIGHT_GRAD_BLOCK_BYTES", 3 * H * np.dtype(dtype).itemsize)
    case = make_case(rng, N, H, C, dtype, weight=True, ignore_frac=0.1)
    ours = fl.linear_cross_entropy_and_grad(case.x, case.w, case.target,
                                            chunk_bytes=_chunk_bytes(dtype, 8), **_options(case))
    check_result(ours, case)


@pytest.mark.parametrize("chunking", ["one-chunk", "1-token"])
@pytest.mark.parametrize("options", ["plain", "ignore-smooth-weight", "probs-smooth-weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float16_like_torch(rng, reduction, options, chunking) -> None:
    """float16 operands are computed in float32 chunk by chunk, the weight's and bias's
    gradients accumulated in float32; loss and gradients come back in float16.
    Against torch float64 on the same float16 values: no further than twice torch's own
    float16 error (materialised logits) plus 4 float16 ULP of the result's magnitude."""
    case = make_case(rng, 64, H, C, np.float32, **OPTION_CASES[options])
    half = {k: getattr(case, k).astype(np.float16) for k in ("x", "w", "b", "weight")
            if getattr(case, k) is not None}
    if case.target.dtype.kind == "f":
        half["target"] = case.target.astype(np.float16)
    case = case._replace(**half)
    go = rng.standard_normal(64).astype(np.float16) if reduction == "none" else None
    ours = fl.linear_cross_entropy_and_grad(
        case.x, case.w, case.target, reduction=reduction, grad_output=go,
        chunk_bytes=_chunk_bytes(np.float32, CHUNKINGS[chunking]), **_options(case))
    ref = torch_reference(case, np.float64, reduction, go)
    theirs = torch_reference(case, np.float16, reduction, go)
    eps = float(np.finfo(np.float16).eps)
    names = ("loss", "grad_input", "grad_linear_weight", "grad_linear_bias")
    for name, got, want, torch_half in zip(names, ours, ref, theirs):
        assert np.asarray(got).dtype == np.float16, name
        err = np.abs(np.asarray(got, np.float64) - want).max()
        torch_err = np.abs(torch_half - want).max()
        scale = np.abs(want).max()
        assert err <= 2 * torch_err + 4 * eps * scale, (name, err, torch_err)
        # and one rounding of a float32 result: half a float16 ULP (a float16 weight
        # gradient summed over the 64 chunks: 4.4 ULP here)
        assert err <= (0.5 * eps + 1e-5) * scale, (name, err / (eps * scale))
    loss_only = fl.linear_cross_entropy(
        case.x, case.w, case.target, reduction=reduction,
        chunk_bytes=_chunk_bytes(np.float32, CHUNKINGS[chunking]), **_options(case))
    np.testing.assert_array_equal(loss_only, ours[0])


def test_bias_gradient_as_accurate_as_torch_over_many_tokens(rng) -> None:
    """The bias gradient sums the logits' gradient over every token: each chunk's rows
    are summed in float64 (NumPy's float32 sum along axis 0 adds row after row, and
    its error grew with the tokens: 10x torch's at 8192)."""
    n, h, c = 8192, 16, 64
    x = rng.standard_normal((n, h), dtype=np.float32)
    w = (0.3 * rng.standard_normal((c, h))).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    t = rng.integers(0, c, n)
    grad_b = fl.linear_cross_entropy_and_grad(x, w, t, linear_bias=b)[3]

    def torch_grad_b(dtype: Any) -> np.ndarray:
        bt = torch.from_numpy(b).to(dtype).requires_grad_()
        logits = F.linear(torch.from_numpy(x).to(dtype), torch.from_numpy(w).to(dtype), bt)
        F.cross_entropy(logits, torch.from_numpy(t)).backward()
        return bt.grad.double().numpy()

    ref, same = torch_grad_b(torch.float64), torch_grad_b(torch.float32)
    assert grad_b.dtype == np.float32

    def error(g: np.ndarray) -> float:
        return float(np.abs(g - ref).max() / np.abs(ref).max())

    assert error(grad_b) <= 2 * error(same), (error(grad_b), error(same))
