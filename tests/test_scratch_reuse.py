"""The kernels' heap scratch is kept by the calling thread between calls
(csrc/fusedloss/scratch_pool.cpp): repeated calls fault no fresh pages in.

Without it, glibc could hand the scratch back to the system after each call (it
depends on its dynamic thresholds, so on the process's history), and first
touching the pages again cost more than the kernel: cross-entropy with softcap
over 8 x 32000 float32 faulted 93 pages a call at 1 thread and 218 at 2 (4 us
each on a KVM VM). Each case runs in a fresh interpreter whose glibc maps every
block of 64 KiB or more on its own (MALLOC_MMAP_THRESHOLD_), so that a block
given back to malloc surely goes back to the system: the worst case, without
depending on the process's history. Minor faults are counted, not time, so the
test is not a benchmark.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CASES = {
    # rows with their e and t scratch (two rows a thread)
    "capped rows": "x, t = logits(8, 32000); f = lambda: fl.cross_entropy_and_grad(x, t, out=g, softcap=30.0)",
    # a loss per position, summed in a fixed order
    "nll_loss": "x, t = logits(65536, 10); f = lambda: fl.nll_loss_and_grad(x, t, out=g)",
    # K-dim input (the column tiles' e)
    "columns": "x, t = logits(2, 1000, 4096); f = lambda: fl.cross_entropy_and_grad(x, t, out=g)",
    "kl_div_with_logits": ("x, _ = logits(8, 32000); y = x[::-1].copy(); "
                           "f = lambda: fl.kl_div_with_logits_and_grad(x, y, out=g)"),
}

CHILD = """
import resource, sys
import numpy as np
import fusedloss as fl

def logits(*shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 3
    t = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    return x, t

fl.set_num_threads({threads})
{setup}
g = np.empty_like(x)
f(); f()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def instrumented() -> bool:
    """Under AddressSanitizer (scripts/sanitize.sh) every block goes to malloc."""
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and getrusage's minor faults")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_repeated_calls_fault_no_fresh_pages(case: str, threads: int) -> None:
    if instrumented():
        pytest.skip("AddressSanitizer build: scratch is not kept")
    code = textwrap.dedent(CHILD).format(threads=threads, setup=CASES[case])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    faults = float(out.stdout.split()[-1])
    # 16 pages (64 KiB) a call of slack for NumPy's and Python's own allocations;
    # the scratch handed back and faulted in again was 93-218 pages a call.
    assert faults < 16, f"{faults} minor page faults a call"
