"""Kernel timings against the memory floor, measured side by side.

Floor: torch.mul(x, 1.5, out=g) (read one, write one) for cross-entropy
with gradient; x.sum() style single read for forward only; torch.add(x, t,
out=g) (read two, write one) for MSE/L1. Run: .venv/bin/python csrc/tests/bench_kernels.py
"""

import sys
import time

import numpy as np
import torch

import fusedloss._core as core


def best(fn, reps=15):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def ce_case(N, C, inner=1, threads=2, isa=None):
    if isa:
        core.set_capability(isa)
    core.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, inner), dtype=np.float32)
    t = rng.integers(0, C, (N, inner))
    g = np.empty_like(x)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    fwdbwd = best(lambda: core.cross_entropy(x, t, None, -100, 0.0, 1, None, g, None, 1.0, False))
    fwd = best(lambda: core.cross_entropy(x, t, None, -100, 0.0, 1, None, None, None, 1.0, False))
    floor_rw = best(lambda: torch.mul(xt, 1.5, out=gt))
    floor_r = best(lambda: xt.sum())
    tt = torch.from_numpy(t).reshape(N, inner) if inner > 1 else torch.from_numpy(t).reshape(N)
    xin = xt.reshape(N, C, inner) if inner > 1 else xt.reshape(N, C)
    xr = xin.clone().requires_grad_()

    def torch_ce():
        xr.grad = None
        torch.nn.functional.cross_entropy(xr, tt).backward()

    tor = best(torch_ce, 3)
    print(f"CE {N}x{C}x{inner} thr={threads} {core.cpu_capability()}: fwd+grad {fwdbwd*1e3:.2f} ms = "
          f"{fwdbwd/floor_rw:.2f}x floor(rw {floor_rw*1e3:.2f}); fwd {fwd*1e3:.2f} ms = {fwd/floor_r:.2f}x read "
          f"({floor_r*1e3:.2f}); torch fwd+bwd {tor*1e3:.1f} ms")
    return fwdbwd


def reg_case(n, kind, threads=2):
    core.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    g = np.empty_like(x)
    fn = getattr(core, kind)
    k = best(lambda: fn(x, t, 1, None, g, None, 1.0, False))
    xt, tt, gt = map(torch.from_numpy, (x, t, g))
    floor = best(lambda: torch.add(xt, tt, out=gt))
    print(f"{kind} n={n} thr={threads}: {k*1e3:.2f} ms = {k/floor:.2f}x floor ({floor*1e3:.2f} ms)")


def tiny():
    core.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((64, 10, 1), dtype=np.float32)
    t = np.zeros((64, 1), np.int64)
    g = np.empty_like(x)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        core.cross_entropy(x, t, None, -100, 0.0, 1, None, g, None, 1.0, False)
    print(f"CE 64x10 call: {(time.perf_counter()-t0)/n*1e6:.2f} us (incl. binding)")


if __name__ == "__main__":
    which = sys.argv[1:] or ["ce", "reg", "tiny"]
    if "ce" in which:
        one = ce_case(1024, 32000, threads=1)
        two = ce_case(1024, 32000, threads=2)
        print(f"  2-thread speedup {one/two:.2f}x")
        ce_case(2048, 50257)
        ce_case(4, 262144)
        ce_case(8, 21, 128 * 128)
    if "reg" in which:
        reg_case(10_000_000, "mse")
        reg_case(10_000_000, "l1")
    if "tiny" in which:
        tiny()
