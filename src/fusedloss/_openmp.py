"""Load the compiled kernels with an OpenMP runtime that sleeps when idle.

By default libgomp's workers spin for a while after each parallel region. On a
small or shared machine the spinning threads take the cores that the Python
thread (or another process) needs next: a loop alternating torch ops with
fusedloss calls ran at 8-70 ms per step instead of 4 ms on 2 cores here. So,
unless the user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT), the kernels'
runtime is loaded with OMP_WAIT_POLICY=PASSIVE. libgomp reads its environment
once, when it is loaded, and the variable is removed again right after.

torch's wheel ships a libgomp.so.1 of the same soname, and the dynamic loader
keeps one per process: whichever of torch and fusedloss is imported first loads
the runtime both then use. Import fusedloss first (or set OMP_WAIT_POLICY
yourself) to get the passive policy for both; when torch came first, its
runtime, with its policy, is already there and this changes nothing.
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
