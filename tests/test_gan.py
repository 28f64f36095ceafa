"""The GAN objective of the NumPy API (fl.gan_discriminator_loss[_and_grad],
fl.gan_generator_loss[_and_grad]) against DESIGN.md's formulas written in torch
ops (F.softplus, F.relu, squares, means), differentiated by autograd, in float64,
on every compiled path.

Tolerances: those of conftest.assert_matches: float64 to 1e-10 relative; float32
no less accurate than the same formula in torch float32 against the float64
reference (within a factor 2, or 4 float32 ULP of the magnitude). The loss's
magnitude is the sum over its terms of mean(|term|): each term is a mean of
values of either sign (the Wasserstein terms), which any float32 sum gets right
to a few ULP of the mean of their magnitudes, not of a mean that cancels.
float16: read as it is, accumulated in float32, rounded once to float16: within
2**-10 relative of the float64 reference (one half ULP is 2**-11).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedloss as fl
from fusedloss._losses import GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS

from conftest import REAL_DTYPES, assert_matches, forced_capability
from gan_formulas import DISCRIMINATOR, GENERATOR, Term

D_KINDS = list(GAN_DISCRIMINATOR_KINDS)
G_KINDS = list(GAN_GENERATOR_KINDS)
SHAPE_PAIRS = [((), (1,)), ((7,), (97,)), ((5, 33), (3, 4, 5)), ((300, 41), (2, 3, 4, 9)),
               ((65_537,), (1000,))]  # the last one above the kernel's parallel threshold
GRAD_OUTPUTS = [None, 2.5, np.array(-0.75)]


class Ref:
    """The float64 torch reference and torch at the logits' own precision."""

    def __init__(self, terms: tuple[Term, ...], arrays: tuple[np.ndarray, ...],
                 grad_output: Any = None) -> None:
        go = 1.0 if grad_output is None else float(grad_output)
        self.loss, self.grads, self.magnitude = self._run(terms, arrays, torch.float64, go)
        self.low = None
        if any(a.dtype == np.float32 for a in arrays):
            self.low = self._run(terms, arrays, torch.float32, go)

    @staticmethod
    def _run(terms, arrays, dtype, go):
        ts = [torch.from_numpy(np.asarray(a, np.float64)).to(dtype).requires_grad_(True)
              for a in arrays]
        values = [term(t) for term, t in zip(terms, ts)]
        loss = sum(v.mean() for v in values)
        (loss * go).backward()
        magnitude = sum(float(v.detach().abs().mean()) for v in values if v.numel())
        return (loss.detach().double().numpy(), [t.grad.double().numpy() for t in ts],
                magnitude)

    def check(self, loss: Any, grads: tuple[np.ndarray, ...], arrays: tuple[np.ndarray, ...],
              loss_dtype: Any) -> None:
        assert isinstance(loss, np.generic) and loss.dtype == loss_dtype, (type(loss), loss)
        low = self.low
        # A float32 term makes a float64 loss (mixed dtypes) only float32-accurate.
        precision = loss_dtype if low is None else np.float32
        assert_matches(loss, self.loss, None if low is None else low[0], precision, "loss",
                       self.magnitude)
        for i, (grad, a) in enumerate(zip(grads, arrays)):
            assert isinstance(grad, np.ndarray) and grad.dtype == a.dtype
            assert grad.shape == a.shape
            assert_matches(grad, self.grads[i], None if low is None else low[1][i], a.dtype,
                           f"grad {i}")


def logits(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any,
           scale: float = 2.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale).astype(dtype)


def check_discriminator(kind: str, r: np.ndarray, f: np.ndarray, grad_output: Any = None,
                        **kwargs: Any) -> None:
    loss, gr, gf = fl.gan_discriminator_loss_and_grad(r, f, kind, grad_output, **kwargs)
    only = fl.gan_discriminator_loss(r, f, kind)
    np.testing.assert_array_equal(only, loss)  # the same kernel calls
    dtype = np.result_type(r.dtype, f.dtype)
    Ref(DISCRIMINATOR[kind], (r, f), grad_output).check(loss, (gr, gf), (r, f), dtype)


def check_generator(kind: str, f: np.ndarray, grad_output: Any = None, **kwargs: Any) -> None:
    loss, gf = fl.gan_generator_loss_and_grad(f, kind, grad_output, **kwargs)
    np.testing.assert_array_equal(fl.gan_generator_loss(f, kind), loss)
    Ref((GENERATOR[kind],), (f,), grad_output).check(loss, (gf,), (f,), f.dtype)


# ------------------------------------------------------------------------ values


@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_discriminator_matches_torch(kind, dtype, capability, rng):
    for (rshape, fshape), go in zip(SHAPE_PAIRS, GRAD_OUTPUTS * 2):
        check_discriminator(kind, logits(rng, rshape, dtype), logits(rng, fshape, dtype), go)


@pytest.mark.parametrize("kind", G_KINDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_generator_matches_torch(kind, dtype, capability, rng):
    for (shape, _), go in zip(SHAPE_PAIRS, GRAD_OUTPUTS * 2):
        check_generator(kind, logits(rng, shape, dtype), go)


def test_defaults_and_formulas_as_written(rng):
    """DESIGN.md's minimax formulas literally (log of sigmoid, fine at moderate
    logits in float64); the defaults are "minimax" (D) and "non_saturating" (G)."""
    r, f = rng.uniform(-6, 6, 50), rng.uniform(-6, 6, 70)
    tr, tf = torch.from_numpy(r), torch.from_numpy(f)
    s = torch.sigmoid
    d = float((-torch.log(s(tr))).mean() + (-torch.log(1 - s(tf))).mean())
    np.testing.assert_allclose(fl.gan_discriminator_loss(r, f), d, rtol=1e-12)
    np.testing.assert_allclose(fl.gan_discriminator_loss(r, f, "non_saturating"), d, rtol=1e-12)
    np.testing.assert_allclose(fl.gan_generator_loss(f), float((-torch.log(s(tf))).mean()),
                               rtol=1e-12)
    np.testing.assert_allclose(fl.gan_generator_loss(f, "minimax"),
                               float(torch.log(1 - s(tf)).mean()), rtol=1e-12)


@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_large_logits_are_stable(dtype, capability):
    """No inf or NaN where the result is finite: softplus never goes through
    log(sigmoid(x)), which is log(0) = -inf for x = -200 in float64."""
    big = [-1e4, -200.0, -88.0, -30.0, -1e-3, 0.0, 30.0, 88.0, 200.0, 1e4]
    huge = big + [-1e30, 1e30]  # (1e30)^2 overflows float32: not for least squares
    for kind in D_KINDS:
        v = np.array(big if kind == "least_squares" else huge, dtype)
        loss, gr, gf = fl.gan_discriminator_loss_and_grad(v, v[::-1].copy(), kind)
        assert np.isfinite(loss) and np.isfinite(gr).all() and np.isfinite(gf).all(), kind
        check_discriminator(kind, v, v[::-1].copy())
    for kind in G_KINDS:
        v = np.array(big if kind == "least_squares" else huge, dtype)
        loss, g = fl.gan_generator_loss_and_grad(v, kind)
        assert np.isfinite(loss) and np.isfinite(g).all(), kind
        check_generator(kind, v)


@pytest.mark.parametrize("dtype", REAL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_and_inf_as_torch(dtype, capability, rng):
    """NaN in, NaN out; infinite logits give the formulas' limits (softplus(-inf) = 0,
    relu's gradient passes at NaN), where torch puts them."""
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0], dtype)
    for a, b in ((specials, logits(rng, (9,), dtype)), (logits(rng, (9,), dtype), specials),
                 (specials[1:2], specials[2:3]), (specials[2:3], specials[1:2])):
        for kind in D_KINDS:
            check_discriminator(kind, a, b)
    for v in (specials, specials[1:2], specials[2:3]):
        for kind in G_KINDS:
            check_generator(kind, v)


def test_float16_read_as_it_is(rng):
    r = logits(rng, (9, 31), np.float16)
    f = logits(rng, (200,), np.float16)
    for kind in D_KINDS:
        loss, gr, gf = fl.gan_discriminator_loss_and_grad(r, f, kind)
        ref = Ref(DISCRIMINATOR[kind], (r, f))
        assert loss.dtype == np.float16 and gr.dtype == gf.dtype == np.float16
        np.testing.assert_allclose(float(loss), ref.loss, rtol=2**-10, atol=2**-10 * ref.magnitude)
        for ours, theirs in zip((gr, gf), ref.grads):
            np.testing.assert_allclose(ours.astype(np.float64), theirs, rtol=2**-10, atol=2**-24)
    for kind in G_KINDS:
        loss, g = fl.gan_generator_loss_and_grad(f, kind)
        ref = Ref((GENERATOR[kind],), (f,))
        assert loss.dtype == np.float16 and g.dtype == np.float16
        np.testing.assert_allclose(float(loss), ref.loss, rtol=2**-10, atol=2**-10 * ref.magnitude)
        np.testing.assert_allclose(g.astype(np.float64), ref.grads[0], rtol=2**-10, atol=2**-24)


def test_real_and_fake_dtypes_promote(rng):
    """float32 real with float64 fake: the loss is float64 (np.result_type, as torch's
    sum of the terms); each gradient keeps its own logits' dtype."""
    r, f = logits(rng, (40,), np.float32), logits(rng, (30,), np.float64)
    for kind in D_KINDS:
        check_discriminator(kind, r, f)
        check_discriminator(kind, f, r)
        assert fl.gan_discriminator_loss(r, f.astype(np.float16), kind).dtype == np.float32


def test_empty_logits_give_nan_as_torch(rng):
    """A mean over zero elements is NaN (torch.mean); the other term's gradient is unharmed."""
    empty, f = np.zeros((0, 3), np.float32), logits(rng, (17,), np.float32)
    for kind in D_KINDS:
        check_discriminator(kind, empty, f)
        check_discriminator(kind, f, empty)
        loss, gr, gf = fl.gan_discriminator_loss_and_grad(empty, empty, kind)
        assert np.isnan(loss) and gr.shape == gf.shape == (0, 3)
    for kind in G_KINDS:
        check_generator(kind, empty)


@settings(max_examples=40, deadline=None)
@given(
    kind_index=st.integers(0, len(D_KINDS) - 1),
    rshape=st.lists(st.integers(0, 9), max_size=3).map(tuple),
    fshape=st.lists(st.integers(0, 9), max_size=3).map(tuple),
    dtype=st.sampled_from(REAL_DTYPES),
    grad_output=st.sampled_from([None, 1.0, -3.0, 0.25]),
    seed=st.integers(0, 2**32 - 1),
    path=st.sampled_from(fl._core.supported_capabilities()),
)
def test_hypothesis_shapes(kind_index, rshape, fshape, dtype, grad_output, seed, path):
    rng = np.random.default_rng(seed)
    r, f = logits(rng, rshape, dtype, 4.0), logits(rng, fshape, dtype, 4.0)
    with forced_capability(path):
        check_discriminator(D_KINDS[kind_index], r, f, grad_output)
        check_generator(G_KINDS[kind_index % len(G_KINDS)], f, grad_output)


@pytest.mark.parametrize("which", ["discriminator", "generator"])
def test_bitwise_identical_for_any_thread_count(which, rng):
    r, f = logits(rng, (3, 100_003), np.float32), logits(rng, (200_001,), np.float32)
    threads = fl.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            fl.set_num_threads(n)
            if which == "discriminator":
                out = fl.gan_discriminator_loss_and_grad(r, f)
            else:
                out = fl.gan_generator_loss_and_grad(f)
            results.append(b"".join(np.asarray(a).tobytes() for a in out))
    finally:
        fl.set_num_threads(threads)
    assert results[0] == results[1] == results[2]


# ------------------------------------------------------- out=, inplace=True


@pytest.mark.parametrize("kind", ["minimax", "least_squares", "wasserstein"])
def test_discriminator_out_and_inplace(kind, rng):
    base_r, base_f = logits(rng, (6, 20), np.float32), logits(rng, (9,), np.float64)
    r = base_r[:, ::2]  # strided
    f = base_f
    ref_loss, ref_gr, ref_gf = fl.gan_discriminator_loss_and_grad(np.ascontiguousarray(r), f,
                                                                  kind, 1.5)
    saved_r, saved_f = base_r.copy(), base_f.copy()
    out_r, out_f = np.empty((6, 10), np.float32), np.empty((9, 2))[:, 0]  # out_f strided
    loss, gr, gf = fl.gan_discriminator_loss_and_grad(r, f, kind, 1.5, out_real=out_r,
                                                      out_fake=out_f)
    assert gr is out_r and gf is out_f
    np.testing.assert_array_equal(base_r, saved_r)  # inputs untouched
    np.testing.assert_array_equal(base_f, saved_f)
    for got, want in ((loss, ref_loss), (gr, ref_gr), (gf, ref_gf)):
        np.testing.assert_array_equal(got, want)
    # out= is the logits themselves: the gradient in place
    rc = np.ascontiguousarray(r)
    _, gr, _ = fl.gan_discriminator_loss_and_grad(rc, f, kind, 1.5, out_real=rc)
    assert gr is rc
    np.testing.assert_array_equal(gr, ref_gr)
    # inplace=True: both logits overwritten, strided ones through a copy
    fc = f.copy()
    loss, gr, gf = fl.gan_discriminator_loss_and_grad(r, fc, kind, 1.5, inplace=True)
    assert gr is r and gf is fc
    np.testing.assert_array_equal(r, ref_gr)
    np.testing.assert_array_equal(fc, ref_gf)
    np.testing.assert_array_equal(loss, ref_loss)


@pytest.mark.parametrize("kind", G_KINDS)
def test_generator_out_and_inplace(kind, rng):
    base = logits(rng, (8, 30), np.float32)
    f = base[::2, 1::3]
    ref_loss, ref_g = fl.gan_generator_loss_and_grad(np.ascontiguousarray(f), kind, -2.0)
    saved = base.copy()
    out = np.empty(f.shape, np.float32)
    loss, g = fl.gan_generator_loss_and_grad(f, kind, -2.0, out=out)
    assert g is out
    np.testing.assert_array_equal(base, saved)
    np.testing.assert_array_equal(g, ref_g)
    np.testing.assert_array_equal(loss, ref_loss)
    loss, g = fl.gan_generator_loss_and_grad(f, kind, -2.0, inplace=True)
    assert g is f
    np.testing.assert_array_equal(f, ref_g)
    np.testing.assert_array_equal(loss, ref_loss)


# ------------------------------------------------------------------- bad input

def _ro() -> np.ndarray:
    a = np.zeros((2, 3), np.float32)
    a.flags.writeable = False
    return a


BAD_DISCRIMINATOR = [
    ({"kind": "vanilla"}, ValueError, "kind"),
    ({"kind": None}, ValueError, "kind"),
    ({"real_logits": [1.0, 2.0]}, TypeError, "real_logits"),
    ({"real_logits": np.zeros(3, np.int32)}, TypeError, "real_logits"),
    ({"fake_logits": np.zeros(3, bool)}, TypeError, "fake_logits"),
    ({"fake_logits": np.zeros(3, np.complex64)}, TypeError, "fake_logits"),
    ({"grad_output": True}, TypeError, "grad_output"),
    ({"grad_output": np.ones(3)}, ValueError, "grad_output"),
    ({"grad_output": "1"}, TypeError, "grad_output"),
    ({"out_real": np.zeros((3, 2), np.float32)}, ValueError, "out_real"),
    ({"out_fake": np.zeros(5, np.float64)}, TypeError, "out_fake"),
    ({"out_real": _ro()}, ValueError, "out_real"),
    ({"inplace": "yes"}, TypeError, "inplace"),
    ({"inplace": True, "out_real": np.zeros((2, 3), np.float32)}, ValueError, "out_real"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_DISCRIMINATOR,
                         ids=[str(i) for i in range(len(BAD_DISCRIMINATOR))])
def test_discriminator_bad_input_names_the_argument(kwargs, error, match):
    args = {"real_logits": np.ones((2, 3), np.float32), "fake_logits": np.ones(5, np.float32)}
    args.update(kwargs)
    saved = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(error, match=f"^{match}"):
        fl.gan_discriminator_loss_and_grad(**args)
    for k, v in saved.items():
        np.testing.assert_array_equal(args[k], v)
    only = {k: args[k] for k in ("real_logits", "fake_logits", "kind") if k in args}
    if set(kwargs) <= {"real_logits", "fake_logits", "kind"}:
        with pytest.raises(error, match=f"^{match}"):
            fl.gan_discriminator_loss(**only)


def test_discriminator_rejects_aliasing_before_writing():
    """Each term's gradient must not land where the other term still reads (or
    writes): refused before either kernel runs."""
    r = np.linspace(-2, 2, 6).astype(np.float32)
    f = np.linspace(-1, 3, 6).astype(np.float32)
    saved_r, saved_f = r.copy(), f.copy()
    cases = [
        ({"real_logits": r, "fake_logits": r, "inplace": True}, "fake_logits"),
        ({"real_logits": r, "fake_logits": r[::2], "inplace": True}, "fake_logits"),
        ({"real_logits": r, "fake_logits": f, "out_real": f}, "out_real"),
        ({"real_logits": r, "fake_logits": f, "out_fake": r}, "out_fake"),
        ({"real_logits": r, "fake_logits": f, "out_real": r, "out_fake": r}, "out_real"),
        ({"real_logits": r, "fake_logits": r, "out_real": r}, "out_real"),
        ({"real_logits": r[:4], "fake_logits": f, "out_real": r[2:]}, "out_real"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=f"^{name}"):
            fl.gan_discriminator_loss_and_grad(**kwargs)
        np.testing.assert_array_equal(r, saved_r)
        np.testing.assert_array_equal(f, saved_f)
    # Reading the same array twice is fine.
    loss, gr, gf = fl.gan_discriminator_loss_and_grad(r, r)
    np.testing.assert_array_equal(r, saved_r)
    assert np.isfinite(loss)


def test_generator_bad_input_names_the_argument():
    f = np.ones(4, np.float32)
    for kwargs, error, match in [
        ({"kind": "minmax"}, ValueError, "kind"),
        ({"fake_logits": "x"}, TypeError, "fake_logits"),
        ({"fake_logits": np.ones(4, np.int64)}, TypeError, "fake_logits"),
        ({"grad_output": [1.0]}, TypeError, "grad_output"),
        ({"out": np.zeros(5, np.float32)}, ValueError, "out"),
        ({"out": f[::-1]}, ValueError, "out"),
        ({"inplace": 1}, TypeError, "inplace"),
        ({"fake_logits": _ro(), "inplace": True}, ValueError, "fake_logits"),
    ]:
        args: dict[str, Any] = {"fake_logits": f, **kwargs}
        with pytest.raises(error, match=f"^{match}"):
            fl.gan_generator_loss_and_grad(**args)
        if set(kwargs) <= {"fake_logits", "kind"}:
            with pytest.raises(error, match=f"^{match}"):
                fl.gan_generator_loss(**args)
    np.testing.assert_array_equal(f, np.ones(4, np.float32))


def test_exported():
    for name in ("gan_discriminator_loss", "gan_discriminator_loss_and_grad",
                 "gan_generator_loss", "gan_generator_loss_and_grad"):
        assert name in fl.__all__ and callable(getattr(fl, name))
