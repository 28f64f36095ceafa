"""fusedloss's thread count, listed and limited by threadpoolctl.

fusedloss runs its kernels on the process's one OpenMP runtime (``_openmp.py``)
with a thread count of its own (``fl.set_num_threads``), kept apart from the
runtime's: ``torch.set_num_threads()`` calls ``omp_set_num_threads()`` too, and
fusedloss must not follow it. threadpoolctl's OpenMP controller only calls
``omp_set_num_threads()``, so on its own it would neither see nor limit
fusedloss's threads. This controller does: ``threadpool_info()`` lists an entry
with ``user_api="openmp"``, ``internal_api="fusedloss"``, and
``threadpool_limits(n)`` (or ``user_api="openmp"``) sets fusedloss's count to n
and restores it on exit, beside the runtime's own entry.

threadpoolctl finds it among the loaded libraries: the compiled module exports
``fusedloss_get_num_threads`` / ``fusedloss_set_num_threads``
(csrc/fusedloss/threads_c_api.cpp). It is registered when threadpoolctl is
imported, before or after fusedloss, without fusedloss importing threadpoolctl
itself (that would add ~15 ms to every ``import fusedloss``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

_MODULE = "threadpoolctl"


def _register(threadpoolctl: ModuleType) -> None:
    base = getattr(threadpoolctl, "LibController", None)
    register = getattr(threadpoolctl, "register", None)
    if base is None or register is None:  # threadpoolctl < 3.5: no third-party controllers
        return

    class FusedlossController(base):  # type: ignore[misc, valid-type]
        user_api = "openmp"
        internal_api = "fusedloss"
        filename_prefixes = ("_core",)
        check_symbols = ("fusedloss_get_num_threads", "fusedloss_set_num_threads")

        def get_num_threads(self) -> int:
            return int(self.dynlib.fusedloss_get_num_threads())

        def set_num_threads(self, num_threads: int) -> None:
            self.dynlib.fusedloss_set_num_threads(int(num_threads))

        def get_version(self) -> str:
            from . import __version__

            return __version__

    register(FusedlossController)


class _RegisteringLoader:
    """threadpoolctl's own loader, then the registration. (Plain classes: the
    importlib.abc bases would add milliseconds to every import of fusedloss.)"""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, ... for tools
        return getattr(self._loader, name)


class _OnImport:
    """Finds threadpoolctl once, as the other finders would, and wraps its loader."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def register_on_import() -> None:
    """Register with threadpoolctl now if it is imported, else when it is."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        _register(module)
    elif not any(isinstance(finder, _OnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OnImport())
