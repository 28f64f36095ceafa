"""fusedloss.torch's GAN objective (flt.gan_discriminator_loss, flt.gan_generator_loss)
against DESIGN.md's formulas in torch ops, differentiated by autograd, in float64.

Tolerances: float64 and float32 as conftest.assert_matches (float32 no less accurate
than the same torch formula in float32; the loss's magnitude is the sum of its
terms' mean |value|, see tests/test_gan.py). float16 / bfloat16 are read as they
are, accumulated in float32 and rounded once: within 2 eps of the half type
relative to the float64 reference on the same half values.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedloss.torch as flt  # noqa: E402
from fusedloss import _torch_elementwise  # noqa: E402
from fusedloss._losses import GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS  # noqa: E402

from conftest import assert_matches  # noqa: E402
from gan_formulas import DISCRIMINATOR, GENERATOR  # noqa: E402

D_KINDS = list(GAN_DISCRIMINATOR_KINDS)
G_KINDS = list(GAN_GENERATOR_KINDS)
SHAPE_PAIRS = [((1,), ()), ((7,), (97,)), ((5, 33), (3, 4, 5)), ((300, 41), (2, 3, 4, 9))]


def reference(terms, tensors, dtype):
    """(loss, grads, magnitude) of the formulas at ``dtype``, as float64."""
    ts = [t.detach().to(dtype).requires_grad_(True) for t in tensors]
    values = [term(t) for term, t in zip(terms, ts)]
    loss = sum(v.mean() for v in values)
    loss.backward()
    magnitude = sum(float(v.detach().abs().double().mean()) for v in values if v.numel())
    return loss.detach().double(), [t.grad.double() for t in ts], magnitude


def ours(fn, tensors):
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = fn(*ts)
    loss.backward()
    return loss, [t.grad for t in ts]


def check(fn, terms, tensors):
    """flt's loss and gradients against the formulas (float32: and torch float32's error)."""
    loss, grads = ours(fn, tensors)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    assert loss.dtype == dtype and loss.shape == ()
    ref_loss, ref_grads, magnitude = reference(terms, tensors, torch.float64)
    low = None
    if any(t.dtype is torch.float32 for t in tensors):
        low = reference(terms, tensors, torch.float32)
    precision = np.float32 if low is not None else np.float64
    assert_matches(loss.detach().double().numpy(), ref_loss.numpy(),
                   None if low is None else low[0].numpy(), precision, "loss", magnitude)
    for i, (g, t) in enumerate(zip(grads, tensors)):
        assert g.dtype == t.dtype and g.shape == t.shape
        np_dtype = np.float32 if t.dtype is torch.float32 else np.float64
        assert_matches(g.double().numpy(), ref_grads[i].numpy(),
                       None if low is None else low[1][i].numpy(), np_dtype, f"grad {i}")


def randn(shape, dtype, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def discriminator(kind):
    return lambda r, f: flt.gan_discriminator_loss(r, f, kind)


def generator(kind):
    return lambda f: flt.gan_generator_loss(f, kind)


@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_discriminator_matches_torch(kind, dtype):
    for seed, (rs, fs) in enumerate(SHAPE_PAIRS):
        r, f = randn(rs, dtype, seed), randn(fs, dtype, seed + 100)
        check(discriminator(kind), DISCRIMINATOR[kind], [r, f])


@pytest.mark.parametrize("kind", G_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_generator_matches_torch(kind, dtype):
    for seed, (shape, _) in enumerate(SHAPE_PAIRS):
        check(generator(kind), (GENERATOR[kind],), [randn(shape, dtype, seed)])


def test_defaults_are_minimax_and_non_saturating():
    r, f = randn((30,), torch.float64, 1), randn((20,), torch.float64, 2)
    assert flt.gan_discriminator_loss(r, f) == flt.gan_discriminator_loss(r, f, "minimax")
    assert flt.gan_generator_loss(f) == flt.gan_generator_loss(f, "non_saturating")


def test_large_and_special_logits():
    """Stable at large |logits| (no inf / NaN where the result is finite); NaN and
    infinities where the formulas in torch put them."""
    big = torch.tensor([-1e4, -200.0, -88.0, -30.0, 0.0, 30.0, 88.0, 200.0, 1e4])
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    for dtype in (torch.float32, torch.float64):
        for kind in D_KINDS:
            loss = flt.gan_discriminator_loss(big.to(dtype), big.flip(0).to(dtype), kind)
            assert torch.isfinite(loss), kind
            check(discriminator(kind), DISCRIMINATOR[kind], [big.to(dtype), big.flip(0).to(dtype)])
            check(discriminator(kind), DISCRIMINATOR[kind], [special.to(dtype), big.to(dtype)])
        for kind in G_KINDS:
            assert torch.isfinite(flt.gan_generator_loss(big.to(dtype), kind)), kind
            check(generator(kind), (GENERATOR[kind],), [big.to(dtype)])
            check(generator(kind), (GENERATOR[kind],), [special.to(dtype)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_types_read_as_they_are(dtype):
    r, f = randn((9, 31), dtype, 3), randn((200,), dtype, 4)
    eps = torch.finfo(dtype).eps
    for kind in D_KINDS:
        loss, (gr, gf) = ours(discriminator(kind), [r, f])
        ref_loss, ref_grads, magnitude = reference(DISCRIMINATOR[kind], [r, f], torch.float64)
        assert loss.dtype == gr.dtype == gf.dtype == dtype
        torch.testing.assert_close(loss.double(), ref_loss, rtol=2 * eps, atol=2 * eps * magnitude)
        for g, ref in zip((gr, gf), ref_grads):
            torch.testing.assert_close(g.double(), ref, rtol=2 * eps, atol=1e-7)
    for kind in G_KINDS:
        loss, (g,) = ours(generator(kind), [f])
        ref_loss, (ref,), magnitude = reference((GENERATOR[kind],), [f], torch.float64)
        assert loss.dtype == g.dtype == dtype
        torch.testing.assert_close(loss.double(), ref_loss, rtol=2 * eps, atol=2 * eps * magnitude)
        torch.testing.assert_close(g.double(), ref, rtol=2 * eps, atol=1e-7)


def test_half_types_are_not_upcast(monkeypatch):
    """The kernel gets the half tensor itself, not a float32 copy."""
    seen = []
    real = _torch_elementwise.elementwise_kernel
    monkeypatch.setattr(_torch_elementwise, "elementwise_kernel",
                        lambda op, x, *a: seen.append(x.dtype) or real(op, x, *a))
    x = randn((10,), torch.bfloat16, 5)
    flt.gan_discriminator_loss(x, x.half())
    assert seen == [torch.bfloat16, torch.float16]


def test_mixed_dtypes_promote_as_torch():
    r, f = randn((40,), torch.float32, 6), randn((30,), torch.float64, 7)
    for kind in D_KINDS:
        check(discriminator(kind), DISCRIMINATOR[kind], [r, f])
        check(discriminator(kind), DISCRIMINATOR[kind], [f, r])


@pytest.mark.parametrize("kind", D_KINDS)
def test_gradcheck(kind):
    r = randn((4, 3), torch.float64, 8).requires_grad_(True)
    f = randn((5,), torch.float64, 9).requires_grad_(True)
    assert torch.autograd.gradcheck(discriminator(kind), (r, f))
    g_kind = G_KINDS[D_KINDS.index(kind) % len(G_KINDS)]
    assert torch.autograd.gradcheck(generator(g_kind), (f,))


def test_gradients_for_one_side_only_and_no_grad():
    r, f = randn((6,), torch.float64, 10), randn((7,), torch.float64, 11)
    f.requires_grad_(True)
    loss = flt.gan_discriminator_loss(r, f)
    loss.backward()
    assert r.grad is None and f.grad is not None
    _, (ref,), _ = reference((DISCRIMINATOR["minimax"][1],), [f], torch.float64)
    torch.testing.assert_close(f.grad, ref, rtol=1e-10, atol=1e-15)
    with torch.no_grad():
        assert flt.gan_generator_loss(f).grad_fn is None
    loss = flt.gan_generator_loss(f.detach())
    assert not loss.requires_grad


def test_grad_output_scales_and_accumulates():
    f = randn((50,), torch.float64, 12).requires_grad_(True)
    (3.0 * flt.gan_generator_loss(f, "least_squares")).backward()
    torch.testing.assert_close(f.grad, 3.0 * (f.detach() - 1) / 50)
    flt.gan_generator_loss(f, "wasserstein").backward()  # accumulates
    torch.testing.assert_close(f.grad, 3.0 * (f.detach() - 1) / 50 - 1 / 50)


def test_non_contiguous_logits():
    base = randn((8, 10), torch.float32, 13)
    r, f = base[:, ::3], base.t()
    for kind in D_KINDS:
        check(discriminator(kind), DISCRIMINATOR[kind], [r, f])


def test_empty_logits_are_nan_as_torch_mean():
    empty, f = torch.zeros(0, 3), randn((5,), torch.float32, 14)
    for kind in D_KINDS:
        check(discriminator(kind), DISCRIMINATOR[kind], [empty, f])
    for kind in G_KINDS:
        check(generator(kind), (GENERATOR[kind],), [empty])


def test_non_cpu_falls_back_to_torch_ops(monkeypatch):
    """Other devices run the same formulas in torch ops (simulated: no GPU here)."""
    r, f = randn((6,), torch.float64, 15), randn((4,), torch.float64, 16)
    expected = {kind: flt.gan_discriminator_loss(r, f, kind) for kind in D_KINDS}
    monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
    monkeypatch.setattr(_torch_elementwise, "elementwise_apply",
                        lambda *a: pytest.fail("the kernel ran for a non-CPU tensor"))
    for kind in D_KINDS:
        check(discriminator(kind), DISCRIMINATOR[kind], [r, f])
        torch.testing.assert_close(flt.gan_discriminator_loss(r, f, kind), expected[kind])
    for kind in G_KINDS:
        check(generator(kind), (GENERATOR[kind],), [f])


def test_meta_tensors_use_torch_ops():
    r = torch.empty(4, 5, device="meta", requires_grad=True)
    loss = flt.gan_discriminator_loss(r, torch.empty(3, device="meta"), "hinge")
    assert loss.device.type == "meta" and loss.shape == ()
    assert flt.gan_generator_loss(r).device.type == "meta"


def test_torch_func_transforms_use_torch_ops():
    f = randn((9,), torch.float64, 17)
    for kind in G_KINDS:
        grad = torch.func.grad(generator(kind))(f)
        _, (ref,), _ = reference((GENERATOR[kind],), [f], torch.float64)
        torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-15)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def objective(r, f):
        total = sum(flt.gan_discriminator_loss(r, f, kind) for kind in D_KINDS)
        return total + sum(flt.gan_generator_loss(f, kind) for kind in G_KINDS)

    def reference_objective(r, f):
        total = sum(a(r).mean() + b(f).mean() for a, b in DISCRIMINATOR.values())
        return total + sum(g(f).mean() for g in GENERATOR.values())

    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    for seed in range(2):
        r = randn((16, 3), torch.float64, 20 + seed).requires_grad_(True)
        f = randn((40,), torch.float64, 30 + seed).requires_grad_(True)
        loss = compiled(r, f)
        loss.backward()
        r2, f2 = r.detach().clone().requires_grad_(True), f.detach().clone().requires_grad_(True)
        ref = reference_objective(r2, f2)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r.grad, r2.grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(f.grad, f2.grad, rtol=1e-10, atol=1e-14)
    assert graphs and graphs[0].count("fusedloss.elementwise") == 2 * len(D_KINDS) + len(G_KINDS)


def test_custom_op_with_scalar_target_passes_opcheck():
    x = torch.randn(4, 6, requires_grad=True)
    for op, target, scale in [("logistic", -1.0, -1.0), ("mse", 1.0, 0.5), ("hinge", 1.0, 1.0)]:
        args = (x, None, None, None, op, 1, 0.0, 0.0, True, False, False, target, scale)
        torch.library.opcheck(_torch_elementwise.elementwise_op, args)


def test_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="^kind"):
        flt.gan_discriminator_loss(x, x, "vanilla")
    with pytest.raises(ValueError, match="^kind"):
        flt.gan_generator_loss(x, kind=1)
    with pytest.raises(TypeError, match="^real_logits"):
        flt.gan_discriminator_loss([0.0], x)
    with pytest.raises(TypeError, match="^fake_logits"):
        flt.gan_discriminator_loss(x, np.zeros(3))
    with pytest.raises(TypeError, match="^fake_logits"):
        flt.gan_generator_loss(None)
    with pytest.raises(TypeError, match="^fake_logits"):
        flt.gan_generator_loss(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="^real_logits"):
        flt.gan_discriminator_loss(torch.zeros(3, dtype=torch.complex64), x)


def test_exported():
    assert {"gan_discriminator_loss", "gan_generator_loss"} <= set(flt.__all__)
