"""Formatting of ``python -m fusedloss bench`` results: rows, markdown tables, the
machine description, the progress bar and the plot (measuring is in ``_bench``)."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

import fusedloss as fl

HEADER = (
    "| case | fusedloss | floor, fl/floor | torch eager, torch/fl | NumPy, numpy/fl | loss rel. diff |"
)


def optional(module: str) -> Any:
    """The module, or None when it (or something it needs) is not installed."""
    try:
        return importlib.import_module(module)
    except (ImportError, AttributeError):
        return None


@dataclass
class Row:
    case: str
    seconds: dict[str, float]
    parity: float | None = None  # |fusedloss - reference| / |reference| of the loss
    parity_ref: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def size_label(n: int) -> str:
    """1000 -> '1e3', 50000000 -> '5e7', 1234 -> '1234'."""
    exp = len(str(n)) - 1
    lead, rest = divmod(n, 10**exp)
    return f"{lead}e{exp}" if exp and not rest else str(n)


# -------------------------------------------------------------------------- reporting


def fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def markdown(header: str, lines: Iterable[Sequence[str]]) -> str:
    cols = header.count("|") - 1
    rows = [header, "|" + "---|" * cols]
    rows += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(rows)


def main_table(rows: Sequence[Row]) -> str:
    def cell(row: Row, lib: str) -> str:
        s, ours = row.seconds.get(lib), row.seconds["fusedloss"]
        if s is None:
            return "n/a"
        ratio = ours / s if lib == "floor" else s / ours
        return f"{fmt_time(s)}, {fmt_ratio(ratio)}"

    return markdown(HEADER, [
        [r.case, fmt_time(r.seconds["fusedloss"]), cell(r, "floor"), cell(r, "torch"),
         cell(r, "numpy"), f"{r.parity:.1e} vs {r.parity_ref}"]
        for r in rows
    ])


def extras_table(rows: Sequence[Row], first: str = "measurement", ours: str = "fusedloss") -> str:
    lines = []
    for r in rows:
        ref = r.seconds.get("reference")
        ratio = fmt_ratio(r.seconds["fusedloss"] / ref) if ref else "-"
        ref_cell = f"{fmt_time(ref)}, {r.extra['ref']}" if ref else "-"
        lines.append([r.case, fmt_time(r.seconds["fusedloss"]), ref_cell, ratio])
    return markdown(f"| {first} | {ours} | reference | {ours}/reference |", lines)


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with family/model numbers (VMs often hide the name)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def machine_lines(torch: Any, threads: int) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"fusedloss {fl.__version__}", f"numpy {np.__version__}"]
    versions.append(f"torch {torch.__version__}" if torch is not None else "torch not installed")
    versions.append(f"python {platform.python_version()}")
    floor_how = ("torch.mul(x, 1.5, out=g) / torch.sub(a, b, out=g), all threads" if torch is not None
                 else "np.multiply(x, 1.5, out=g) / np.subtract(a, b, out=g), single-threaded "
                      "(torch not installed)")
    return [
        f"- CPU: {cpu_model()}, {cores} cores available ({os.cpu_count()} logical in the machine)",
        f"- threads used: {threads} ({'fusedloss and torch' if torch is not None else 'fusedloss'}); "
        f"ISA path: {fl.cpu_capability()}",
        f"- versions: {', '.join(versions)}",
        f"- floor: {floor_how}",
        f"- OpenMP wait policy: {wait_policy()}; one runtime, shared by torch and fusedloss",
        "- fusedloss writes its gradient into a pre-allocated out= buffer (a training loop's "
        "way); torch eager and NumPy allocate theirs. float32, mean reduction, class-index "
        "targets; medians of >= 7 runs after warm-up, each contender's runs back to back "
        "(thread pools awake), the contenders taking turns over two passes.",
    ]


def wait_policy() -> str:
    """The OpenMP runtime's idle policy as the environment sets it (read at its load)."""
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    chosen = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    if chosen:
        return ", ".join(chosen)
    return "the runtime's default (idle workers spin briefly, then sleep)"


def progress(total: int, quiet: bool = False) -> Any:
    """A tqdm bar on stderr, or a plain counter there when tqdm is missing."""
    tqdm = optional("tqdm")
    if tqdm is not None:
        return tqdm.tqdm(total=total, file=sys.stderr, disable=quiet, leave=False)

    class Counter:
        n = 0

        def set_description(self, desc: str) -> None:
            if not quiet:
                print(f"[{self.n + 1}/{total}] {desc}", file=sys.stderr, flush=True)

        def update(self, k: int = 1) -> None:
            self.n += k

        def close(self) -> None:
            pass

    return Counter()


def plot(rows: Sequence[Row], path: str) -> None:
    """Bar chart of torch/fusedloss and numpy/fusedloss per case, log scale."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.case for r in rows]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows)), 4.5))
    for k, lib in enumerate(("torch", "numpy")):
        ratios = [r.seconds[lib] / r.seconds["fusedloss"] if lib in r.seconds else np.nan for r in rows]
        bars = ax.bar(pos + (k - 0.5) * 0.4, ratios, 0.4, label=f"{lib} / fusedloss")
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("speedup of fusedloss (time ratio, log)")
    ax.set_title(f"fusedloss fwd+grad speedup, {cpu_model()}, {fl.get_num_threads()} threads", fontsize=9)
    ax.set_ylim(top=ax.get_ylim()[1] * 3)  # headroom for the legend
    ax.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
