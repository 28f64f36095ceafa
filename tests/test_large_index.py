"""64-bit indexing: arrays of more than 2**31 elements give the right loss and gradient.

The inputs are chosen so that the exact answer is known in closed form, and the
gradient is checked element by element (in chunks, to keep memory flat) with the
entries around flat index 2**31 and at both ends named explicitly: an int32 offset
anywhere in the kernels shows up as a wrong or missing value there, or a crash.

These tests need ~9 GB each and run one after the other (arrays are freed between
them). They are marked slow but run in CI; they skip only on a machine with less
than 16 GB of MemAvailable.
"""

from __future__ import annotations

import gc
import math
from typing import Iterator

import numpy as np
import pytest

import fusedloss as fl

NEEDED_GB = 16
TWO31 = 2**31
CHUNK = 2**26


def _mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _mem_available_gb() < NEEDED_GB,
        reason=f"needs {NEEDED_GB} GB MemAvailable (/proc/meminfo), "
        f"this machine has {_mem_available_gb():.1f} GB",
    ),
]


@pytest.fixture(autouse=True)
def free_memory() -> Iterator[None]:
    gc.collect()
    yield
    gc.collect()


def _check_flat(flat: np.ndarray, expected_default: float, special: dict[int, float],
                rtol: float) -> None:
    """Every element equals expected_default except those in ``special`` (flat index -> value)."""
    for idx, value in special.items():
        got = float(flat[idx])
        assert math.isclose(got, value, rel_tol=rtol, abs_tol=0.0), (
            f"flat index {idx} (2**31 {idx - TWO31:+d}): got {got!r}, expected {value!r}"
        )
    lo_default = expected_default * (1 - rtol) if expected_default >= 0 else expected_default * (
        1 + rtol)
    hi_default = expected_default * (1 + rtol) if expected_default >= 0 else expected_default * (
        1 - rtol)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        bad = np.flatnonzero((chunk < lo_default) | (chunk > hi_default))[: len(special) + 100]
        bad = [start + int(i) for i in bad if start + int(i) not in special]
        assert not bad, (
            f"{len(bad)} unexpected values from flat index {bad[0]} "
            f"(2**31 {bad[0] - TWO31:+d}): {float(flat[bad[0]])!r} != {expected_default!r}"
        )


def test_cross_entropy_more_than_2_31_elements_inplace() -> None:
    """2 x (2**30 + 3) float32 logits (8.6 GB), gradient written in place.

    Row 0 is all zeros with target 0: loss log(C), softmax 1/C.
    Row 1 is all zeros except logit ``a`` at column j (flat index 2**31 + 2), target j:
    S = C - 1 + e^a, loss log(S) - a, softmax 1/S and e^a/S at j.
    With reduction mean the gradient is (softmax - onehot) / 2.
    """
    classes = 2**30 + 3
    a = 5.0
    j = 2**30 - 1
    flat_j = classes + j
    assert flat_j == TWO31 + 2
    x = np.zeros((2, classes), np.float32)
    x[1, j] = a
    target = np.array([0, j], np.int64)
    s = classes - 1 + math.exp(a)
    loss0, loss1 = math.log(classes), math.log(s) - a

    per_row = fl.cross_entropy(x, target, reduction="none")
    assert per_row.dtype == np.float32 and per_row.shape == (2,)
    assert math.isclose(float(per_row[0]), loss0, rel_tol=2e-6), per_row
    assert math.isclose(float(per_row[1]), loss1, rel_tol=2e-6), per_row

    loss, grad = fl.cross_entropy_and_grad(x, target, inplace=True)
    assert grad is x
    assert math.isclose(float(loss), (loss0 + loss1) / 2, rel_tol=2e-6), loss

    flat = x.reshape(-1)
    del x, grad
    row0, row1 = 0.5 / classes, 0.5 / s
    special = {
        0: (1 / classes - 1) / 2,
        flat_j: (math.exp(a) / s - 1) / 2,
    }
    # Explicit probes at both ends, the row boundary and around 2**31 (checked by value).
    probes = [1, 2, classes - 2, classes - 1, classes, classes + 1, TWO31 - 2, TWO31 - 1, TWO31,
              TWO31 + 1, TWO31 + 3, flat.size - 2, flat.size - 1]
    for p in probes:
        expected = row0 if p < classes else row1
        got = float(flat[p])
        assert math.isclose(got, expected, rel_tol=1e-4), (p, got, expected)
    # Row 0 then row 1, every element.
    _check_flat(flat[:classes], row0, {0: special[0]}, rtol=1e-4)
    _check_flat(flat[classes:], row1, {j: special[flat_j]}, rtol=1e-4)
    del flat


@pytest.mark.parametrize("name", ["mse", "l1"])
def test_regression_more_than_2_31_elements(name: str) -> None:
    """2**31 + 8 float16 elements (2 x 4.3 GB): input all ones but a few known values.

    With grad_output = n and reduction mean, MSE's gradient is 2 (x - t) and L1's
    sign(x - t), independent of n, so float16 holds them exactly.
    """
    n = TWO31 + 8
    x = np.ones(n, np.float16)
    t = np.zeros(n, np.float16)
    x_special = {0: 2.0, TWO31 - 1: -1.0, TWO31: 3.0, n - 1: 0.5}
    t_special = {TWO31 + 1: -2.0, n - 2: 1.0}
    for i, value in x_special.items():
        x[i] = value
    for i, value in t_special.items():
        t[i] = value
    diffs = {i: float(x[i]) - float(t[i]) for i in {*x_special, *t_special}}
    k = len(diffs)
    if name == "mse":
        total = (n - k) * 1.0 + sum(d * d for d in diffs.values())
        grad_of = {i: 2 * d for i, d in diffs.items()}
        default = 2.0
    else:
        total = (n - k) * 1.0 + sum(abs(d) for d in diffs.values())
        grad_of = {i: float(np.sign(d)) for i, d in diffs.items()}
        default = 1.0
    loss_fn = getattr(fl, f"{name}_loss")
    grad_fn = getattr(fl, f"{name}_loss_and_grad")

    mean = loss_fn(x, t)
    assert mean.dtype == np.float16
    assert math.isclose(float(mean), total / n, rel_tol=1e-3), (mean, total / n)

    loss, grad = grad_fn(x, t, grad_output=float(n), inplace=True)
    assert grad is x
    assert math.isclose(float(loss), total / n, rel_tol=1e-3), (loss, total / n)
    del grad
    probes = [1, 2, TWO31 - 3, TWO31 - 2, TWO31 + 2, TWO31 + 3, n - 3]
    for p in probes:
        assert float(x[p]) == default, (p, float(x[p]))
    _check_flat(x, default, grad_of, rtol=0.0)
    del x, t


def test_bce_with_logits_broadcast_weights_more_than_2_31_elements() -> None:
    """2**31 + 8 float16 logits as (2**29 + 2, 4) (2 x 4.3 GB) with a (4,) weight and
    pos_weight, broadcast along the rows without a copy (each read at flat index i by
    i modulo its period): a 32-bit index there reads the wrong factor past 2**31.

    Logits 0, targets 0 but at a few flat indices around 2**31 (target 1). With
    sigmoid(0) = 1/2 and softplus(0) = log 2, element i in column c has loss
    w_c (1 + (p_c - 1) t_i) log 2 and, for grad_output n with reduction mean, the
    gradient w_c ((p_c t_i + 1 - t_i) / 2 - p_c t_i): w_c / 2 or -w_c p_c / 2, exact
    in float16.
    """
    n = TWO31 + 8
    cols = 4
    w = np.array([1.0, 2.0, 0.5, 4.0], np.float16)
    p = np.array([1.0, 3.0, 1.0, 0.5], np.float16)
    x = np.zeros((n // cols, cols), np.float16)
    t = np.zeros((n // cols, cols), np.float16)
    positives = [0, TWO31 - 1, TWO31, TWO31 + 1, TWO31 + 6, n - 1]
    t.reshape(-1)[positives] = 1.0
    wf, pf = w.astype(np.float64), p.astype(np.float64)
    total = math.log(2) * (float(wf.sum()) * (n // cols)
                           + sum(wf[i % cols] * (pf[i % cols] - 1) for i in positives))
    kw = {"weight": w, "pos_weight": p}

    mean = fl.binary_cross_entropy_with_logits(x, t, **kw)
    assert mean.dtype == np.float16
    assert math.isclose(float(mean), total / n, rel_tol=1e-3), (mean, total / n)

    loss, grad = fl.binary_cross_entropy_with_logits_and_grad(x, t, grad_output=float(n),
                                                              inplace=True, **kw)
    assert grad is x
    assert math.isclose(float(loss), total / n, rel_tol=1e-3), (loss, total / n)
    del grad, t
    for c in range(cols):
        special = {i // cols: -0.5 * float(wf[c] * pf[c]) for i in positives if i % cols == c}
        _check_flat(x[:, c], 0.5 * float(wf[c]), special, rtol=0.0)
    flat = x.reshape(-1)
    for i in positives:  # by flat index too, named around 2**31
        assert float(flat[i]) == -0.5 * float(wf[i % cols] * pf[i % cols]), i
    del x, flat
