"""Bad input: every argument of every public function is checked before a kernel runs.

Each case names the argument it gets wrong; the call must raise the exception type
DESIGN.md gives (ValueError for shapes / values, TypeError for types / dtypes,
IndexError for out-of-range targets) with a message naming that argument, and it
must leave every array it was given exactly as it was, including the input of a
failing ``inplace=True`` call. ``test_count`` prints how many bad inputs are tried.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import fusedloss as fl
from conftest import elementwise_inputs
from fusedloss._losses import ELEMENTWISE_LOSSES, ElementwiseLoss

# --------------------------------------------------------------------------- cases


@dataclass
class Bad:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[Exception] | tuple[type[Exception], ...]
    argument: str
    what: str
    id: str = field(default="")


def _rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


def _logits(shape: tuple[int, ...] = (4, 5), dtype: Any = np.float32) -> np.ndarray:
    return _rng().standard_normal(shape).astype(dtype)


def _targets(n: int = 4, classes: int = 5) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.int64)


def _operands(loss: ElementwiseLoss, shape: tuple[int, ...] = (3, 4),
              dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Valid input and target for an elementwise loss (values of its kinds)."""
    return elementwise_inputs(loss, _rng(), shape, dtype)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# Values of the wrong type/dtype for an array argument (shape (4, 5) unless noted).
def _wrong_dtype_arrays(shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "int64": np.zeros(shape, np.int64),
        "int32": np.zeros(shape, np.int32),
        "bool": np.zeros(shape, bool),
        "object": np.full(shape, 1.0, dtype=object),
        "str": np.full(shape, "1.0"),
        "bytes": np.full(shape, b"1"),
        "datetime": np.zeros(shape, "datetime64[s]"),
        "structured": np.zeros(shape, [("a", np.float32)]),
    }


def _not_arrays() -> dict[str, Any]:
    return {"list": [[0.0] * 5] * 4, "tuple": ((0.0,) * 5,) * 4, "float": 1.0, "None": None,
            "str": "abc"}


CE_FNS = {"cross_entropy": fl.cross_entropy, "cross_entropy_and_grad": fl.cross_entropy_and_grad}
# The elementwise losses (fusedloss/_losses.py): name -> (function, loss).
ELEMENTWISE_FNS = {
    name: (getattr(fl, name), loss)
    for loss in ELEMENTWISE_LOSSES
    for name in (loss.name, f"{loss.name}_and_grad")
}
GRAD_FNS = {
    "cross_entropy_and_grad": fl.cross_entropy_and_grad,
    **{name: fn for name, (fn, _) in ELEMENTWISE_FNS.items() if name.endswith("_and_grad")},
}


def _adder(cases: list[Bad], fn: Callable[..., Any], name: str) -> Callable[..., None]:
    """add(args, kwargs, error, argument, what): append one case for ``fn``."""
    def add(args: tuple[Any, ...], kwargs: dict[str, Any], error: Any, argument: str,
            what: str) -> None:
        cases.append(Bad(fn, args, kwargs, error, argument, what, f"{name}-{argument}-{what}"))
    return add


def _ce_cases() -> list[Bad]:
    cases: list[Bad] = []
    for name, fn in CE_FNS.items():
        add = _adder(cases, fn, name)

        t = _targets()
        # input
        for what, bad in _not_arrays().items():
            add((bad, t), {}, TypeError, "input", f"not-array-{what}")
        for what, bad in _wrong_dtype_arrays((4, 5)).items():
            add((bad, t), {}, TypeError, "input", f"dtype-{what}")
        add((_logits().astype(np.complex64), t), {}, TypeError, "input", "dtype-complex64")
        add((np.ones((), np.float32), np.zeros((), np.int64)), {}, ValueError, "input", "0-d")
        add((np.zeros((), np.float64), np.zeros((), np.int64)), {}, ValueError, "input",
            "0-d-float64")
        add((np.zeros((4, 0), np.float32), t), {}, ValueError, "input", "empty-class-dim")
        add((np.zeros((2, 0, 3), np.float32), np.zeros((2, 3), np.int64)), {}, ValueError,
            "input", "empty-class-dim-kdim")
        # target: type, dtype, shape
        for what, bad in _not_arrays().items():
            add((_logits(), bad), {}, TypeError, "target", f"not-array-{what}")
        for what in ("bool", "object", "str", "bytes", "datetime", "structured"):
            add((_logits(), _wrong_dtype_arrays((4,))[what]), {}, TypeError, "target",
                f"dtype-{what}")
        add((_logits(), np.zeros(4, np.complex64)), {}, TypeError, "target", "dtype-complex")
        add((_logits(), _targets(5)), {}, ValueError, "target", "shape-long")
        add((_logits(), _targets(3)), {}, ValueError, "target", "shape-short")
        add((_logits(), _targets().reshape(4, 1)), {}, ValueError, "target", "shape-2d")
        add((_logits(), np.zeros((), np.int64)), {}, ValueError, "target", "shape-0d")
        add((_logits((5,)), _targets(2)), {}, ValueError, "target", "shape-1d-input-2-targets")
        add((_logits((2, 5, 3)), np.zeros((2,), np.int64)), {}, ValueError, "target",
            "shape-kdim")
        add((_logits((2, 5, 3)), np.zeros((2, 5), np.int64)), {}, ValueError, "target",
            "shape-kdim-swapped")
        add((_logits(), np.full((4,), 0.2, np.float32)), {}, ValueError, "target",
            "probs-shape")
        add((_logits(), np.full((4, 6), 0.2, np.float32)), {}, ValueError, "target",
            "probs-shape-classes")
        # target: values out of range
        for bad_value in (5, 6, -1, -2, -99, -101, 2**31, 2**63 - 1, -(2**63)):
            tt = _targets()
            tt[2] = bad_value
            add((_logits(), tt), {}, IndexError, "target", f"value-{bad_value}")
        for tdtype in (np.int32, np.int16, np.int8):
            tt = _targets().astype(tdtype)
            tt[-1] = -1
            add((_logits(), tt), {}, IndexError, "target", f"value-neg-{np.dtype(tdtype).name}")
        tt = _targets().astype(np.uint64)
        tt[0] = np.iinfo(np.uint64).max
        add((_logits(), tt), {}, IndexError, "target", "value-uint64-max")
        tt = _targets().astype(np.uint8)
        tt[3] = 200
        add((_logits(), tt), {}, IndexError, "target", "value-uint8")
        tt = _targets()
        tt[1] = -100
        add((_logits(), tt), {"ignore_index": 3}, IndexError, "target",
            "value-default-ignore-not-ignored")
        add((_logits((5,)), np.array(5)), {}, IndexError, "target", "value-1d-input")
        kt = np.zeros((2, 3), np.int64)
        kt[1, 2] = 5
        add((_logits((2, 5, 3)), kt), {}, IndexError, "target", "value-kdim-last")
        tt = _targets()
        tt[-1] = 5
        add((_logits(), tt), {"reduction": "none"}, IndexError, "target", "value-none")
        add((_logits(), tt), {"weight": np.ones(5, np.float32), "label_smoothing": 0.3},
            IndexError, "target", "value-weight-smoothing")
        # weight
        for what, bad in _not_arrays().items():
            if what != "None":
                add((_logits(), t), {"weight": bad}, TypeError, "weight", f"not-array-{what}")
        for what in ("bool", "object", "str", "bytes", "datetime", "structured"):
            add((_logits(), t), {"weight": _wrong_dtype_arrays((5,))[what]}, TypeError, "weight",
                f"dtype-{what}")
        add((_logits(), t), {"weight": np.ones(5, np.complex64)}, TypeError, "weight",
            "dtype-complex")
        add((_logits(), t), {"weight": np.ones(4, np.float32)}, ValueError, "weight", "shape-4")
        add((_logits(), t), {"weight": np.ones(6, np.float32)}, ValueError, "weight", "shape-6")
        add((_logits(), t), {"weight": np.ones((5, 1), np.float32)}, ValueError, "weight",
            "shape-2d")
        add((_logits(), t), {"weight": np.ones((), np.float32)}, ValueError, "weight", "shape-0d")
        # ignore_index
        for what, bad in {"float": 1.5, "str": "a", "bool": True, "None": None,
                          "array": np.array([1, 2]), "float-int": 3.0}.items():
            add((_logits(), t), {"ignore_index": bad}, TypeError, "ignore_index", what)
        add((_logits(), t), {"ignore_index": 2**64}, ValueError, "ignore_index", "too-big")
        add((_logits(), t), {"ignore_index": -(2**63) - 1}, ValueError, "ignore_index",
            "too-small")
        # reduction
        for bad in ("avg", "MEAN", "", " mean", None, 1, 0, b"mean", ("mean",)):
            add((_logits(), t), {"reduction": bad}, ValueError, "reduction", repr(bad))
        # label_smoothing
        for bad in (-0.1, -1e-300, 1.0000001, 2, float("nan"), float("inf"), -float("inf"),
                    10**400):
            add((_logits(), t), {"label_smoothing": bad}, ValueError, "label_smoothing",
                repr(bad)[:12])
        # LLM options: a Python int beyond float's range; a cap whose reciprocal
        # scale overflows float32 (NaN at x = 0 otherwise)
        for option in ("logit_scale", "softcap", "lse_square_scale", "num_items_in_batch"):
            add((_logits(), t), {option: 10**400}, ValueError, option, "huge-int")
        for cap, scale in ((1e-300, 1.0), (1e-39, 1.0), (1e-10, 1e30)):
            add((_logits(), t), {"softcap": cap, "logit_scale": scale}, ValueError, "softcap",
                f"reciprocal-overflows-{cap}-{scale}")
        for what, bad in {"str": "0.1", "empty-str": "", "None": None, "bool": True,
                          "complex": 0.1j, "list": [0.1], "array-2": np.array([0.1, 0.2]),
                          "array-1": np.array([0.1])}.items():
            add((_logits(), t), {"label_smoothing": bad}, TypeError, "label_smoothing", what)
        add((_logits(), np.full((4, 5), 0.2, np.float32)), {"label_smoothing": 1.5}, ValueError,
            "label_smoothing", "probs-1.5")
    return cases


def _elementwise_cases() -> list[Bad]:
    cases: list[Bad] = []
    for name, (fn, loss) in ELEMENTWISE_FNS.items():
        add = _adder(cases, fn, name)

        def ok(shape: tuple[int, ...] = (3, 4), loss: ElementwiseLoss = loss) -> np.ndarray:
            return _operands(loss, shape)[0]

        def ok_target(shape: tuple[int, ...] = (3, 4), loss: ElementwiseLoss = loss) -> np.ndarray:
            return _operands(loss, shape)[1]

        for what, bad in _not_arrays().items():
            add((bad, ok_target()), {}, TypeError, "input", f"not-array-{what}")
            add((ok(), bad), {}, TypeError, "target", f"not-array-{what}")
        for what, bad in _wrong_dtype_arrays((3, 4)).items():
            add((bad, ok_target()), {}, TypeError, "input", f"dtype-{what}")
            if what not in ("int64", "int32"):  # integer targets are converted, as torch does
                add((ok(), bad), {}, TypeError, "target", f"dtype-{what}")
        if not loss.complex_input:
            add((ok().astype(np.complex64), ok_target().astype(np.complex64)), {},
                TypeError, "input", "dtype-complex")
        add((ok(), ok_target().astype(np.complex64)), {}, TypeError, "target",
            "complex-target-real-input")
        add((ok(), ok_target((4, 3))), {}, ValueError, "target", "shape-transposed")
        add((ok(), ok_target((4,))), {}, ValueError, "target", "shape-broadcastable")
        add((ok(), ok_target((1, 3, 4))), {}, ValueError, "target", "shape-extra-dim")
        add((ok(), np.zeros((), np.float32)), {}, ValueError, "target", "shape-0d")
        add((np.zeros((0, 4), np.float32), np.zeros((4, 0), np.float32)), {}, ValueError,
            "target", "shape-empty")
        bad_reductions: list[Any] = ["avg", "MEAN", "", None, 1, b"sum"]
        bad_reductions += [r for r in ("batchmean",) if r not in loss.reductions]
        for bad in bad_reductions:
            add((ok(), ok_target()), {"reduction": bad}, ValueError, "reduction", repr(bad))
        for key, values in loss.options.items():
            for what, (bad, error) in _bad_option_values(values, key in INFINITY_ALLOWED).items():
                add((ok(), ok_target()), {key: bad}, error, key, what)
        params = inspect.signature(fn).parameters
        for key in ("weight", "pos_weight"):
            if key not in params:
                continue
            for what, bad in {"list": [[1.0] * 4] * 3, "str": "1", "bool": np.ones((3, 4), bool),
                              "complex": np.ones((3, 4), np.complex64)}.items():
                add((ok(), ok_target()), {key: bad}, TypeError, key, what)
            for shape in ((5,), (2, 4, 4), (3, 1, 4, 1)):
                add((ok(), ok_target()), {key: np.ones(shape, np.float32)}, ValueError, key,
                    f"shape-{shape}")
    return cases


# Options torch takes at +inf (Huber's delta: 0.5 d^2 everywhere; SmoothL1's beta: 0).
INFINITY_ALLOWED = ("delta", "beta")


def _bad_option_values(values: tuple[Any, ...], inf_ok: bool = False
                       ) -> dict[str, tuple[Any, type[Exception]]]:
    """Bad values for an option whose valid sample values are ``values`` (the first is
    torch's default): the wrong type, and for a number: negative, zero (unless a sample
    value), NaN, infinite (unless ``inf_ok``) and an int beyond float's range."""
    if isinstance(values[0], bool):
        return {"int": (1, TypeError), "str": ("True", TypeError), "None": (None, TypeError)}
    bad: dict[str, tuple[Any, type[Exception]]] = {
        "str": ("1", TypeError), "None": (None, TypeError), "list": ([1.0], TypeError),
        "bool": (True, TypeError),
        "negative": (-0.5, ValueError), "nan": (float("nan"), ValueError),
        "inf": (float("inf"), ValueError), "huge-int": (10**400, ValueError),
    }
    if 0.0 not in values:
        bad["zero"] = (0.0, ValueError)
    if inf_ok:
        del bad["inf"]
    return bad


def _grad_cases() -> list[Bad]:
    """grad_output, out and inplace of every *_and_grad function."""
    cases: list[Bad] = []
    for name, fn in GRAD_FNS.items():
        add = _adder(cases, fn, name)

        ce = name.startswith("cross")

        def operands(shape: tuple[int, ...] = (4, 5), dtype: Any = np.float32) -> tuple[Any, Any]:
            if ce:
                return _logits(shape, dtype), _targets(shape[0], shape[1])
            return _operands(ELEMENTWISE_FNS[name][1], shape, dtype)

        loss_shape = (4,) if ce else (4, 5)
        # grad_output, scalar reductions
        for red in ("mean", "sum"):
            add(operands(), {"reduction": red, "grad_output": np.ones(loss_shape, np.float32)},
                ValueError, "grad_output", f"{red}-array")
            add(operands(), {"reduction": red, "grad_output": np.ones((1,), np.float32)},
                ValueError, "grad_output", f"{red}-shape-1")
            add(operands(), {"reduction": red, "grad_output": 10**400}, ValueError,
                "grad_output", f"{red}-huge-int")
            for what, bad in {"str": "1", "bool": True, "list": [1.0], "complex": 1j,
                              "array-complex": np.array(1j), "array-bool": np.array(True),
                              "array-str": np.array("1"), "array-object": np.array(1.0, object)
                              }.items():
                add(operands(), {"reduction": red, "grad_output": bad}, TypeError,
                    "grad_output", f"{red}-{what}")
        # grad_output, reduction none
        bad_shape = (3,) if ce else (4, 4)
        add(operands(), {"reduction": "none", "grad_output": np.ones(bad_shape, np.float32)},
            ValueError, "grad_output", "none-shape")
        add(operands(), {"reduction": "none", "grad_output": np.ones((), np.float32)},
            ValueError, "grad_output", "none-0d")
        add(operands(), {"reduction": "none", "grad_output": np.ones((1, *loss_shape))},
            ValueError, "grad_output", "none-extra-dim")
        for what, bad in {"float": 1.0, "list": [1.0] * loss_shape[0], "str": "1"}.items():
            add(operands(), {"reduction": "none", "grad_output": bad}, TypeError, "grad_output",
                f"none-{what}")
        for what in ("bool", "object", "str", "datetime"):
            add(operands(), {"reduction": "none",
                             "grad_output": _wrong_dtype_arrays(loss_shape)[what]},
                TypeError, "grad_output", f"none-dtype-{what}")
        add(operands(), {"reduction": "none", "grad_output": np.ones(loss_shape, np.complex64)},
            TypeError, "grad_output", "none-dtype-complex")
        # out
        add(operands(), {"out": np.empty((4, 4), np.float32)}, ValueError, "out", "shape")
        add(operands(), {"out": np.empty((20,), np.float32)}, ValueError, "out", "shape-flat")
        add(operands(), {"out": np.empty((4, 5), np.float64)}, TypeError, "out", "dtype-f64")
        add(operands(), {"out": np.empty((4, 5), np.float16)}, TypeError, "out", "dtype-f16")
        add(operands(), {"out": np.empty((4, 5), np.int32)}, TypeError, "out", "dtype-int")
        add(operands(), {"out": [[0.0] * 5] * 4}, TypeError, "out", "list")
        add(operands(), {"out": _readonly(np.empty((4, 5), np.float32))}, ValueError, "out",
            "read-only")
        # Elements sharing memory: the last write would win.
        overlapping = np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), (4, 5), (4, 4))
        add(operands(), {"out": overlapping}, ValueError, "out", "self-overlapping")
        add(operands(), {"out": np.lib.stride_tricks.as_strided(np.zeros(5, np.float32), (4, 5),
                                                                (0, 4))},
            ValueError, "out", "zero-stride")
        x, t = operands()
        add((np.lib.stride_tricks.as_strided(x, (4, 5), (0, 4)), t), {"inplace": True},
            ValueError, "input", "inplace-zero-stride")
        x, t = operands()
        add((x, t), {"out": x[::-1]}, ValueError, "out", "overlaps-input-reversed")
        if not ce:
            x, t = operands()
            add((x, t), {"out": t}, ValueError, "out", "is-target")
            # a target the kernel reads as a contiguous copy: out= must not be the original
            x, t = operands()
            wide = np.repeat(t, 2, axis=-1)[..., ::2]
            add((x, wide), {"out": wide}, ValueError, "out", "is-strided-target")
        x, t = operands()
        go = np.ones(loss_shape, np.float32)
        if not ce:
            add((x, t), {"reduction": "none", "grad_output": go, "out": go}, ValueError, "out",
                "is-grad-output")
        add(operands(), {"out": np.empty((4, 5), np.float32), "inplace": True}, ValueError, "out",
            "with-inplace")
        # inplace
        for what, bad in {"str": "yes", "int": 1, "None": None, "float": 1.0,
                          "array": np.array([True])}.items():
            add(operands(), {"inplace": bad}, TypeError, "inplace", what)
        x, t = operands()
        add((_readonly(x), t), {"inplace": True}, ValueError, "input", "inplace-read-only")
        x, t = operands()
        add((x.astype(">f4"), t), {"inplace": True}, TypeError, "input", "inplace-big-endian")
        x, t = operands()
        add((x.astype(np.int32), t), {"inplace": True}, TypeError, "input", "inplace-int")
        if ce:
            # The kernel finds the bad target: it must do so before writing anything.
            x, t = operands()
            t = t.copy()
            t[-1] = 5
            add((x, t), {"inplace": True}, IndexError, "target", "inplace-out-of-range")
            x, t = operands()
            t = t.copy()
            t[0] = -7
            add((x[:, ::-1], t), {"inplace": True}, IndexError, "target",
                "inplace-non-contiguous-out-of-range")
            add(operands(), {"inplace": True, "reduction": "none", "grad_output": go[:3]},
                ValueError, "grad_output", "inplace-shape")
            # Big enough to run in parallel: the bad target is the very last one.
            big = _logits((512, 300))
            bt = _targets(512, 300)
            bt[-1] = 300
            add((big, bt), {"inplace": True, "label_smoothing": 0.1}, IndexError, "target",
                "inplace-parallel-last")
            big = _logits((3, 7, 2000))
            bt = np.zeros((3, 2000), np.int64)
            bt[2, 1999] = -3
            add((big, bt), {"inplace": True, "reduction": "none"}, IndexError, "target",
                "inplace-kdim-last")
    return cases


def _thread_cases() -> list[Bad]:
    cases = []
    for bad, error in ((0, ValueError), (-1, ValueError), (-(2**63), ValueError),
                       (2**64, ValueError), (1.5, TypeError), (2.0, TypeError), ("2", TypeError),
                       (True, TypeError), (None, TypeError), ([2], TypeError),
                       (np.array([2]), TypeError)):
        cases.append(Bad(fl.set_num_threads, (bad,), {}, error, "n", repr(bad),
                         f"set_num_threads-n-{bad!r}"))
    # Fits int64 but not the C int the bindings take: still a clean error naming n.
    cases.append(Bad(fl.set_num_threads, (2**40,), {}, (ValueError, OverflowError), "n",
                     "2**40", "set_num_threads-n-2**40"))
    return cases


CASES: list[Bad] = _ce_cases() + _elementwise_cases() + _grad_cases() + _thread_cases()
assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


def _has_variant(c: Bad) -> bool:
    """Cases also run with strided, read-only copies of their array arguments (not those
    about out= or inplace=True, whose point is which memory they share)."""
    return (bool(c.args) and isinstance(c.args[0], np.ndarray) and c.args[0].ndim >= 2
            and "out" not in c.kwargs and c.kwargs.get("inplace") is not True)


VARIANT_CASES = [c for c in CASES if _has_variant(c)]


# ----------------------------------------------------------------------- checking


def _snapshot(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value, value.copy(), value.flags.writeable)
    return None


def _unchanged(snapshots: list[Any]) -> None:
    for snap in snapshots:
        if snap is None:
            continue
        arr, before, writeable = snap
        assert arr.flags.writeable == writeable
        if arr.dtype.kind in "OU" or arr.dtype.names:
            assert (arr == before).all(), "an argument was modified"
        else:
            assert arr.tobytes() == before.tobytes(), "an argument was modified"


def assert_rejected(case: Bad) -> None:
    values = list(case.args) + list(case.kwargs.values())
    snapshots = [_snapshot(v) for v in values]
    threads = fl.get_num_threads()
    with pytest.raises(case.error) as info:
        case.fn(*case.args, **case.kwargs)
    message = str(info.value)
    assert re.search(rf"(?<![\w]){re.escape(case.argument)}(?![\w])", message), (
        f"message does not name {case.argument!r}: {message!r}"
    )
    _unchanged(snapshots)
    assert fl.get_num_threads() == threads


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected(case: Bad) -> None:
    assert_rejected(case)


# Non-contiguous and read-only versions of the operands still fail the same way
# (validation may copy them, but must not touch the originals).
@pytest.mark.parametrize("case", VARIANT_CASES, ids=[c.id for c in VARIANT_CASES])
def test_rejected_non_contiguous_read_only(case: Bad) -> None:
    def variant(a: Any) -> Any:
        if not isinstance(a, np.ndarray) or a.ndim == 0 or a.dtype.kind in "OUS":
            return a
        wide = np.repeat(a, 2, axis=-1)[..., ::2]  # same values, strided view
        wide.flags.writeable = False
        return wide

    args = tuple(variant(a) for a in case.args)
    kwargs = {k: variant(v) for k, v in case.kwargs.items()}
    assert_rejected(Bad(case.fn, args, kwargs, case.error, case.argument, case.what, case.id))


def test_count(capsys: pytest.CaptureFixture[str]) -> None:
    non_contiguous = len(VARIANT_CASES)
    per_fn: dict[str, int] = {}
    for c in CASES:
        per_fn[c.fn.__name__] = per_fn.get(c.fn.__name__, 0) + 1
    assert set(per_fn) == {*CE_FNS, *ELEMENTWISE_FNS, "set_num_threads"}
    with capsys.disabled():
        print(f"\n[test_bad_input] {len(CASES)} bad inputs (+{non_contiguous} strided/read-only "
              f"variants) across {len(per_fn)} public functions: {per_fn}")


# ------------------------------------------------------ valid calls modify nothing


def _valid_calls() -> list[tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]]:
    rng = _rng()
    x = rng.standard_normal((6, 5, 3))
    t = rng.integers(0, 5, (6, 3))
    t[0, 0] = -100
    p = rng.random((6, 5, 3))
    w = rng.random(5) + 0.5
    go = rng.standard_normal((6, 3))
    r = rng.standard_normal((6, 5, 3))
    calls = []
    for dt in (np.float32, np.float64):
        xs = x.astype(dt)
        strided = np.repeat(xs, 2, axis=0)[::-2]  # negative strides
        for xin in (xs, strided):
            tin = t if xin is xs else np.repeat(t, 2, axis=0)[::-2]
            for red in ("none", "mean", "sum"):
                kw: dict[str, Any] = {"weight": w.astype(dt), "reduction": red,
                                      "label_smoothing": 0.2}
                calls.append(("ce", fl.cross_entropy, (xin, tin), kw))
                g = {"grad_output": go.astype(dt) if red == "none" else np.array(0.5)}
                calls.append(("ce_grad", fl.cross_entropy_and_grad, (xin, tin), {**kw, **g}))
                calls.append(("ce_probs_grad", fl.cross_entropy_and_grad,
                              (xin, p.astype(dt)), {**kw, **g}))
                calls.append(("ce_out", fl.cross_entropy_and_grad, (xin, tin),
                              {**kw, "out": np.empty(xin.shape, dt)[::-1]}))
                for name, (fn, loss) in ELEMENTWISE_FNS.items():
                    xe, te = _operands(loss, x.shape, dt)
                    if xin is not xs:
                        xe, te = (np.repeat(a, 2, axis=0)[::-2] for a in (xe, te))
                    ekw: dict[str, Any] = {"reduction": red}
                    params = inspect.signature(fn).parameters
                    if "weight" in params:
                        ekw["weight"] = (r * r + 0.5).astype(dt)
                    if "pos_weight" in params:
                        ekw["pos_weight"] = w[:3].astype(dt)
                    if name.endswith("grad"):
                        ekw["grad_output"] = r.astype(dt) if red == "none" else 2.0
                    calls.append((name, fn, (xe, te), ekw))
    c = (x + 1j * r).astype(np.complex64)
    calls.append(("l1_complex", fl.l1_loss_and_grad, (c, c[::-1]), {"reduction": "sum"}))
    return calls


def test_valid_calls_modify_nothing() -> None:
    for name, fn, args, kwargs in _valid_calls():
        values = list(args) + [v for k, v in kwargs.items() if k != "out"]
        snapshots = [_snapshot(v) for v in values]
        fn(*args, **kwargs)
        _unchanged(snapshots)
        fn(*args, **kwargs)  # and a second call gives no different picture
        _unchanged(snapshots)


@pytest.mark.parametrize("fn", list(GRAD_FNS.values()), ids=list(GRAD_FNS))
def test_inplace_returns_input(fn: Callable[..., Any]) -> None:
    """The counterpart: inplace=True does overwrite input (and nothing else)."""
    x0, target = _logits((4, 5), np.float64), _targets()
    if fn is not fl.cross_entropy_and_grad:
        loss = next(loss for f, loss in ELEMENTWISE_FNS.values() if f is fn)
        x0, target = _operands(loss, (4, 5), np.float64)
    x = x0.copy()
    t_before = target.copy()
    _, expected = fn(x.copy(), target)
    _, got = fn(x, target, inplace=True)
    assert got is x
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(target, t_before)
    # out=input (exactly the same array) is the same in-place gradient, whatever
    # the input's layout (F-order and strided: the kernel reads a copy, and the
    # gradient comes back into the input)
    for y in (x0.copy(), np.asfortranarray(x0), np.repeat(x0, 2, axis=-1)[..., ::2]):
        _, got = fn(y, target, out=y)
        assert got is y
        np.testing.assert_array_equal(y, expected)


# ------------------------------------------------------------------ out of memory

_OUT_OF_MEMORY = """
import resource, sys
import numpy as np
import fusedloss as fl
# (1, C, 2): the kernel's per-thread scratch (2 x C x one vector of positions) is
# far more than the 1.2 GB address space left; the arrays themselves fit.
C = 16_000_000
x = np.zeros((1, C, 2), np.float32)
t = np.zeros((1, 2), np.int64)
g = np.empty_like(x)
resource.setrlimit(resource.RLIMIT_AS, (1_200_000_000, 1_200_000_000))
try:
    fl.cross_entropy_and_grad(x, t, out=g)
except MemoryError as e:
    print("MemoryError:", e)
print(fl.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1])))
"""


def test_out_of_memory_raises_memory_error() -> None:
    """A scratch allocation that fails raises MemoryError (it used to write
    through a null pointer), and the process goes on working."""
    import os
    import subprocess
    import sys

    if "libasan" in os.environ.get("LD_PRELOAD", ""):  # scripts/sanitize.sh
        pytest.skip("AddressSanitizer's shadow memory does not fit an address-space limit")
    run = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "MemoryError: fusedloss: out of memory" in run.stdout, run.stdout
    assert run.stdout.strip().endswith("1.0986123"), run.stdout


def test_more_arguments_named() -> None:
    """Cases beyond the tables above: an int beyond float's range for the class and
    distillation losses' options, huber's weight checked only after its input, and
    a self-overlapping out= of the class losses and the GAN losses."""
    x, t = _logits(), _targets()
    for fn, kwargs, argument in (
        (fl.multi_margin_loss, {"margin": 10**400}, "margin"),
        (fl.kl_div_with_logits, {"temperature": 10**400}, "temperature"),
    ):
        args = (x, x.copy()) if fn is fl.kl_div_with_logits else (x, t)
        assert_rejected(Bad(fn, args, kwargs, ValueError, argument, "huge-int"))
    assert_rejected(Bad(fl.huber_loss, (1.5, np.zeros(2)), {"weight": np.ones(2)}, TypeError,
                        "input", "not-array-with-weight"))
    overlapping = np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), (4, 5), (4, 4))
    for fn, args in ((fl.nll_loss_and_grad, (x, t)), (fl.multi_margin_loss_and_grad, (x, t)),
                     (fl.kl_div_with_logits_and_grad, (x, x.copy())),
                     (fl.gan_generator_loss_and_grad, (x,))):
        assert_rejected(Bad(fn, args, {"out": overlapping}, ValueError, "out", "overlapping"))


def test_reduction_may_be_a_str_subclass() -> None:
    """As torch: any str, NumPy's np.str_ included, names a reduction."""
    x, t = _logits(), _targets()
    for fn, args in ((fl.cross_entropy, (x, t)), (fl.mse_loss, (x, x * 2))):
        assert fn(*args, reduction=np.str_("sum")) == fn(*args, reduction="sum")
