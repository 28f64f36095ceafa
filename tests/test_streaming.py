"""Gradients written with non-temporal stores, against torch float64.

A cross-entropy or kl_div_with_logits gradient of 24 MiB or more with rows of
6 KiB or more (kStreamRowsBytes, kStreamRowMinBytes, common.h) bypasses the
caches. Rows of an odd length C start off the vector grid, so the AVX2 and
AVX-512 paths stream through shifted vectors (two results joined per aligned store,
masked stores at each row's ends). C = 50001 puts the row starts at every offset
modulo the vector width; ``out=`` one element past a 64-byte boundary shifts row 0
as well. Each case is ~26 MB of logits.

K-dim input (N, C, d1..dk): a gradient of 4 MiB or more (kStreamColumnsBytes)
whose class rows are whole 64-byte lines streams too, its column tiles shifted
onto the line grid: a first short tile of the lanes before the grid, then whole
tiles, then a short one where the row ends. ``out=`` k elements past a 64-byte
boundary sets that first tile's length (0 for k = 0); an inner size that is not
a whole number of lines does not stream (the control). The one-lane scalar
baseline, whose tiles are shorter than a line, never streams columns.
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


COLUMN_SHAPES = {np.float32: (4, 21, 128, 128), np.float64: (2, 21, 128, 128)}  # 5.5 MB each
COLUMN_OPTIONS = {
    "plain": {},
    "weight-ignore": {"weight": True, "ignore_index": 3},
    "smoothing": {"label_smoothing": 0.2},
    "probabilities": {"probabilities": True},
    "none-grad-output": {"reduction": "none"},
    "inplace": {"inplace": True},
}


@pytest.mark.parametrize("option", list(COLUMN_OPTIONS))
@pytest.mark.parametrize("past", [0, 1, 5, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_column_gradient_matches_torch(dtype: Any, past: int, option: str,
                                                capability: str) -> None:
    opts = dict(COLUMN_OPTIONS[option])
    rng = np.random.default_rng(13 + past)
    shape = COLUMN_SHAPES[dtype]
    n, c = shape[0], shape[1]
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    kwargs: dict[str, Any] = {}
    if opts.pop("probabilities", False):
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, c, (n, *shape[2:]))
        t[:, :, ::7] = opts.get("ignore_index", 0)
    if opts.pop("weight", False):
        kwargs["weight"] = rng.random(c).astype(dtype) + 0.5
    if "ignore_index" in opts:
        kwargs["ignore_index"] = opts.pop("ignore_index")
    kwargs.update({k: v for k, v in opts.items() if k != "inplace"})
    if kwargs.get("reduction") == "none":
        kwargs["grad_output"] = rng.standard_normal((n, *shape[2:])).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(x.size * itemsize + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + past * itemsize
    buf = raw[start:start + x.size * itemsize].view(dtype).reshape(shape)
    if opts.get("inplace"):
        buf[...] = x
        loss, grad = fl.cross_entropy_and_grad(buf, t, inplace=True, **kwargs)
    else:
        loss, grad = fl.cross_entropy_and_grad(x, t, out=buf, **kwargs)
    assert grad is buf
    check_against_torch(F.cross_entropy, loss, grad, x, t, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unstreamed_columns_match_torch(dtype: Any, capability: str) -> None:
    """Rows of 16380 elements (not whole lines): cached stores, the same tiles as ever."""
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((COLUMN_SHAPES[dtype][0], 21, 16380)) * 3).astype(dtype)
    t = rng.integers(0, 21, (x.shape[0], 16380))
    loss, grad = fl.cross_entropy_and_grad(x, t)
    check_against_torch(F.cross_entropy, loss, grad, x, t)


@pytest.mark.parametrize("option", ["smoothing", "z-loss", "probabilities", "softcap-none"])
def test_streamed_column_bits_do_not_depend_on_the_buffer(option: str, capability: str) -> None:
    """Where the gradient streams, its address sets the column tiles: every placement of
    ``out=`` (and the forward-only loss, which never streams) gives the same bits."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((8, 21, 8192)) * 3  # float64, 11 MB
    t: np.ndarray = rng.integers(0, 21, (8, 8192))
    kwargs: dict[str, Any] = {
        "smoothing": {"label_smoothing": 0.1},
        "z-loss": {"lse_square_scale": 1e-2},
        "probabilities": {},
        "softcap-none": {"softcap": 5.0, "reduction": "none"},
    }[option]
    if option == "probabilities":
        t = rng.random(x.shape)
        t /= t.sum(axis=1, keepdims=True)
    results = []
    for past in range(8):
        raw = np.empty(x.nbytes + 128, dtype=np.uint8)
        start = (-raw.ctypes.data) % 64 + past * 8
        out = raw[start:start + x.nbytes].view(np.float64).reshape(x.shape)
        results.append(fl.cross_entropy_and_grad(x, t, out=out, **kwargs))
    forward_only = fl.cross_entropy(x, t, **kwargs)
    for loss, grad in results:
        np.testing.assert_array_equal(loss, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])
    np.testing.assert_array_equal(forward_only, results[0][0])
