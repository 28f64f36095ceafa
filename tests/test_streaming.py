"""Gradients written with non-temporal stores, against torch float64.

A cross-entropy or kl_div_with_logits gradient of 24 MiB or more with rows of
6 KiB or more (kStreamRowsBytes, kStreamRowMinBytes, common.h) bypasses the
caches. Rows of an odd length C start off the vector grid, so the AVX2 and
AVX-512 paths stream through shifted vectors (two results joined per aligned store,
masked stores at each row's ends). C = 50001 puts the row starts at every offset
modulo the vector width; ``out=`` one element past a 64-byte boundary shifts row 0
as well. Each case is ~26 MB of logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch.nn.functional as F

import fusedloss as fl

from conftest import check_against_torch

C = 50001
ROWS = {np.float32: 128, np.float64: 64}  # 25.6 MB of logits each (>= 24 MiB)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_gradient_matches_torch(dtype: Any, smoothing: float, capability: str) -> None:
    rng = np.random.default_rng(11)
    n = ROWS[dtype]
    x = (rng.standard_normal((n, C)) * 2).astype(dtype)
    t = rng.integers(0, C, n)
    t[::5] = C - 1  # targets in the last partial vector of a row
    t[1::5] = 0
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * C * itemsize + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + itemsize  # one element past a 64-byte boundary
    out = raw[start:start + n * C * itemsize].view(dtype).reshape(n, C)
    loss, grad = fl.cross_entropy_and_grad(x, t, label_smoothing=smoothing, out=out)
    assert grad is out
    check_against_torch(F.cross_entropy, loss, grad, x, t, label_smoothing=smoothing)


# kl_div_with_logits keeps a row's exps in scratch up to 32768 float32 classes (the
# pipelined rows read them back) and recomputes them past that: one C of each kind,
# both odd, 24 MiB or more of gradient.
@pytest.mark.parametrize("classes", [20001, 50001])
def test_streamed_kl_div_with_logits_gradient_matches_torch(classes: int, capability: str) -> None:
    from test_kl_div_with_logits import check

    rng = np.random.default_rng(12)
    n = -(-(24 << 20) // (classes * 4))
    x = (rng.standard_normal((n, classes)) * 3).astype(np.float32)
    t = (rng.standard_normal((n, classes)) * 3).astype(np.float32)
    raw = np.empty(n * classes * 4 + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + 4  # one element past a 64-byte boundary
    out = raw[start:start + n * classes * 4].view(np.float32).reshape(n, classes)
    loss, grad = fl.kl_div_with_logits_and_grad(x, t, 2.0, out=out)
    assert grad is out
    check(x, t, loss, grad, temperature=2.0)
