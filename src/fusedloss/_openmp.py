"""Load the compiled kernels with an OpenMP runtime that sleeps when idle.

The kernels' OpenMP runtime (the system libgomp) is a different library from
the one bundled in torch's wheel, so a process that uses both has two thread
pools. By default libgomp workers spin for a while after each parallel region;
two pools spinning on a small machine starve each other (measured here: torch
eager at 64 x 10 went from 0.08 ms to 12-24 ms per call on 2 cores). So, unless
the user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT), the kernels'
runtime is loaded with OMP_WAIT_POLICY=PASSIVE. libgomp reads its environment
once, when it is loaded; the variable is restored right after, so runtimes
loaded later (torch's) keep their own defaults.
"""

from __future__ import annotations

import importlib
import os

_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def load_core() -> None:
    if any(name in os.environ for name in _POLICY_VARIABLES):
        importlib.import_module("fusedloss._core")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        importlib.import_module("fusedloss._core")
    finally:
        del os.environ["OMP_WAIT_POLICY"]
