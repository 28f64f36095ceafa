"""Side-by-side timings behind ``python -m fusedloss bench`` (protocol: BENCHMARKS.md).

The machines are shared and noisy, so every figure is a ratio measured in the same
run: the contenders of one case run round-robin (one call each per round) and each
reports the median of its rounds. torch, scipy, tqdm and matplotlib are optional and
imported lazily; without torch the floor is NumPy's (single-threaded) and the torch
columns read "n/a".

Contenders, per case:
  fusedloss  ``fl.*_and_grad(..., out=g)``: the gradient goes into a pre-allocated
             buffer, as a training loop would run it.
  floor      one pass reading the input once and writing a same-size buffer:
             ``torch.mul(x, 1.5, out=g)`` with all threads (the elementwise losses, which
             read two arrays: ``torch.sub(a, b, out=g)``).
  torch      eager forward + backward through autograd (``F.cross_entropy(x).backward()``).
             nll_loss / multi_margin_loss: the same, their gradient written over a fresh
             zero buffer by torch, into ``g`` by fusedloss.
  numpy      NumPy written the usual way (``scipy.special.logsumexp`` + softmax gradient;
             MSE/L1 only among the elementwise losses).
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

import fusedloss as fl
from fusedloss._losses import ELEMENTWISE_BY_NAME, ELEMENTWISE_LOSSES, ElementwiseLoss

from ._bench_gan import gan_case
from ._bench_linear_ce import linear_ce_row, linear_ce_table
from ._bench_llm import llm_rows
from ._bench_report import (  # noqa: F401 (some re-exported for bench/run_all.py, tests)
    HEADER,
    Row,
    cpu_model,
    extras_table,
    fmt_ratio,
    fmt_time,
    machine_lines,
    main_table,
    markdown,
    optional,
    plot,
    progress,
    shape_label,
    size_label,
)

Timed = Callable[[], Any]
LIBRARIES = ("fusedloss", "floor", "torch", "numpy")
CE_SHAPES: tuple[tuple[int, ...], ...] = (
    (64, 10), (256, 1000), (4096, 1000), (1024, 32000), (2048, 50257), (8, 21, 128, 128),
)
REGRESSION_SIZES = (10**3, 10**6, 10**7)
CLASS_LOSS_SHAPE, QUICK_CLASS_LOSS_SHAPE = (4096, 1000), (256, 100)  # nll_loss, multi_margin_loss
QUICK_CE_SHAPES: tuple[tuple[int, ...], ...] = ((64, 10), (256, 1000), (4, 5, 16, 16))
QUICK_REGRESSION_SIZES = (10**3, 10**5)
WARM_UP_BELOW_S = 0.05  # calls longer than this need no extra warm-up call (nor can afford one)


def torch_layer() -> Any:
    """``fusedloss.torch`` when it imports and has ``cross_entropy``, else None."""
    flt = optional("fusedloss.torch")
    return flt if flt is not None and hasattr(flt, "cross_entropy") else None


# ----------------------------------------------------------------------------- timing


def measure(
    contenders: dict[str, Timed], min_reps: int = 7, budget_s: float = 0.5, max_reps: int = 200,
    passes: int = 2,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per contender; also each contender's first result.

    Each contender runs its repetitions back to back after an untimed warm-up call, so
    its thread pool is awake (waking sleeping OpenMP workers costs milliseconds on some
    VMs, which would swamp small cases), and the contenders take turns over ``passes``
    passes, so a slow spell of the machine hits all of them. The first call sizes the
    repetitions: as many as fit in ``budget_s`` per contender, never fewer than ``min_reps``.
    """
    values: dict[str, Any] = {}
    reps: dict[str, int] = {}
    cheap: dict[str, bool] = {}
    for name, fn in contenders.items():
        t0 = time.perf_counter()
        values[name] = fn()
        once = time.perf_counter() - t0
        cheap[name] = once < WARM_UP_BELOW_S
        if cheap[name]:  # the first call paid page faults and lazy set-up: time a second one
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
        reps[name] = max(min_reps, min(max_reps, int(budget_s / len(contenders) / max(once, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for p in range(passes):
        for name, fn in contenders.items():
            if p and cheap[name]:
                fn()
            for _ in range(reps[name] // passes + (p < reps[name] % passes)):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}, values


def per_call(fns: dict[str, Timed], calls: int = 300, reps: int = 7) -> dict[str, float]:
    """Median seconds per call of tiny calls, timed in batches of ``calls`` after
    warm-up. The contenders' batches take turns, so a drift of the machine's speed
    reaches them alike, as measure() does for the larger cases."""
    for fn in fns.values():
        for _ in range(calls // 10 + 1):
            fn()
    batches: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            batches[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(b) for name, b in batches.items()}


# ------------------------------------------------------------------------- contenders


def logits(shape: Sequence[int], dtype: Any = np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform logits in [-4, 4) and class-index targets for a (N, C, ...) shape."""
    rng = np.random.default_rng(seed)
    x = rng.random(tuple(shape), dtype=np.float32)
    x *= 8
    x -= 4
    t = rng.integers(0, shape[1], (shape[0], *shape[2:]), dtype=np.int64)
    return x.astype(dtype, copy=False), t


def numpy_cross_entropy(x: np.ndarray, t: np.ndarray) -> tuple[Any, np.ndarray]:
    """Mean CE and its gradient the way NumPy code usually writes them."""
    special = optional("scipy.special")
    if special is not None:
        lse = special.logsumexp(x, axis=1, keepdims=True)
    else:
        m = x.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    index = t[:, None]
    loss = np.mean(lse - np.take_along_axis(x, index, axis=1))
    grad = np.exp(x - lse)
    np.put_along_axis(grad, index, np.take_along_axis(grad, index, axis=1) - 1, axis=1)
    grad /= t.size
    return loss, grad


def numpy_regression(kind: str, a: np.ndarray, b: np.ndarray) -> tuple[Any, np.ndarray]:
    d = a - b
    if kind == "mse":
        return np.mean(d * d), d * (2 / d.size)
    return np.mean(np.abs(d)), np.sign(d) / d.size


def floor(torch: Any, g: np.ndarray, *inputs: np.ndarray) -> Timed:
    """Read ``inputs`` once, write ``g`` once: multiply by 1.5 (one input) or subtract (two)."""
    if torch is None:
        if len(inputs) == 1:
            return lambda: np.multiply(inputs[0], 1.5, out=g)
        return lambda: np.subtract(inputs[0], inputs[1], out=g)
    tg = torch.from_numpy(g)
    ti = [torch.from_numpy(a) for a in inputs]
    if len(ti) == 1:
        return lambda: torch.mul(ti[0], 1.5, out=tg)
    return lambda: torch.sub(ti[0], ti[1], out=tg)


def autograd_call(loss_fn: Callable[..., Any], leaf: Any, *rest: Any) -> Timed:
    """Forward + backward through autograd, the gradient cleared before each call."""

    def run() -> Any:
        leaf.grad = None
        loss = loss_fn(leaf, *rest)
        loss.backward()
        return loss.detach()

    return run


def ce_contenders(torch: Any, x: np.ndarray, t: np.ndarray, g: np.ndarray) -> dict[str, Timed]:
    c: dict[str, Timed] = {
        "fusedloss": lambda: fl.cross_entropy_and_grad(x, t, out=g)[0],
        "floor": floor(torch, g, x),
    }
    if torch is not None:
        leaf = torch.from_numpy(x).requires_grad_()
        c["torch"] = autograd_call(torch.nn.functional.cross_entropy, leaf, torch.from_numpy(t))
    c["numpy"] = lambda: numpy_cross_entropy(x, t)[0]
    return c


def elementwise_inputs(loss: ElementwiseLoss, n: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 input and target of ``n`` elements in the loss's domain."""
    rng = np.random.default_rng(1)
    values = {
        "real": lambda: rng.standard_normal(n, dtype=np.float32),
        "probability": lambda: rng.random(n, dtype=np.float32),
        "log_probability": lambda: np.log(rng.random(n, dtype=np.float32) + np.float32(1e-3)),
    }
    return values[loss.input_kind](), values[loss.target_kind]()


def regression_contenders(
    torch: Any, kind: str, a: np.ndarray, b: np.ndarray, g: np.ndarray
) -> dict[str, Timed]:
    """An elementwise loss by name (``mse``, ``l1`` or a ``_losses`` name)."""
    loss = ELEMENTWISE_BY_NAME.get(kind) or ELEMENTWISE_BY_NAME[f"{kind}_loss"]
    fused = getattr(fl, loss.name + "_and_grad")
    c: dict[str, Timed] = {"fusedloss": lambda: fused(a, b, out=g)[0], "floor": floor(torch, g, a, b)}
    if torch is not None:
        loss_fn = getattr(torch.nn.functional, loss.name)
        c["torch"] = autograd_call(loss_fn, torch.from_numpy(a).requires_grad_(), torch.from_numpy(b))
    if loss.op in ("mse", "l1"):
        c["numpy"] = lambda: numpy_regression(loss.op, a, b)[0]
    return c


def numpy_class_loss(kind: str, x: np.ndarray, t: np.ndarray) -> tuple[Any, np.ndarray]:
    """Mean NLL / multi-margin (p=1, margin 1) loss and gradient, written the usual NumPy way."""
    rows = np.arange(len(t))
    grad = np.zeros_like(x)
    if kind == "nll":
        grad[rows, t] = -1 / len(t)
        return -x[rows, t].mean(), grad
    z = 1 - x[rows, t][:, None] + x
    z[rows, t] = 0
    positive = z > 0
    grad[positive] = 1 / x.size
    grad[rows, t] = -positive.sum(axis=1) / x.size
    return np.maximum(z, 0).sum() / x.size, grad


def class_loss_contenders(
    torch: Any, kind: str, x: np.ndarray, t: np.ndarray, g: np.ndarray
) -> dict[str, Timed]:
    fused = fl.nll_loss_and_grad if kind == "nll" else fl.multi_margin_loss_and_grad
    c: dict[str, Timed] = {"fusedloss": lambda: fused(x, t, out=g)[0], "floor": floor(torch, g, x)}
    if torch is not None:
        loss_fn = getattr(torch.nn.functional, f"{kind}_loss")
        c["torch"] = autograd_call(loss_fn, torch.from_numpy(x).requires_grad_(), torch.from_numpy(t))
    c["numpy"] = lambda: numpy_class_loss(kind, x, t)[0]
    return c


# ------------------------------------------------------------------------------ cases


def run_case(label: str, contenders: dict[str, Timed], budget_s: float) -> Row:
    seconds, values = measure(contenders, budget_s=budget_s)
    ref_name = "torch" if "torch" in values else "numpy"
    ours, ref = float(values["fusedloss"]), float(values[ref_name])
    parity = abs(ours - ref) / abs(ref) if ref else abs(ours - ref)
    return Row(label, seconds, parity, ref_name)


def ce_case(torch: Any, shape: Sequence[int], budget_s: float) -> Row:
    x, t = logits(shape)
    return run_case(f"CE {shape_label(shape)}", ce_contenders(torch, x, t, np.empty_like(x)), budget_s)


LOSS_LABELS = {"mse_loss": "MSE", "l1_loss": "L1", "huber_loss": "Huber", "smooth_l1_loss": "SmoothL1",
               "binary_cross_entropy": "BCE", "binary_cross_entropy_with_logits": "BCE logits",
               "kl_div": "KL"}


def regression_case(torch: Any, kind: str, n: int, budget_s: float) -> Row:
    """An elementwise loss (``mse``, ``l1`` or a ``_losses`` name) at ``n`` float32 elements."""
    loss = ELEMENTWISE_BY_NAME.get(kind) or ELEMENTWISE_BY_NAME[f"{kind}_loss"]
    a, b = elementwise_inputs(loss, n)
    contenders = regression_contenders(torch, loss.name, a, b, np.empty_like(a))
    return run_case(f"{LOSS_LABELS.get(loss.name, loss.name)} {size_label(n)}", contenders,
                    budget_s)


def class_loss_case(torch: Any, kind: str, shape: Sequence[int], budget_s: float) -> Row:
    """nll_loss / multi_margin_loss fwd+grad over (N, C) float32 scores."""
    x, t = logits(shape)
    label = f"{'NLL' if kind == 'nll' else 'MultiMargin'} {shape_label(shape)}"
    return run_case(label, class_loss_contenders(torch, kind, x, t, np.empty_like(x)), budget_s)


def compare(label: str, ours: Timed, reference: Timed, ref_label: str, budget_s: float) -> Row:
    """fusedloss against one reference, side by side (an extras-table row)."""
    seconds, _ = measure({"fusedloss": ours, "reference": reference}, budget_s=budget_s)
    return Row(label, seconds, extra={"ref": ref_label})


def forward_only_case(torch: Any, shape: Sequence[int], budget_s: float) -> Row:
    """CE loss alone vs one read pass over the logits (``torch.sum`` / ``x.sum()``)."""
    x, t = logits(shape)
    read: Timed = x.sum if torch is None else torch.from_numpy(x).sum
    return compare(f"CE forward-only {shape_label(shape)}", lambda: fl.cross_entropy(x, t), read,
                   "one read pass, " + ("x.sum()" if torch is None else "torch.sum"), budget_s)


def tiny_overhead(torch: Any, calls: int) -> list[Row]:
    """Per-call cost at 64x10: the NumPy API, and the torch layer against torch eager."""
    x, t = logits((64, 10))
    g = np.empty_like(x)
    rows = [Row("NumPy API 64x10 fwd+grad (out=), per call",
                per_call({"fusedloss": lambda: fl.cross_entropy_and_grad(x, t, out=g)}, calls))]
    flt = torch_layer() if torch is not None else None
    if flt is not None:
        tt = torch.from_numpy(t)
        ours = autograd_call(flt.cross_entropy, torch.from_numpy(x.copy()).requires_grad_(), tt)
        eager = autograd_call(torch.nn.functional.cross_entropy,
                              torch.from_numpy(x.copy()).requires_grad_(), tt)
        rows.append(Row("fusedloss.torch 64x10 fwd+bwd vs torch eager, per call",
                        per_call({"fusedloss": ours, "reference": eager}, calls),
                        extra={"ref": "torch eager"}))
    return rows



# ------------------------------------------------------------------------------- run


@dataclass
class Report:
    rows: list[Row]
    extras: list[Row]
    machine: list[str]
    linear: list[Row] = field(default_factory=list)  # fused linear + cross-entropy

    def text(self) -> str:
        tables = [main_table(self.rows), extras_table(self.extras)]
        tables += [linear_ce_table(r) for r in self.linear]
        return "\n\n".join([*tables, "\n".join(self.machine)])

    def as_json(self) -> dict[str, Any]:
        def enc(r: Row) -> dict[str, Any]:
            return {"case": r.case, "seconds": r.seconds, "parity": r.parity,
                    "parity_ref": r.parity_ref, **r.extra}

        return {"rows": [enc(r) for r in self.rows], "extras": [enc(r) for r in self.extras],
                "linear_ce": [enc(r) for r in self.linear], "machine": self.machine}


def set_threads(torch: Any, threads: int | None) -> int:
    n = threads or fl.get_num_threads()
    fl.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return n


def run(quick: bool = False, threads: int | None = None, quiet: bool = False) -> Report:
    torch = optional("torch")
    n = set_threads(torch, threads)
    ce_shapes = QUICK_CE_SHAPES if quick else CE_SHAPES
    sizes = QUICK_REGRESSION_SIZES if quick else REGRESSION_SIZES
    budget = 0.1 if quick else 0.5
    tasks: list[tuple[str, Callable[[], Any]]] = [
        (f"CE {shape_label(s)}", lambda s=s: ce_case(torch, s, budget)) for s in ce_shapes
    ]
    tasks += [(f"{loss.name} {size_label(m)}",
               lambda k=loss.name, m=m: regression_case(torch, k, m, budget))
              for loss in ELEMENTWISE_LOSSES for m in sizes]
    class_shape = QUICK_CLASS_LOSS_SHAPE if quick else CLASS_LOSS_SHAPE
    tasks += [(f"{k} {shape_label(class_shape)}", lambda k=k: class_loss_case(torch, k, class_shape, budget))
              for k in ("nll", "multi_margin")]
    tasks.append(("GAN D+G", lambda: gan_case(torch, budget)))
    fwd_shape = (64, 1000) if quick else (1024, 32000)
    tasks.append(("CE forward-only", lambda: forward_only_case(torch, fwd_shape, budget)))
    tasks.append(("CE extras, KL with logits", lambda: llm_rows(torch, quick, budget)))
    tasks.append(("64x10 per call", lambda: tiny_overhead(torch, 100 if quick else 1000)))
    # Peak memory needs a fresh process per contender: left out of the quick run.
    tasks.append(("linear CE", lambda: linear_ce_row(torch, quick, budget, memory=not quick)))

    rows: list[Row] = []
    extras: list[Row] = []
    linear: list[Row] = []
    bar = progress(len(tasks), quiet)
    try:
        with warnings.catch_warnings():
            # Every row's reduction is mean; torch's kl_div warns on it that mean is
            # not batchmean, which says nothing about the timing.
            warnings.filterwarnings("ignore", "reduction: 'mean' divides", UserWarning)
            for desc, task in tasks:
                bar.set_description(desc)
                result = task()
                if isinstance(result, list):
                    extras.extend(result)
                elif result.case.startswith("CE forward-only"):
                    extras.insert(0, result)
                elif result.case.startswith("linear CE"):
                    linear.append(result)
                else:
                    rows.append(result)
                bar.update(1)
    finally:
        bar.close()
    return Report(rows, extras, machine_lines(torch, n), linear)
