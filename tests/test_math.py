"""The kernels' own vector exp/log/tanh (csrc/fusedloss/simd/math.h) against NumPy references,
and the float32 log1p polynomials of softplus and binary cross-entropy.

Stated bounds (math.h): exp <= 1.5 ULP, log <= 1 ULP, tanh <= 2 ULP, log1p on [0, 1] <= 2 ULP,
log1p on [-0.5, 0] <= 1.5 ULP, on every compiled path. float32 is checked against NumPy
float64 (exact enough: its own error is ~2^-29 float32 ULP) over a strided sweep of every
float32 binade in the range that matters plus every float32 in the band whose exp is denormal;
float64 against NumPy's long double (64-bit mantissa) on random arguments. ULPs are measured in
the result's dtype, with the denormal ULP (2^-149 / 2^-1074) below the normal range.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedloss import _core

EXP_ULP_BOUND = 1.5
LOG_ULP_BOUND = 1.0
TANH_ULP_BOUND = 2.0
LOG1P_ULP_BOUNDS = {"log1p_unit": 2.0, "log1p_neg_half": 1.5}
LOG1P_DOMAINS = {"log1p_unit": (0.0, 1.0), "log1p_neg_half": (-0.5, -0.0)}


def ulp_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in ULPs of ref's value in got's dtype (ref given in a wider dtype)."""
    dtype = got.dtype
    spacing = np.spacing(np.abs(ref).astype(dtype)).astype(ref.dtype)
    with np.errstate(invalid="ignore"):
        return np.abs(got.astype(ref.dtype) - ref) / spacing


def float32_sweep(low: float, high: float, stride: int) -> np.ndarray:
    """Every `stride`-th float32 bit pattern with a value in [low, high]."""
    bits = np.arange(0, 2**32, stride, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    return values[(values >= low) & (values <= high)]


def every_float32_between(low: float, high: float, stride: int = 1) -> np.ndarray:
    """Every (``stride``-th) float32 in [low, high] (low < high < 0 or 0 <= low < high)."""
    a, b = np.float32(low).view(np.uint32), np.float32(high).view(np.uint32)
    lo, hi = (a, b) if a <= b else (b, a)
    return np.arange(lo, hi + 1, stride, dtype=np.uint32).view(np.float32)


def run(op: str, values: np.ndarray) -> np.ndarray:
    return _core.elementwise_math(op, np.ascontiguousarray(values))


def test_exp_float32_accuracy(capability: str) -> None:
    # Whole finite range of exp's interesting domain, plus every float32 whose exp
    # is denormal (gradual underflow, one rounding).
    x = np.concatenate([
        float32_sweep(-110.0, 89.0, 251),
        every_float32_between(-103.9, -87.4),
    ])
    got = run("exp", x)
    ref = np.exp(x.astype(np.float64))
    with np.errstate(over="ignore"):
        finite = np.isfinite(ref.astype(np.float32))
    err = ulp_error(got[finite], ref[finite])
    assert err.max() <= EXP_ULP_BOUND, f"max {err.max():.3f} ULP at x={x[finite][err.argmax()]!r}"
    assert np.all(np.isposinf(got[~finite])), "exp must overflow to +inf exactly where float32 does"


def test_log_float32_accuracy(capability: str) -> None:
    # All binades from the smallest denormal to FLT_MAX.
    x = np.concatenate([float32_sweep(1e-45, 3.4e38, 127), every_float32_between(0.5, 2.0)[::7]])
    got = run("log", x)
    ref = np.log(x.astype(np.float64))
    err = ulp_error(got, ref)
    assert err.max() <= LOG_ULP_BOUND, f"max {err.max():.3f} ULP at x={x[err.argmax()]!r}"


@pytest.mark.parametrize("op", ["exp", "log"])
def test_float64_accuracy(capability: str, op: str) -> None:
    rng = np.random.default_rng(7)
    if op == "exp":
        x = np.concatenate([rng.uniform(-745.0, 709.7, 200_000), rng.uniform(-745.1, -708.4, 50_000)])
        ref = np.exp(x.astype(np.longdouble))
        bound = EXP_ULP_BOUND
    else:
        x = np.exp2(rng.uniform(-1074.0, 1023.9, 200_000))
        ref = np.log(x.astype(np.longdouble))
        bound = LOG_ULP_BOUND
    got = run(op, x)
    err = ulp_error(got, ref)
    assert err.max() <= bound, f"max {err.max():.3f} ULP at x={x[err.argmax()]!r}"


def test_tanh_float32_accuracy(capability: str) -> None:
    # Both formulas and the switch between them (|x| = 0.625): a strided sweep of
    # [-20, 20] (tanh is +-1 in float32 from 9.01 on), every float32 in [0.5, 0.75].
    x = np.concatenate([float32_sweep(-20.0, 20.0, 61), every_float32_between(0.5, 0.75)[::3]])
    got = run("tanh", x)
    err = ulp_error(got, np.tanh(x.astype(np.float64)))
    assert err.max() <= TANH_ULP_BOUND, f"max {err.max():.3f} ULP at x={x[err.argmax()]!r}"


def test_tanh_float64_accuracy(capability: str) -> None:
    rng = np.random.default_rng(11)
    sign = rng.choice([-1.0, 1.0], 100_000)
    x = np.concatenate([rng.uniform(-25.0, 25.0, 200_000),
                        sign * np.exp2(rng.uniform(-60.0, 1.0, 100_000))])
    got = run("tanh", x)
    err = ulp_error(got, np.tanh(x.astype(np.longdouble)))
    assert err.max() <= TANH_ULP_BOUND, f"max {err.max():.3f} ULP at x={x[err.argmax()]!r}"


@pytest.mark.parametrize("op", sorted(LOG1P_ULP_BOUNDS))
def test_log1p_polynomials_float32_accuracy(capability: str, op: str) -> None:
    # Every 61st float32 of the domain (all binades, from the denormals up), plus every
    # float32 of its outer half, where the error peaks (math_ulp.cpp checks every float).
    low, high = LOG1P_DOMAINS[op]
    end = max(low, high, key=abs)
    x = np.concatenate([every_float32_between(low, high, 61), every_float32_between(end / 2, end)])
    got = run(op, x)
    err = ulp_error(got, np.log1p(x.astype(np.float64)))
    nonzero = x != 0
    assert err[nonzero].max() <= LOG1P_ULP_BOUNDS[op], (
        f"max {err[nonzero].max():.3f} ULP at x={x[nonzero][err[nonzero].argmax()]!r}")
    np.testing.assert_array_equal(got[~nonzero], x[~nonzero])  # log1p(+-0) = +-0 exactly


@pytest.mark.parametrize("op", sorted(LOG1P_ULP_BOUNDS))
def test_log1p_polynomials_nan_and_float64(capability: str, op: str) -> None:
    assert np.isnan(run(op, np.array([np.nan], np.float32))[0])
    with pytest.raises(TypeError, match="float32 polynomial"):
        run(op, np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_special_values(capability: str, dtype: type) -> None:
    info = np.finfo(dtype)
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.max, -info.max, info.tiny,
                  -info.smallest_subnormal, 0.625, -0.625], dtype)
    got = run("tanh", x)
    expected = np.tanh(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    nonzero = expected != 0  # (tanh(-0) may give +0)
    np.testing.assert_array_equal(np.signbit(got[nonzero]), np.signbit(expected[nonzero]))
    np.testing.assert_allclose(got, expected, rtol=2 * info.eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(capability: str, dtype: type) -> None:
    info = np.finfo(dtype)
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -2000.0, 2000.0, info.max, -info.max], dtype)
    with np.errstate(over="ignore"):
        expected_exp = np.exp(x.astype(np.float64)).astype(dtype)
    np.testing.assert_array_equal(run("exp", x), expected_exp)
    y = np.array([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1.0, info.tiny / 4, info.max], dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log(y.astype(np.float64)).astype(dtype)
    got = run("log", y)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2 * info.eps)


def test_forced_capability_from_environment() -> None:
    """FUSEDLOSS_CPU_CAPABILITY picks the path at import; an unsupported name is ignored."""
    import os
    import subprocess
    import sys

    code = "import fusedloss as fl; print(fl.cpu_capability())"
    for name in _core.supported_capabilities():
        env = dict(os.environ, FUSEDLOSS_CPU_CAPABILITY=name)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == name
    env = dict(os.environ, FUSEDLOSS_CPU_CAPABILITY="no-such-isa")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == _core.supported_capabilities()[-1]
