"""TorchScript (``torch.jit.trace`` / ``torch.jit.script``) and :mod:`fusedloss.torch`.

TorchScript can neither compile fusedloss's Python layer nor record its kernels (they
run on NumPy views of the tensors: a trace would keep the loss as a constant).
``torch.compile`` and ``torch.export`` keep the fused kernels (custom ops
``fusedloss::*``); under TorchScript:

- :func:`torch_twin`, a decorator of every loss function: under ``torch.jit.trace``
  the call runs the torch function the loss is a drop-in for (same result, no fused
  kernel), so traces record ordinary aten ops; ``torch.jit.script`` of code that
  calls the loss compiles that torch function. Arguments the torch function has not
  got must be left at their defaults there (a clear error says so), except those that
  change no value (``inplace_backward``). A loss without a torch namesake passes the
  same formula in torch ops, with its own signature and defaults, or None: TorchScript
  then raises an error naming the alternatives.
- :class:`RefusesTorchScript`, a base of every loss module: ``torch.jit.script`` of
  it, or of a model holding it, raises an error naming the alternatives. (Its hook,
  ``__prepare_scriptable__``, could hand TorchScript the torch module instead, but
  TorchScript then puts that module in place of ours inside the caller's model,
  which would go on without the fused kernels after scripting.) Tracing a model that
  holds the modules works, through the functions above.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch

_INSTEAD = "use torch.compile or torch.export, which keep fusedloss's fused kernels"
_is_tracing = torch.jit.is_tracing  # torch.compile folds it to False


def _unsupported(name: str, why: str, torch_name: str | None = None) -> str:
    instead = _INSTEAD if torch_name is None else f"{_INSTEAD}, or {torch_name} in TorchScript"
    return f"fusedloss.torch.{name}: {why}; {instead}"


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (not isinstance(value, torch.Tensor) and value == default)


class RefusesTorchScript:
    """Mixin for the loss modules: ``torch.jit.script`` raises a clear error."""

    def __prepare_scriptable__(self) -> None:
        twin = next((cls for cls in type(self).__mro__
                     if cls.__module__.startswith("torch.nn.") and "forward" in vars(cls)), None)
        raise RuntimeError(_unsupported(
            type(self).__name__, "torch.jit.script cannot compile fusedloss's modules",
            None if twin is None else f"torch.nn.{twin.__name__}",
        ))


def torch_twin(
    torch_fn: Callable[..., Any] | None, *, neutral: tuple[str, ...] = ("inplace_backward",)
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``torch_fn`` stands in for the decorated loss under TorchScript."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        signature = inspect.signature(fn)
        shared = set() if torch_fn is None else set(inspect.signature(torch_fn).parameters)

        def twin_call(*args: Any, **kwargs: Any) -> Any:
            if torch_fn is None:
                raise RuntimeError(_unsupported(name, "torch.jit.trace cannot record its kernel"))
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()  # ours, which are torch's for the drop-ins
            for arg, value in bound.arguments.items():
                if arg not in shared and arg not in neutral:
                    if not _is_default(value, signature.parameters[arg].default):
                        raise RuntimeError(_unsupported(
                            name, f"torch.jit.trace records {torch_fn.__module__}."
                            f"{torch_fn.__name__}, which has no {arg}="))
            return torch_fn(**{k: v for k, v in bound.arguments.items() if k in shared})

        @functools.wraps(fn)
        def loss(*args: Any, **kwargs: Any) -> Any:
            if _is_tracing():
                return twin_call(*args, **kwargs)
            return fn(*args, **kwargs)

        if torch_fn is None:
            loss.__script_unsupported = _unsupported(  # type: ignore[attr-defined]
                name, "TorchScript cannot compile it")
        else:
            loss.__prepare_scriptable__ = lambda: torch_fn  # type: ignore[attr-defined]
        return loss

    return decorate
