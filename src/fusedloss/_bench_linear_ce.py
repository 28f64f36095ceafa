"""Fused linear + cross-entropy in ``python -m fusedloss bench``: forward + backward of
an LM head, ``N`` tokens x ``H`` hidden x ``C`` classes, float32.

Contenders (each computes the loss and the gradients of the input and the weight):
  flt      ``flt.linear_cross_entropy(h, W, y).backward()``
  fl       ``fl.linear_cross_entropy_and_grad(h, W, y)``
  unfused  ``F.cross_entropy(h @ W.T, y).backward()``: torch with the logits materialised
  chunked  ``F.linear_cross_entropy(h, W, y, options=nn.LinearCrossEntropyOptions())``:
           torch 2.13's own chunked path

Times are medians of rounds run side by side (``_bench.measure``); peak extra memory
is the growth of VmHWM over one call in a fresh process per contender (the
gradients themselves count), reported as a multiple of the unfused path's.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np

import fusedloss as fl

from ._bench_report import Row, fmt_ratio, fmt_time, markdown, optional

SHAPE = (1024, 512, 32000)
QUICK_SHAPE = (128, 64, 1000)
CONTENDERS = ("flt", "fl", "unfused", "chunked")
LABELS = {
    "flt": "flt.linear_cross_entropy",
    "fl": "fl.linear_cross_entropy_and_grad",
    "unfused": "torch F.cross_entropy(h @ W.T, y)",
    "chunked": "torch F.linear_cross_entropy(options=LinearCrossEntropyOptions())",
}
TARGETS = ("targets: fusedloss <= 0.85x the unfused time and <= 0.5x its peak extra memory; "
           ">= 3x faster than torch's chunked path")


def operands(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden states, a head with logits of unit spread, and targets."""
    n, h, c = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h), dtype=np.float32)
    w = rng.standard_normal((c, h), dtype=np.float32)
    w *= np.float32(h**-0.5)
    return x, w, rng.integers(0, c, n, dtype=np.int64)


def contender(name: str, torch: Any, x: np.ndarray, w: np.ndarray, y: np.ndarray) -> Any:
    """A call returning the loss as a float, or None when its library is missing."""
    if name == "fl":
        return lambda: float(fl.linear_cross_entropy_and_grad(x, w, y)[0])
    if torch is None:
        return None
    F = torch.nn.functional
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.from_numpy(y)
    if name == "flt":
        flt = optional("fusedloss.torch")
        if flt is None or not hasattr(flt, "linear_cross_entropy"):
            return None
        fn = lambda: flt.linear_cross_entropy(xt, wt, yt)  # noqa: E731
    elif name == "unfused":
        fn = lambda: F.cross_entropy(xt @ wt.T, yt)  # noqa: E731
    else:
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return None  # a torch before 2.13 has no chunked path
        options = torch.nn.LinearCrossEntropyOptions()
        fn = lambda: F.linear_cross_entropy(xt, wt, yt, options=options)  # noqa: E731

    def run() -> float:
        xt.grad = wt.grad = None
        loss = fn()
        loss.backward()
        return float(loss.detach())

    return run


def vm_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_child(name: str, shape: tuple[int, int, int]) -> None:
    """In a fresh process: print the VmHWM growth of one call over its operands."""
    torch = optional("torch")
    warm = contender(name, torch, *operands((8, shape[1], 64)))
    if warm is None:
        print("n/a")
        return
    warm()  # libraries, thread pools, allocator: not the loss's memory
    call = contender(name, torch, *operands(shape))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        pass
    base = vm_bytes("VmRSS")
    call()
    print(vm_bytes("VmHWM") - base, flush=True)


def peak_extra(name: str, shape: tuple[int, int, int]) -> int | None:
    out = subprocess.run([sys.executable, "-m", "fusedloss._bench_linear_ce", name,
                          *map(str, shape)], capture_output=True, text=True, timeout=600)
    fields = out.stdout.split()
    if out.returncode or not fields or not fields[-1].isdigit():
        return None
    return int(fields[-1])


def linear_ce_row(torch: Any, quick: bool, budget_s: float, memory: bool = True) -> Row:
    """One row: seconds per contender, loss parity vs the unfused path, peak memory."""
    from ._bench import measure

    shape = QUICK_SHAPE if quick else SHAPE
    x, w, y = operands(shape)
    calls = {n: c for n in CONTENDERS if (c := contender(n, torch, x, w, y)) is not None}
    seconds, values = measure(calls, min_reps=3, budget_s=budget_s, passes=1)
    ref = values.get("unfused")
    parity = abs(values["fl"] - ref) / abs(ref) if ref else None
    peaks = {n: peak_extra(n, shape) for n in calls} if memory else {}
    label = f"linear CE {'x'.join(map(str, shape))}"
    return Row(label, seconds, parity, "unfused", extra={"peak_bytes": peaks})


def linear_ce_table(row: Row) -> str:
    """| contender | time | time / unfused | peak extra memory | memory / unfused |."""
    base_s = row.seconds.get("unfused")
    base_m = row.extra["peak_bytes"].get("unfused")
    lines = []
    for name in CONTENDERS:
        s = row.seconds.get(name)
        m = row.extra["peak_bytes"].get(name)
        lines.append([
            LABELS[name], fmt_time(s),
            fmt_ratio(s / base_s) if s and base_s else "n/a",
            f"{m / 2**20:.0f} MiB" if m is not None else "n/a",
            fmt_ratio(m / base_m) if m is not None and base_m else "n/a",
        ])
    note = [f"{row.case} (tokens x hidden x classes) float32, forward + backward (loss, "
            "input and weight gradients); peak extra memory: VmHWM growth over one call in a "
            "fresh process, gradients included", TARGETS]
    if row.parity is not None:
        note.append(f"loss rel. diff of fl vs unfused torch: {row.parity:.1e}")
    header = f"| {row.case} fwd+bwd | time | time / unfused | peak extra memory | memory / unfused |"
    return markdown(header, lines) + "\n\n" + "\n".join(f"- {n}" for n in note)


if __name__ == "__main__":
    peak_child(sys.argv[1], tuple(int(s) for s in sys.argv[2:5]))  # type: ignore[arg-type]
