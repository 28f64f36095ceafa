"""The full benchmark suite (protocol: /BENCHMARKS.md; quick version: ``python -m fusedloss bench``).

    python bench/run_all.py [--output results.md] [--threads N] [--quick] [--skip-memory]

Sections, each a markdown table of ratios measured side by side in this run:
  1. fwd+grad (float32) over more shapes: fusedloss vs floor, torch eager, NumPy
  2. the torch layer (fusedloss.torch) vs torch eager, fwd+bwd, float32 and bfloat16
  3. float64 through the NumPy API
  4. forward-only CE vs one read pass over the logits
  5. per-call overhead at 64x10
  6. thread scaling: 1, 2, ... threads
  7. two Python threads, one kernel thread each: throughput against one Python thread
  8. peak extra memory of fwd+bwd at 2048x50257 (one subprocess per method, VmHWM growth)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any, Callable, Sequence

import numpy as np

import fusedloss as fl
from fusedloss import _bench as b
from fusedloss._bench_linear_ce import vm_bytes

CE_SHAPES: tuple[tuple[int, ...], ...] = (
    (64, 10), (256, 1000), (4096, 1000), (8192, 4096), (1024, 32000), (2048, 50257),
    (128, 128256), (16, 256000), (8, 21, 128, 128), (4, 150, 128, 128),
)
QUICK_CE_SHAPES: tuple[tuple[int, ...], ...] = ((64, 10), (256, 1000), (4, 5, 16, 16))
REGRESSION_SIZES = (10**3, 10**5, 10**6, 10**7, 10**8 // 2)
MEMORY_SHAPE = (2048, 50257)
MEMORY_METHODS = ("torch eager", "fusedloss.torch", "fl, new gradient", "fl, out=", "fl, inplace=True",
                  "NumPy usual")


def section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}\n"


def fwd_grad(torch: Any, shapes: Sequence[tuple[int, ...]], sizes: Sequence[int], budget: float,
             tick: Callable[[str], None]) -> str:
    rows = []
    for shape in shapes:
        tick(f"CE {b.shape_label(shape)}")
        rows.append(b.ce_case(torch, shape, budget))
    for loss in b.ELEMENTWISE_LOSSES:
        for n in sizes:
            tick(f"{loss.name} {b.size_label(n)}")
            rows.append(b.regression_case(torch, loss.name, n, budget))
    return b.main_table(rows)


def torch_layer(torch: Any, flt: Any, shapes: Sequence[tuple[int, ...]], budget: float,
                tick: Callable[[str], None]) -> str:
    F = torch.nn.functional
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            tick(f"torch layer {b.shape_label(shape)} {dtype}")
            x, t = b.logits(shape)
            tt = torch.from_numpy(t)
            ours_leaf = torch.from_numpy(x).to(dtype).requires_grad_()
            eager_leaf = ours_leaf.detach().clone().requires_grad_()
            rows.append(b.compare(
                f"CE {b.shape_label(shape)} {str(dtype).removeprefix('torch.')}",
                b.autograd_call(flt.cross_entropy, ours_leaf, tt),
                b.autograd_call(F.cross_entropy, eager_leaf, tt), "torch eager", budget))
    return b.extras_table(rows, "case, fwd+bwd", "fusedloss.torch")


def float64(torch: Any, shapes: Sequence[tuple[int, ...]], n: int, budget: float,
            tick: Callable[[str], None]) -> str:
    rows = []
    for shape in shapes:
        tick(f"float64 CE {b.shape_label(shape)}")
        x, t = b.logits(shape, np.float64)
        row = b.run_case(f"CE {b.shape_label(shape)} float64",
                         b.ce_contenders(torch, x, t, np.empty_like(x)), budget)
        rows.append(row)
    rng = np.random.default_rng(1)
    a, c = rng.random(n), rng.random(n)
    for kind in ("mse", "l1"):
        tick(f"float64 {kind}")
        rows.append(b.run_case(f"{kind.upper()} {b.size_label(n)} float64",
                               b.regression_contenders(torch, kind, a, c, np.empty_like(a)), budget))
    return b.main_table(rows)


def forward_only(torch: Any, shapes: Sequence[tuple[int, ...]], budget: float,
                 tick: Callable[[str], None]) -> str:
    rows = []
    for shape in shapes:
        tick(f"forward-only {b.shape_label(shape)}")
        rows.append(b.forward_only_case(torch, shape, budget))
    return b.extras_table(rows)


def overhead(torch: Any, calls: int, tick: Callable[[str], None]) -> str:
    tick("64x10 overhead")
    x, t = b.logits((64, 10))
    g = np.empty_like(x)
    a, c = x.ravel(), x.ravel()[::-1].copy()
    timed = {
        "fl.cross_entropy (loss only)": lambda: fl.cross_entropy(x, t),
        "fl.cross_entropy_and_grad, out=": lambda: fl.cross_entropy_and_grad(x, t, out=g),
        "fl.cross_entropy_and_grad, new gradient": lambda: fl.cross_entropy_and_grad(x, t),
        "fl.mse_loss_and_grad 640 elements, out=": lambda: fl.mse_loss_and_grad(a, c, out=g.ravel()),
    }
    lines = [[name, b.fmt_time(seconds)] for name, seconds in b.per_call(timed, calls).items()]
    for row in b.tiny_overhead(torch, calls)[1:]:
        lines.append(["fusedloss.torch.cross_entropy fwd+bwd", b.fmt_time(row.seconds["fusedloss"])])
        lines.append(["torch eager F.cross_entropy fwd+bwd", b.fmt_time(row.seconds["reference"])])
    return b.markdown("| call at 64x10 | time per call |", lines)


def threads(torch: Any, shape: tuple[int, ...], budget: float, tick: Callable[[str], None]) -> str:
    cores = len(os.sched_getaffinity(0))
    counts = sorted({1, 2, cores})
    x, t = b.logits(shape)
    g = np.empty_like(x)
    contenders = b.ce_contenders(torch, x, t, g)
    contenders.pop("numpy")
    results = {}
    for n in counts:
        tick(f"{n} threads")
        b.set_threads(torch, n)
        results[n] = b.measure(contenders, budget_s=budget)[0]
    b.set_threads(torch, cores)
    lines = []
    for n in counts:
        lines.append([str(n)] + [
            f"{b.fmt_time(results[n][lib])}, {b.fmt_ratio(results[1][lib] / results[n][lib])}"
            for lib in contenders
        ])
    header = "| threads | " + " | ".join(f"{lib}, speedup vs 1" for lib in contenders) + " |"
    note = f"\nCE {b.shape_label(shape)} fwd+grad; {cores} cores available."
    return b.markdown(header, lines) + note


PY_THREAD_SHAPES = ((256, 100), (64, 1000), (256, 1000), (4096, 1000))


def python_threads(shapes: Sequence[tuple[int, ...]], budget: float, tick: Callable[[str], None]) -> str:
    """CE fwd+grad with fl.set_num_threads(1): two Python threads calling it at once
    (each on its own arrays) against one thread making both threads' calls; best of 5."""
    import threading
    import time

    before = fl.get_num_threads()
    fl.set_num_threads(1)
    lines = []
    try:
        for shape in shapes:
            tick(f"Python threads {b.shape_label(shape)}")
            x, t = b.logits(shape)
            arrays = [(x.copy(), t, np.empty_like(x)) for _ in range(2)]

            def calls(i: int, n: int) -> None:
                xi, ti, gi = arrays[i]
                for _ in range(n):
                    fl.cross_entropy_and_grad(xi, ti, out=gi)

            t0 = time.perf_counter()
            calls(0, 10)
            n = max(10, int(budget / 10 / ((time.perf_counter() - t0) / 10)))
            one = two = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                calls(0, 2 * n)
                one = min(one, time.perf_counter() - t0)
                pair = [threading.Thread(target=calls, args=(i, n)) for i in range(2)]
                t0 = time.perf_counter()
                for th in pair:
                    th.start()
                for th in pair:
                    th.join()
                two = min(two, time.perf_counter() - t0)
            lines.append([b.shape_label(shape), b.fmt_time(one / (2 * n)), b.fmt_time(two / (2 * n)),
                          b.fmt_ratio(one / two)])
    finally:
        fl.set_num_threads(before)
    return b.markdown("| CE fwd+grad | one Python thread, per call | two Python threads, per call "
                      "| throughput, two / one |", lines)


# ------------------------------------------------------------------ peak memory (subprocess)


def peak_child(method: str, shape: tuple[int, ...]) -> None:
    """Run in a fresh process: print the VmHWM growth of one fwd+bwd over the live set."""
    import torch

    F = torch.nn.functional
    flt = b.torch_layer()

    def step(x: np.ndarray, t: np.ndarray, g: np.ndarray) -> Any:
        if method in ("torch eager", "fusedloss.torch"):
            leaf = torch.from_numpy(x).requires_grad_()
            loss = (F.cross_entropy if method == "torch eager" else flt.cross_entropy)(
                leaf, torch.from_numpy(t))
            loss.backward()
            return leaf.grad
        if method == "fl, new gradient":
            return fl.cross_entropy_and_grad(x, t)
        if method == "fl, out=":
            return fl.cross_entropy_and_grad(x, t, out=g)
        if method == "fl, inplace=True":
            return fl.cross_entropy_and_grad(x, t, inplace=True)
        return b.numpy_cross_entropy(x, t)

    if method == "fusedloss.torch" and flt is None:
        print("n/a")
        return
    x, t = b.logits((8, 16))
    step(x, t, np.empty_like(x))  # one-time initialisation is not the loss's memory
    x, t = b.logits(shape)
    g = np.ones_like(x)  # the caller's buffer, allocated and touched before the baseline
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    base = max(vm_bytes("VmRSS"), 0)
    result = step(x, t, g)
    print(vm_bytes("VmHWM") - base, x.nbytes, flush=True)
    del result


def peak_memory(shape: tuple[int, ...], tick: Callable[[str], None]) -> str:
    lines = []
    for method in MEMORY_METHODS:
        tick(f"memory {method}")
        out = subprocess.run([sys.executable, __file__, "--peak-child", method, *map(str, shape)],
                             capture_output=True, text=True, timeout=300)
        fields = out.stdout.split()
        if out.returncode or len(fields) != 2:
            lines.append([method, "n/a", (out.stderr.strip().splitlines() or ["n/a"])[-1][:80]])
            continue
        extra, nbytes = int(fields[0]), int(fields[1])
        lines.append([method, f"{extra / 2**20:.0f} MiB", f"{extra / nbytes:.2f}x"])
    note = (f"\nCE {b.shape_label(shape)} float32 fwd+bwd, logits {np.prod(shape) * 4 / 2**20:.0f} MiB. "
            "Peak RSS growth (VmHWM after the call minus VmRSS before it) in a fresh process; "
            "the gradient itself counts (1x) unless it goes to out= or overwrites the input.")
    return b.markdown("| method | peak extra memory | x logits size |", lines) + note


# ------------------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", metavar="FILE.md", help="also write the tables to this file")
    p.add_argument("--threads", type=int, help="threads for the non-scaling sections (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    p.add_argument("--skip-memory", action="store_true", help="no peak-memory subprocesses")
    p.add_argument("--peak-child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peak_child:
        peak_child(args.peak_child[0], tuple(int(s) for s in args.peak_child[1:]))
        return 0

    torch = b.optional("torch")
    flt = b.torch_layer() if torch is not None else None
    n = b.set_threads(torch, args.threads)
    quick = args.quick
    ce = QUICK_CE_SHAPES if quick else CE_SHAPES
    sizes = REGRESSION_SIZES[:2] if quick else REGRESSION_SIZES
    budget = 0.1 if quick else 1.0
    big = (64, 1000) if quick else (1024, 32000)
    layer_shapes = ((64, 10), (256, 1000)) if quick else ((64, 10), (4096, 1000), (1024, 32000),
                                                           (2048, 50257), (8, 21, 128, 128))

    steps: list[tuple[str, Callable[[Callable[[str], None]], str]]] = [
        ("fwd+grad, float32", lambda tick: fwd_grad(torch, ce, sizes, budget, tick)),
        ("float64 (NumPy API)", lambda tick: float64(torch, (big,), sizes[-2], budget, tick)),
        ("CE forward-only vs one read pass",
         lambda tick: forward_only(torch, ce[1:3] if quick else ce[2:], budget, tick)),
        ("per-call overhead, 64x10", lambda tick: overhead(torch, 200 if quick else 2000, tick)),
        ("thread scaling", lambda tick: threads(torch, big, budget, tick)),
        ("two Python threads, one kernel thread each",
         lambda tick: python_threads(PY_THREAD_SHAPES[:2] if quick else PY_THREAD_SHAPES, budget, tick)),
    ]
    if flt is not None:
        steps.insert(1, ("fusedloss.torch vs torch eager (fwd+bwd; float32, bfloat16)",
                         lambda tick: torch_layer(torch, flt, layer_shapes, budget, tick)))
    if torch is not None and not args.skip_memory:
        mem_shape = (256, 1000) if quick else MEMORY_SHAPE
        steps.append(("peak extra memory", lambda tick: peak_memory(mem_shape, tick)))

    parts = ["# fusedloss benchmarks\n\n" + "\n".join(b.machine_lines(torch, n)) + "\n"]
    if flt is None:
        parts.append("fusedloss.torch is not importable here: its sections are left out.\n")
    print("\n".join(parts), flush=True)
    bar = b.progress(len(steps))
    try:
        for title, fn in steps:
            parts.append(section(title, fn(bar.set_description)))
            print(parts[-1], flush=True)
            bar.update(1)
    finally:
        bar.close()
    if args.output:
        with open(args.output, "w") as f:
            f.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
