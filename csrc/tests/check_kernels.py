"""Kernel-level parity check against torch, every forced ISA path.

Not part of the pytest suite (tests/ holds that): a quick driver for the
kernel engineer. Run: .venv/bin/python csrc/tests/check_kernels.py
"""

import itertools
import sys

import numpy as np
import torch
import torch.nn.functional as F

import fusedloss._core as core

RED = {"none": 0, "mean": 1, "sum": 2}
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 2e-2}
failures = []


def to_np(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    return t.numpy(), False


def acc_dtype(dt):
    return torch.float64 if dt == torch.float64 else torch.float32


def close(name, got, ref, tol):
    got = got.to(torch.float64) if isinstance(got, torch.Tensor) else torch.as_tensor(np.asarray(got)).to(torch.float64)
    ref = ref.detach().to(torch.float64)
    if not torch.allclose(got, ref, rtol=tol, atol=tol, equal_nan=True):
        err = (got - ref).abs().nan_to_num(1e300).max().item()
        failures.append(f"{name}: max abs err {err:.3g}")


def fl_grad_view(g, bf):
    if bf:
        return torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(g)


def check_ce(isa, dt, shape, prob, weight, ignore, eps, red, inplace=False, special=None):
    torch.manual_seed(hash((shape, prob, weight, ignore, eps, red)) % 1000)
    N, C = shape[0], shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dt)
    if special == "neginf":
        x[..., 1] = -float("inf")
    if special == "nan":
        x.view(N, C, -1)[0, 2, 0] = float("nan")
    if special == "big":
        x = x * 1e37 if dt == torch.float32 else x
    spatial = shape[2:]
    if prob:
        t = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dt)
    else:
        t = torch.randint(0, C, (N,) + spatial)
        if ignore:
            t.view(-1)[::3] = -100
    w = torch.rand(C, dtype=acc_dtype(dt)) + 0.5 if weight else None
    xr = x.to(torch.float64).clone().requires_grad_()
    ref = F.cross_entropy(xr, t.to(torch.float64) if prob else t,
                          weight=None if w is None else w.double(), reduction=red, label_smoothing=eps)
    go = torch.rand(ref.shape, dtype=torch.float64) if red == "none" else torch.tensor(1.7, dtype=torch.float64)
    (ref * go).sum().backward()
    inner = int(np.prod(spatial)) if spatial else 1
    xn, bf = to_np(x.contiguous())
    x3 = xn.reshape(N, C, inner).copy()
    tn = to_np(t.contiguous())[0].reshape(N, C, inner) if prob else t.numpy().reshape(N, inner)
    adt = np.float64 if dt == torch.float64 else np.float32
    loss_out = np.zeros((N, inner), adt) if red == "none" else None
    g = x3 if inplace else np.empty_like(x3)
    gon = go.numpy().astype(adt).reshape(N, inner) if red == "none" else None
    r = core.cross_entropy(x3, tn, None if w is None else w.numpy(), -100, eps, RED[red], loss_out, g,
                           gon, 1.0 if red == "none" else 1.7, bf)
    tol = TOL[dt]
    name = f"ce {isa} {dt} {shape} prob={prob} w={weight} ign={ignore} eps={eps} {red} inpl={inplace} {special}"
    close(name + " loss", loss_out.reshape(ref.shape) if red == "none" else r, ref, tol)
    close(name + " grad", fl_grad_view(g, bf).reshape(shape), xr.grad, tol)


def check_reg(isa, dt, n, kind, red, cplx=False):
    torch.manual_seed(n)
    if cplx:
        cd = torch.complex128 if dt == torch.float64 else torch.complex64
        x, t = torch.randn(n, dtype=cd), torch.randn(n, dtype=cd)
        x[:3] = t[:3]
    else:
        x, t = torch.randn(n, dtype=torch.float64).to(dt), torch.randn(n, dtype=torch.float64).to(dt)
        x[:5] = t[:5]
        if n > 10:
            x[7] = float("nan")
    xr = x.to(torch.complex128 if cplx else torch.float64).clone().requires_grad_()
    fn = F.mse_loss if kind == "mse" else F.l1_loss
    ref = fn(xr, t.to(xr.dtype), reduction=red)
    go = torch.rand(ref.shape, dtype=torch.float64) if red == "none" else torch.tensor(1.3, dtype=torch.float64)
    (ref * go).sum().backward()
    xn, bf = to_np(x)
    tn, _ = to_np(t)
    adt = np.float64 if dt == torch.float64 else np.float32
    loss_out = np.zeros(n, adt) if red == "none" else None
    g = np.empty_like(xn)
    gon = go.numpy().astype(adt) if red == "none" else None
    r = getattr(core, "mse" if kind == "mse" else "l1")(xn, tn, RED[red], loss_out, g, gon,
                                                        1.0 if red == "none" else 1.3, bf)
    name = f"{kind} {isa} {dt} n={n} {red} cplx={cplx}"
    close(name + " loss", loss_out if red == "none" else r, ref, TOL[dt])
    gg = torch.from_numpy(g) if not bf else fl_grad_view(g, bf)
    ref_g = torch.view_as_real(xr.grad) if cplx else xr.grad
    close(name + " grad", torch.view_as_real(gg) if cplx else gg, ref_g, TOL[dt])


def check_determinism(isa):
    """Bitwise identical loss and gradient for 1, 2 and 3 threads."""
    rng = np.random.default_rng(5)
    cases = [(4, 70000, 1), (3, 20000, 1), (64, 10, 1), (2, 7, 1000), (300, 50, 1)]
    for N, C, inner in cases:
        x = rng.standard_normal((N, C, inner), dtype=np.float32) * 4
        t = rng.integers(0, C, (N, inner))
        w = rng.random(C, dtype=np.float32)
        for eps, red in ((0.0, 1), (0.2, 2)):
            outs = []
            for thr in (1, 2, 3):
                core.set_num_threads(thr)
                g = np.empty_like(x)
                r = core.cross_entropy(x, t, w, -100, eps, red, None, g, None, 1.0, False)
                outs.append((r, g))
            for r, g in outs[1:]:
                if r != outs[0][0] or not np.array_equal(g, outs[0][1]):
                    failures.append(f"determinism {isa} {N}x{C}x{inner} eps={eps}: {r!r} vs {outs[0][0]!r}")
    for n in (100003, 3_000_000):
        x, t = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
        for fn in (core.mse, core.l1):
            rs = []
            for thr in (1, 2, 3):
                core.set_num_threads(thr)
                rs.append(fn(x, t, 1, None, None, None, 1.0, False))
            if len(set(rs)) != 1:
                failures.append(f"determinism {isa} {fn.__name__} n={n}: {rs}")
    core.set_num_threads(2)


def main():
    for isa in core.supported_capabilities() if hasattr(core, "supported_capabilities") else ["baseline", "avx2", "avx512"]:
        core.set_capability(isa)
        check_determinism(isa)
        for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for shape in ((7, 13), (64, 10), (6, 50), (3, 40000), (5, 97), (4, 5, 3, 7), (2, 21, 130), (1, 3, 16)):
                for prob, weight, ignore, eps, red in itertools.product(
                        (False, True), (False, True), (False, True), (0.0, 0.1), ("none", "mean", "sum")):
                    if prob and ignore:
                        continue
                    check_ce(isa, dt, shape, prob, weight, ignore, eps, red)
                check_ce(isa, dt, shape, False, True, True, 0.1, "mean", inplace=True)
                for sp in ("neginf", "nan", "big"):
                    check_ce(isa, dt, shape, False, False, False, 0.0, "mean", special=sp)
            for n, kind, red in itertools.product((0, 1, 17, 1000, 100003), ("mse", "l1"), ("none", "mean", "sum")):
                check_reg(isa, dt, n, kind, red)
                if kind == "l1" and dt in (torch.float32, torch.float64):
                    check_reg(isa, dt, n, kind, red, cplx=True)
    print("\n".join(failures[:60]))
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
