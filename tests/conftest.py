"""Shared fixtures and reference helpers for the NumPy-level API tests.

The reference is always torch (``torch.nn.functional``) run in float64 (complex128
for complex input) on the very values we hand to fusedloss, never fusedloss itself.

Tolerances (applied by :func:`assert_matches`):

* float64 / complex128: ``rtol=1e-10`` and ``atol=1e-12 * max|ref|``. Both torch and
  fusedloss do the same O(C) float64 work per row, so they agree to a few 1e-16
  relative; 1e-10 leaves room for different summation orders over 10^5 terms but
  still catches any algorithmic mistake (a wrong denominator, a missed smoothing
  term) by many orders of magnitude. The atol is scaled by the array's magnitude
  so that near-zero entries produced by cancellation (``p_target - 1``) do not
  need a relative match they cannot have (for cross-entropy, with the magnitude
  taken as below).
* float32 / complex64: "no less accurate than torch's float32". With ``ref`` the
  float64 torch result on the same float32-valued inputs, we require
  ``max|ours - ref| <= max(2 * max|torch_f32 - ref|, 4 * eps32 * max|ref|)``.
  The factor 2 allows a different (but equally good) exp/log or summation order;
  the floor of 4 float32 ULP of the array's magnitude covers cases where torch
  happens to be exact (tiny inputs), where the factor-2 bound would demand bit-exactness.
* Cross-entropy, both precisions: "magnitude" is at least that of the reference at
  all-zero logits. The result is computed from probabilities and log-sum-exp terms of
  order 1 (times weights, grad_output, 1/denominator); a much smaller result (a
  confident row: loss = log(1 + 1e-9), gradient p_target - 1) comes from cancellation,
  in torch as in any implementation, with an absolute error of a few ULP of that
  order-1 scale, not of the tiny result.
* BCE-with-logits' gradient, likewise: w (L sigmoid(x) - p t) g / n is a difference of
  two terms, each as large as the gradient at target 0 or 1; where they nearly cancel,
  torch's float32 is no better than a few ULP of them either, so "magnitude" is at least
  that of the reference at those targets (one element where torch happens to round
  well must not set the bound).

NaN and +-inf must appear at exactly the positions (and with the sign) torch gives.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusedloss as fl
from fusedloss import _core
from fusedloss._losses import ELEMENTWISE_LOSSES, ElementwiseLoss

CAPABILITIES: list[str] = list(_core.supported_capabilities())
REDUCTIONS = ("none", "mean", "sum")
REAL_DTYPES = (np.float32, np.float64)
COMPLEX_DTYPES = (np.complex64, np.complex128)
# (loss, input dtype) for the elementwise losses (fusedloss/_losses.py): every one in
# the real dtypes, the complex ones too where the loss takes them (L1).
ELEMENTWISE_CASES: list[tuple[ElementwiseLoss, Any]] = [
    (loss, d) for loss in ELEMENTWISE_LOSSES
    for d in REAL_DTYPES + (COMPLEX_DTYPES if loss.complex_input else ())
]
ELEMENTWISE_IDS = [f"{loss.name}-{np.dtype(d).name}" for loss, d in ELEMENTWISE_CASES]

F32_EPS = float(np.finfo(np.float32).eps)
F64_RTOL = 1e-10
F64_ATOL_SCALE = 1e-12
F32_TORCH_FACTOR = 2.0
F32_ULP_FLOOR = 4.0

_WIDE = {
    np.dtype(np.float32): np.float64,
    np.dtype(np.float64): np.float64,
    np.dtype(np.complex64): np.complex128,
    np.dtype(np.complex128): np.complex128,
}
_TORCH_DTYPE = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.complex64): torch.complex64,
    np.dtype(np.complex128): torch.complex128,
}


@contextlib.contextmanager
def forced_capability(name: str) -> Iterator[str]:
    """Run the kernels compiled for ``name``; restore the previous choice afterwards."""
    previous = fl.cpu_capability()
    _core.set_capability(name)
    try:
        yield name
    finally:
        _core.set_capability(previous)


@pytest.fixture(autouse=True)
def fusedloss_kernel_at_every_size(monkeypatch: pytest.MonkeyPatch) -> int:
    """fusedloss.torch hands small cross-entropy problems to torch's own kernel
    (``flt.TORCH_KERNEL_BELOW``); the tests use small shapes to check fusedloss's
    kernel through the torch layer, so they turn that off. Gives the shipped value:
    tests/test_torch.py checks the hand-off itself."""
    import fusedloss.torch as flt

    shipped = flt.TORCH_KERNEL_BELOW
    monkeypatch.setattr(flt, "TORCH_KERNEL_BELOW", 0)
    return shipped


@pytest.fixture(params=CAPABILITIES)
def capability(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every compiled path this machine can run, forced one at a time."""
    with forced_capability(request.param) as name:
        yield name


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test id: each test replays on its own, in any order."""
    # hash() is salted per process; crc32 is not.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def real_dtype(dtype: Any) -> np.dtype:
    """The dtype of the loss for input of ``dtype`` (the real part type for complex)."""
    return np.empty(0, dtype).real.dtype


def is_low_precision(dtype: Any) -> bool:
    return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.complex64))


# --------------------------------------------------------------------------- inputs


def cross_entropy_inputs(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    probs: bool = False,
    weight: bool = False,
    ignore_index: int = -100,
    ignore_frac: float = 0.0,
    target_dtype: Any = np.int64,
    scale: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, target (indices or probabilities) and optional class weights.

    ``shape`` is the input shape: (C,), (N, C) or (N, C, d1, ..., dk). A fraction
    ``ignore_frac`` of index targets is set to ``ignore_index``.
    """
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    classes = shape[0] if len(shape) == 1 else shape[1]
    if probs:
        class_axis = 0 if len(shape) == 1 else 1
        p = rng.random(shape) + 1e-3
        target = (p / p.sum(axis=class_axis, keepdims=True)).astype(dtype)
    else:
        target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
        t = rng.integers(0, classes, size=target_shape)
        if ignore_frac:
            t = np.where(rng.random(target_shape) < ignore_frac, ignore_index, t)
        target = np.asarray(t).astype(target_dtype)
    w = (rng.random(classes) + 0.1).astype(dtype) if weight else None
    return x, target, w


def regression_inputs(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, scale: float = 1.0
) -> np.ndarray:
    """Normal values of ``shape`` (complex: normal real and imaginary parts)."""
    values = rng.standard_normal(shape) * scale
    if np.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.standard_normal(shape) * scale
    return np.asarray(values).astype(dtype)


def elementwise_values(
    kind: str, rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, scale: float = 2.0
) -> np.ndarray:
    """Values an elementwise loss takes for ``kind`` (``_losses.ElementwiseLoss.input_kind`` /
    ``target_kind``): real ones normal times ``scale``; probabilities include the edges 0,
    1 and 0.5, where the logs clamp and ``xlogy(0, 0) = 0``."""
    if kind == "real":
        a = rng.standard_normal(shape) * scale
    elif kind == "probability":
        a = rng.uniform(0, 1, shape)
        if a.size > 2:
            a.reshape(-1)[:3] = [0.0, 1.0, 0.5]
    elif kind == "binary":
        a = rng.integers(0, 2, shape).astype(np.float64)
    elif kind == "log_probability":
        a = np.log(rng.uniform(1e-3, 1, shape))
    else:
        raise ValueError(f"unknown value kind {kind!r}")
    return np.asarray(a, dtype=dtype)


def option_sets(loss: Any) -> list[dict[str, Any]]:
    """An elementwise loss's option sets: torch's defaults, then each sample value
    of each option (``_losses.ElementwiseLoss.options``) on its own."""
    sets: list[dict[str, Any]] = [{}]
    for key, values in loss.options.items():
        sets += [{key: value} for value in values[1:]]
    return sets


def elementwise_inputs(
    loss: ElementwiseLoss, rng: np.random.Generator, shape: tuple[int, ...], dtype: Any,
    scale: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) for ``loss``: values of its kinds, or normal real and imaginary
    parts times ``scale`` for complex dtypes."""
    if np.issubdtype(dtype, np.complexfloating):
        return regression_inputs(rng, shape, dtype, scale), regression_inputs(rng, shape, dtype,
                                                                              scale)
    return (elementwise_values(loss.input_kind, rng, shape, dtype, scale),
            elementwise_values(loss.target_kind, rng, shape, dtype, scale))


def upstream_gradient(
    rng: np.random.Generator, loss_shape: tuple[int, ...], dtype: Any, reduction: str
) -> np.ndarray:
    """A non-trivial grad_output: loss-shaped for 'none', a 0-d array otherwise."""
    shape = loss_shape if reduction == "none" else ()
    return np.asarray(rng.standard_normal(shape) * 2.0).astype(real_dtype(dtype))


# ------------------------------------------------------------------------ reference


class Reference(NamedTuple):
    loss: np.ndarray
    grad: np.ndarray


def _to_torch(a: Any, np_dtype: Any) -> Any:
    if a is None or isinstance(a, (int, float)):
        return a
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer):
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(np.array(a, dtype=np_dtype))


def torch_loss_and_grad(
    loss_fn: Callable[..., torch.Tensor],
    x: np.ndarray,
    target: np.ndarray,
    *,
    compute_dtype: Any,
    grad_output: Any = None,
    weight: np.ndarray | None = None,
    **kwargs: Any,
) -> Reference:
    """torch's loss and d(sum(grad_output * loss))/d(input), computed at ``compute_dtype``
    (e.g. float64, or float32 to measure torch's own float32 error) and returned widened.
    Array options (``weight``, ``pos_weight``) become tensors of the loss's dtype."""
    compute_dtype = np.dtype(compute_dtype)
    loss_real = real_dtype(compute_dtype)
    xt = _to_torch(x, compute_dtype).requires_grad_(True)
    tt = _to_torch(target, compute_dtype)
    extra = {k: _to_torch(v, loss_real) if isinstance(v, np.ndarray) else v
             for k, v in kwargs.items()}
    if weight is not None:
        extra["weight"] = _to_torch(weight, loss_real)
    loss = loss_fn(xt, tt, **extra)
    if grad_output is None:
        gout = torch.ones_like(loss)
    else:
        gout = torch.as_tensor(np.asarray(grad_output, dtype=loss_real)).reshape(loss.shape)
    loss.backward(gradient=gout)
    assert xt.grad is not None
    wide = _WIDE[compute_dtype]
    return Reference(
        loss.detach().numpy().astype(real_dtype(wide)), xt.grad.numpy().astype(wide)
    )


def references(
    loss_fn: Callable[..., torch.Tensor], x: np.ndarray, target: np.ndarray, **kwargs: Any
) -> tuple[Reference, Reference | None]:
    """(float64 reference, torch at the input's own precision or None for float64 input)."""
    wide = torch_loss_and_grad(loss_fn, x, target, compute_dtype=_WIDE[x.dtype], **kwargs)
    low = None
    if is_low_precision(x.dtype):
        low = torch_loss_and_grad(loss_fn, x, target, compute_dtype=x.dtype, **kwargs)
    return wide, low


# ------------------------------------------------------------------------ assertions


def assert_matches(
    ours: Any,
    ref: np.ndarray,
    torch_low: np.ndarray | None,
    dtype: Any,
    what: str,
    min_scale: float = 0.0,
) -> None:
    """Compare ``ours`` with the float64 ``ref`` under the tolerances in the module doc;
    ``min_scale`` is the magnitude the float32 ULP floor uses when ``ref`` is smaller."""
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != torch {ref.shape}"
    wide = ours.astype(_WIDE[np.dtype(ours.dtype)] if ours.dtype in _WIDE else np.float64)
    np.testing.assert_array_equal(
        np.isnan(wide), np.isnan(ref), err_msg=f"{what}: NaN positions differ from torch"
    )
    inf = np.isinf(ref)
    np.testing.assert_array_equal(
        np.isinf(wide), inf, err_msg=f"{what}: inf positions differ from torch"
    )
    np.testing.assert_array_equal(wide[inf], ref[inf], err_msg=f"{what}: inf signs differ")
    finite = np.isfinite(ref)
    if not finite.any():
        return
    mine, theirs = wide[finite], ref[finite]
    scale = float(np.max(np.abs(theirs)))
    scale = max(scale, min_scale)
    if not is_low_precision(dtype):
        np.testing.assert_allclose(
            mine, theirs, rtol=F64_RTOL, atol=F64_ATOL_SCALE * scale + 1e-300, err_msg=what
        )
        return
    assert torch_low is not None
    err = float(np.max(np.abs(mine - theirs)))
    torch_err = float(np.max(np.abs(np.asarray(torch_low)[finite] - theirs)))
    bound = max(
        F32_TORCH_FACTOR * torch_err,
        F32_ULP_FLOOR * F32_EPS * scale,
        float(np.finfo(np.float32).tiny),
    )
    assert err <= bound, (
        f"{what}: max|ours - f64 ref| = {err:.3e} > bound {bound:.3e} "
        f"(torch float32 error {torch_err:.3e}, magnitude {scale:.3e})"
    )


def assert_loss_type(loss: Any, x_dtype: Any, reduction: str, shape: tuple[int, ...]) -> None:
    """mean/sum give a NumPy scalar of the input's (real) dtype; none a loss-shaped array."""
    expected = real_dtype(x_dtype)
    if reduction == "none":
        assert isinstance(loss, np.ndarray), f"reduction none returned {type(loss)}"
        assert loss.shape == shape
    else:
        assert isinstance(loss, np.generic), f"reduction {reduction} returned {type(loss)}"
    assert loss.dtype == expected, f"loss dtype {loss.dtype}, expected {expected}"


def check_against_torch(
    loss_fn: Callable[..., torch.Tensor],
    loss: Any,
    grad: np.ndarray | None,
    x: np.ndarray,
    target: np.ndarray,
    **kwargs: Any,
) -> Reference:
    """Assert fusedloss's (loss, grad) for input ``x`` equal torch's; returns the reference.

    ``kwargs`` are the loss options plus ``grad_output``, passed to torch unchanged.
    """
    wide, low = references(loss_fn, x, target, **kwargs)
    loss_scale = grad_scale = 0.0
    if loss_fn is F.cross_entropy:
        loss_scale, grad_scale = cross_entropy_scales(x, target, **kwargs)
    elif getattr(loss_fn, "__name__", None) == "binary_cross_entropy_with_logits":
        grad_scale = max(_scales(loss_fn, x, np.full_like(target, t), **kwargs)[1]
                         for t in (0.0, 1.0))
    reduction = kwargs.get("reduction", "mean")
    assert_loss_type(loss, x.dtype, reduction, wide.loss.shape)
    assert_matches(
        loss, wide.loss, None if low is None else low.loss, x.dtype, "loss", loss_scale
    )
    if grad is not None:
        assert isinstance(grad, np.ndarray)
        assert grad.dtype == x.dtype, f"grad dtype {grad.dtype} != input dtype {x.dtype}"
        assert grad.shape == x.shape
        assert_matches(
            grad, wide.grad, None if low is None else low.grad, x.dtype, "grad", grad_scale
        )
    return wide


def cross_entropy_scales(x: np.ndarray, target: np.ndarray, **kwargs: Any) -> tuple[float, float]:
    """Magnitudes of the float64 loss and gradient at all-zero logits (see module doc)."""
    return _scales(F.cross_entropy, np.zeros(x.shape), target, **kwargs)


def _scales(loss_fn: Callable[..., torch.Tensor], x: np.ndarray, target: np.ndarray,
            **kwargs: Any) -> tuple[float, float]:
    """Magnitudes of the float64 reference's loss and gradient."""
    at = torch_loss_and_grad(loss_fn, x, target, compute_dtype=_WIDE[x.dtype], **kwargs)
    return tuple(  # type: ignore[return-value]
        float(np.max(np.abs(a), initial=0.0, where=np.isfinite(a))) for a in at
    )


def _without_warnings(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """torch's function, its warnings silenced: a reference says nothing (kl_div's note on
    reduction="mean" is tested in test_torch_elementwise.py)."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    return call


# The reference function for each loss's name.
TORCH_FN: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    **{loss.name: _without_warnings(getattr(F, loss.name)) for loss in ELEMENTWISE_LOSSES},
}
