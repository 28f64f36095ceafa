"""Shortcuts for the common call give the bits of the general route.

Three shortcuts keep small calls cheap, and each must be invisible:

- ``_api._plain_cross_entropy``: the NumPy API hands the plain call (float
  (N, C) logits, int64 targets, mean/sum, no weight) to the binding's recogniser
  (``_core.cross_entropy_common``), which runs the kernel directly or returns None;
  ``_api._cross_entropy`` is the general route.
- the elementwise losses' common call (input and target of one float dtype and
  shape, mean/sum, no weight, grad_output or inplace) goes to
  ``_core.elementwise_common`` the same way; ``grad_output=1.0`` takes the general
  route with the same kernel problem, so the bits must agree;
- the kernel's plain small-row variant (index targets, no weight, smoothing or
  per-row grad_output): a weight of ones takes the general variant instead, and
  multiplying by 1 is exact, so the bits must agree.

The aliasing checks the binding now does for ``out=`` are covered here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fusedloss as fl
from conftest import elementwise_inputs
from fusedloss import _api, _core
from fusedloss._losses import ELEMENTWISE_LOSSES, ElementwiseLoss

SHAPES = [(1, 1), (3, 5), (64, 10), (17, 16), (40, 33), (5, 64), (300, 7), (2, 1000)]


def _bits(value: Any) -> bytes:
    a = np.asarray(value)
    return a.dtype.str.encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()


def _inputs(shape: tuple[int, int], dtype: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::7] = -100  # some ignored rows
    return x, t


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_plain_route_matches_general_route(shape: tuple[int, int], dtype: Any, reduction: str,
                                           capability: str) -> None:
    x, t = _inputs(shape, dtype, 1)
    assert _api._plain_cross_entropy(x, t, None, -100, reduction, 0.0, True, None, None, False)
    loss, grad = fl.cross_entropy_and_grad(x, t, reduction=reduction)
    ref_loss, ref_grad = _api._cross_entropy(x, t, None, -100, reduction, 0.0, True)
    assert _bits(loss) == _bits(ref_loss)
    assert _bits(grad) == _bits(ref_grad)
    assert _bits(fl.cross_entropy(x, t, reduction=reduction)) == _bits(ref_loss)
    out = np.full_like(x, np.nan)
    loss_out, grad_out = fl.cross_entropy_and_grad(x, t, reduction=reduction, out=out)
    assert grad_out is out
    assert _bits(loss_out) == _bits(ref_loss) and _bits(out) == _bits(ref_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_plain_kernel_matches_weighted_kernel(shape: tuple[int, int], dtype: Any, reduction: str,
                                              capability: str) -> None:
    x, t = _inputs(shape, dtype, 2)
    ones = np.ones(shape[1], dtype=dtype)
    loss, grad = fl.cross_entropy_and_grad(x, t, reduction=reduction)
    ref_loss, ref_grad = fl.cross_entropy_and_grad(x, t, weight=ones, reduction=reduction)
    assert _bits(loss) == _bits(ref_loss)
    assert _bits(grad) == _bits(ref_grad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight": None, "ignore_index": 3},
        {"label_smoothing": 0.25},
        {"reduction": "none"},
        {"grad_output": 2.0},
        {"ignore_index": np.int64(-100)},
        {"label_smoothing": np.float32(0.0)},
    ],
    ids=["ignore3", "smoothing", "none", "grad_output", "np-ignore", "np-smoothing"],
)
def test_other_calls_take_the_general_route(kwargs: dict[str, Any]) -> None:
    """Anything but the plain call gives what the general route gives."""
    x, t = _inputs((64, 10), np.float32, 3)
    full = {"weight": None, "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0,
            "grad_output": None} | kwargs
    t[t == -100] = int(full["ignore_index"])
    loss, grad = fl.cross_entropy_and_grad(x, t, **kwargs)
    ref_loss, ref_grad = _api._cross_entropy(
        x, t, full["weight"], full["ignore_index"], full["reduction"], full["label_smoothing"],
        True, full["grad_output"],
    )
    assert _bits(loss) == _bits(ref_loss)
    assert _bits(grad) == _bits(ref_grad)


def test_out_aliasing_is_rejected_by_name() -> None:
    """out= that overlaps an operand is refused before anything is written."""
    buf = np.random.default_rng(4).standard_normal((65, 10)).astype(np.float32)
    x, shifted = buf[:64], buf[1:]  # both C-contiguous, overlapping
    t = np.zeros(64, dtype=np.int64)
    before = buf.copy()
    with pytest.raises(ValueError, match="out: overlaps input"):
        fl.cross_entropy_and_grad(x, t, out=shifted)
    mse_target = buf[:64] * 1  # a copy: only out aliases
    with pytest.raises(ValueError, match="out: overlaps input"):
        fl.mse_loss_and_grad(x, mse_target, out=shifted)
    raw = np.zeros(64 * 10 * 4, dtype=np.uint8)
    x2 = np.ones((64, 10), dtype=np.float32)
    out_over_target = raw.view(np.float32).reshape(64, 10)
    t_view = raw.view(np.int64)[:64]
    with pytest.raises(ValueError, match="out: shares memory with target"):
        fl.cross_entropy_and_grad(x2, t_view, out=out_over_target)
    assert np.array_equal(buf, before)
    assert not raw.any()


def test_out_may_be_the_input_itself() -> None:
    """out=input is the in-place gradient, as inplace=True."""
    x, t = _inputs((64, 10), np.float32, 5)
    ref_loss, ref_grad = fl.cross_entropy_and_grad(x, t)
    y = x.copy()
    loss, grad = fl.cross_entropy_and_grad(y, t, out=y)
    assert grad is y
    assert _bits(loss) == _bits(ref_loss) and _bits(y) == _bits(ref_grad)


class _Subclass(np.ndarray):
    pass


def _unusual_operands() -> dict[str, tuple[Any, Any, Any]]:
    """(input, target, out) of calls the recogniser must leave to the general route."""
    x, t = _inputs((64, 10), np.float32, 6)
    out = np.zeros_like(x)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    return {
        "big-endian input": (x.astype(">f4"), t, None),
        "big-endian target": (x, t.astype(">i8"), None),
        "int32 target": (x, t.astype(np.int32), None),
        "subclass input": (x.view(_Subclass), t, None),
        "strided input": (np.repeat(x, 2, axis=1)[:, ::2], t, None),
        "float16 input": (x.astype(np.float16), t, None),
        "list target": (x, t.tolist(), None),
        "float64 out": (x, t, out.astype(np.float64)),
        "strided out": (x, t, np.zeros((64, 20), np.float32)[:, ::2]),
        "read-only out": (x, t, readonly),
        "good out": (x, t, out),
    }


@pytest.mark.parametrize("case", list(_unusual_operands()))
def test_unusual_operands_match_the_general_route(case: str) -> None:
    """Byte order, subclasses, strides, other dtypes and unusable out= buffers are the
    general route's to check and run: the same results, or its error."""
    x, t, out = _unusual_operands()[case]
    recognised = _core.cross_entropy_common(x, t, _fresh(out), "mean", -100, 0.0, True)
    assert (recognised is not None) == (case == "good out")
    try:
        expected = _api._cross_entropy(x, t, None, -100, "mean", 0.0, True, None, _fresh(out))
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error), match=str(error).split(":")[0]):
            fl.cross_entropy_and_grad(x, t, out=_fresh(out))
        return
    loss, grad = fl.cross_entropy_and_grad(x, t, out=_fresh(out))
    assert _bits(loss) == _bits(expected[0]) and _bits(grad) == _bits(expected[1])


def _fresh(out: Any) -> Any:
    """A writeable out= buffer copied (same strides), else the buffer itself."""
    if out is None or not out.flags.writeable:
        return out
    copy = np.zeros_like(out) if out.flags.c_contiguous else np.zeros(
        (out.shape[0], 2 * out.shape[1]), out.dtype)[:, ::2]
    return copy


def test_recogniser_hands_back_unusual_arguments() -> None:
    x, t = _inputs((8, 4), np.float32, 7)
    common = _core.cross_entropy_common
    assert common(x, t, None, "mean", -100, 0.0, False) is not None
    assert common(x, t, None, "none", -100, 0.0, False) is None
    assert common(x, t, None, "mean", 2**63, 0.0, False) is None  # past int64
    assert common(x, t, None, "mean", True, 0.0, False) is None  # bool, not int
    assert common(x, t, None, "mean", -100, 1.5, False) is None
    assert common(x, t, None, "mean", -100, float("nan"), False) is None
    assert common(x[:, :0], t, None, "mean", -100, 0.0, False) is None  # C == 0
    assert common(x.reshape(-1), t, None, "mean", -100, 0.0, False) is None
    assert common(x, t[:4], None, "mean", -100, 0.0, False) is None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=lambda loss: loss.name)
def test_elementwise_common_call_matches_general_route(loss: ElementwiseLoss, dtype: Any,
                                                       reduction: str, capability: str) -> None:
    fn = getattr(fl, f"{loss.name}_and_grad")
    forward = getattr(fl, loss.name)
    for shape in [(), (1,), (7,), (3, 5), (64, 33), (5000,)]:
        x, t = elementwise_inputs(loss, np.random.default_rng(3), shape, dtype)
        for options in [{}, *({key: values[-1]} for key, values in loss.options.items())]:
            ref_loss, ref_grad = fn(x, t, reduction=reduction, grad_output=1.0, **options)
            loss_value, grad = fn(x, t, reduction=reduction, **options)
            assert _bits(loss_value) == _bits(ref_loss) and _bits(grad) == _bits(ref_grad)
            assert _bits(forward(x, t, reduction=reduction, **options)) == _bits(ref_loss)
            out = np.full_like(x, np.nan)
            assert fn(x, t, reduction=reduction, out=out, **options)[1] is out
            assert _bits(out) == _bits(ref_grad)


def test_elementwise_recogniser_hands_back_other_calls() -> None:
    x = np.random.default_rng(4).random((6, 5)).astype(np.float32)
    t = x[::-1].copy()
    op = _core.ELEMENTWISE_OPS["mse"]
    common = _core.elementwise_common
    assert common(op, x, t, None, "mean", 0.0, True) is not None
    assert common(op, x, t, None, "none", 0.0, True) is None
    assert common(op, x, t, None, "batchmean", 0.0, True) is None
    assert common(op, x, t.astype(np.float64), None, "mean", 0.0, True) is None
    assert common(op, x, t[:, :4].copy(), None, "mean", 0.0, True) is None
    assert common(op, x, t.reshape(5, 6), None, "mean", 0.0, True) is None  # same size, not shape
    assert common(op, x[:, ::2], t[:, ::2], None, "mean", 0.0, True) is None  # strided
    assert common(op, x, t, x, "mean", 0.0, True) is None  # out is the input: general route
    assert common(op, x, t, t, "mean", 0.0, True) is None
    assert common(op, x, t, np.empty((6, 5), np.float64), "mean", 0.0, True) is None
    assert common(op, x, t, None, "mean", 1, True) is None  # param not a float
    assert common(op, x.astype(np.float16), t.astype(np.float16), None, "mean", 0.0, True) is None
    bce = _core.ELEMENTWISE_OPS["binary_cross_entropy"]
    assert common(bce, x, t, None, "mean", 0.0, True) is not None
    assert common(bce, x + 1, t, None, "mean", 0.0, True) is None  # outside [0, 1]: general route
    with pytest.raises(ValueError, match="op"):
        common(10**6, x, t, None, "mean", 0.0, True)
