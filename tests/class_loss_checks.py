"""Checks shared by the tests of the losses over class indices (test_nll_loss.py,
test_multi_margin_loss.py): both NumPy calls against torch.nn.functional, float16
against torch float64, bitwise determinism across thread counts.

Tolerances: float32 / float64 as tests/conftest.py states them. float16 input is
read as it is, its losses and gradients computed in float32 and rounded once to
float16 (a mean or a scaled gradient: one more float32 rounding before that), so
against torch float64 on the same float16 values: ``rtol = atol / max|ref| = 4 *
eps16`` (eps16 = 2**-10), far below any algorithmic slip.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import fusedloss as fl
from conftest import (
    CAPABILITIES,
    REDUCTIONS,
    Reference,
    check_against_torch,
    forced_capability,
    torch_loss_and_grad,
)

F16_EPS = float(np.finfo(np.float16).eps)
DTYPES = (np.float32, np.float64, np.float16)
THREADS = (1, 2, 3, 4)


def check(
    name: str, loss: Any, grad: np.ndarray | None, x: np.ndarray, target: np.ndarray, **kwargs: Any
) -> Reference:
    """fusedloss's ``name`` result (loss, grad or None) against torch's, for input ``x``."""
    torch_fn = getattr(F, name)
    if x.dtype != np.float16:
        return check_against_torch(torch_fn, loss, grad, x, target, **kwargs)
    ref = torch_loss_and_grad(torch_fn, x, target, compute_dtype=np.float64, **kwargs)
    if kwargs.get("reduction", "mean") == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == ref.loss.shape
    else:
        assert isinstance(loss, np.generic)
    assert loss.dtype == np.float16, f"loss dtype {loss.dtype}"
    assert_half_close(loss, ref.loss, "loss")
    if grad is not None:
        assert grad.dtype == np.float16 and grad.shape == x.shape
        assert_half_close(grad, ref.grad, "grad")
    return ref


def assert_half_close(ours: Any, ref: np.ndarray, what: str) -> None:
    ours = np.asarray(ours, np.float64)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(ours[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])
    if finite.any():
        scale = float(np.max(np.abs(ref[finite])))
        np.testing.assert_allclose(
            ours[finite], ref[finite], rtol=4 * F16_EPS, atol=4 * F16_EPS * scale + 1e-30,
            err_msg=what,
        )


def run_and_check(name: str, x: np.ndarray, target: np.ndarray, **kwargs: Any) -> Reference:
    """fl.NAME (loss only) and fl.NAME_and_grad (fused) against torch; the arguments
    are left untouched and the gradient is a new array."""
    operands = (x, target, kwargs.get("weight"))
    saved = [None if a is None else a.copy() for a in operands]
    loss_only = getattr(fl, name)(x, target, **kwargs)
    check(name, loss_only, None, x, target, **kwargs)
    loss, grad = getattr(fl, f"{name}_and_grad")(x, target, **kwargs)
    ref = check(name, loss, grad, x, target, **kwargs)
    assert not np.shares_memory(grad, x)
    for before, after in zip(saved, operands):
        if before is not None:
            np.testing.assert_array_equal(after, before, err_msg="an argument was modified")
    return ref


def upstream(rng: np.random.Generator, loss_shape: tuple[int, ...], dtype: Any,
             reduction: str) -> np.ndarray:
    """A grad_output: loss-shaped for 'none', 0-d otherwise, in the loss's accumulation dtype."""
    shape = loss_shape if reduction == "none" else ()
    accum = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return np.asarray(rng.standard_normal(shape) * 2.0).astype(accum)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = fl.get_num_threads()
    yield
    fl.set_num_threads(before)


def bits(value: Any) -> bytes:
    a = np.asarray(value)
    return a.dtype.str.encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()


def same_bits_for_any_thread_count(call: Callable[[], tuple[Any, ...]]) -> None:
    """call() under 1-4 threads, twice each: every result bitwise equal."""
    fl.set_num_threads(1)
    reference = [bits(r) for r in call()]
    for n in THREADS:
        fl.set_num_threads(n)
        for repeat in range(2):
            for i, (a, b) in enumerate(zip(reference, [bits(r) for r in call()])):
                assert a == b, f"result {i} differs with {n} threads (repeat {repeat})"


# ------------------------------------------------------------- hypothesis problems

DRAWN = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


def draw_call_options(draw: Any) -> dict[str, Any]:
    """The options of a drawn problem every class loss has: how it is called."""
    return {
        "dtype": draw(st.sampled_from(DTYPES)),
        "weight": draw(st.sampled_from(["none", "positive", "some_zero"])),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "grad_output": draw(st.sampled_from(["default", "array", "float"])),
        "destination": draw(st.sampled_from(["new", "out", "inplace"])),
        "capability": draw(st.sampled_from(CAPABILITIES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def check_drawn(name: str, problem: dict[str, Any], rng: np.random.Generator, x: np.ndarray,
                target: np.ndarray, loss_shape: tuple[int, ...], **kwargs: Any) -> None:
    """fl.NAME_and_grad called as ``problem`` draws it (grad_output, gradient
    destination, compiled path, weights partly 0), against torch."""
    reduction = problem["reduction"]
    weight = kwargs.get("weight")
    if weight is not None and problem["weight"] == "some_zero":
        weight[::2] = 0
    kwargs["reduction"] = reduction
    if problem["grad_output"] == "array":
        kwargs["grad_output"] = upstream(rng, loss_shape, x.dtype, reduction)
    elif problem["grad_output"] == "float" and reduction != "none":
        kwargs["grad_output"] = -0.75
    source, extra = x, {}
    if problem["destination"] == "out":
        extra = {"out": np.empty_like(x)}
    elif problem["destination"] == "inplace":
        source, extra = x.copy(), {"inplace": True}
    with forced_capability(problem["capability"]):
        loss, grad = getattr(fl, f"{name}_and_grad")(source, target, **kwargs, **extra)
    check(name, loss, grad, x, target, **kwargs)
