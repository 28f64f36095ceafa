"""One OpenMP runtime per process: loads the GNU OpenMP runtime the compiled
module will use, before the module itself.

``_core`` needs ``libgomp.so.1`` by that name, and the wheel does not carry a
copy (``auditwheel repair --exclude libgomp.so.1``, scripts/wheel_check.sh). The
dynamic loader gives a library that needs ``libgomp.so.1`` the copy already
loaded under that name, so whichever of torch and fusedloss is imported first,
the other shares its runtime: one thread pool, whose idle workers spin briefly
for both (two private runtimes spin against each other: a 256 x 1000
cross-entropy right after a torch op took 25x its time alone).

The copy, in this order:

1. one already loaded (torch imported first, or any other library): nothing to do;
2. torch's own, ``torch/lib/libgomp.so.1``, when torch is installed (found without
   importing torch): a later ``import torch`` then finds its own runtime loaded;
   had fusedloss loaded the system's instead, torch would have to run on it;
3. the system's (``libgomp1`` / ``libgomp`` packages), by the loader's search.

Without any, importing fusedloss raises an ImportError that says how to get one.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

SONAME = "libgomp.so.1"

_NOT_FOUND = (
    "fusedloss needs the GNU OpenMP runtime, libgomp.so.1, and found none: install "
    "your system's package (Debian/Ubuntu: apt-get install libgomp1; Fedora/RHEL: "
    "dnf install libgomp; Alpine: apk add libgomp), or PyTorch, whose wheel carries one"
)

_runtime: ctypes.CDLL | None = None  # kept for the life of the process


def _loaded() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(SONAME, mode=os.RTLD_NOLOAD)
    except OSError:
        return None


def torch_copy() -> str | None:
    """Path of torch's ``libgomp.so.1`` if torch is installed with one."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "lib", SONAME)
        if os.path.isfile(path):
            return path
    return None


def load_runtime() -> None:
    """Make sure a ``libgomp.so.1`` is loaded, choosing it as the module docstring says."""
    global _runtime
    if _runtime is not None or not sys.platform.startswith("linux"):
        return
    _runtime = _loaded()
    if _runtime is not None:
        return
    for candidate in (torch_copy(), SONAME):
        if candidate is not None:
            try:
                _runtime = ctypes.CDLL(candidate)
                return
            except OSError:
                pass
    raise ImportError(_NOT_FOUND)
