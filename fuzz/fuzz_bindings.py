"""Atheris fuzz target for fusedloss: the public API and the ``_core`` bindings.

Each input is decoded (``decode``) into one call: which function, argument dtypes,
shapes, memory layouts (non-contiguous, reversed, Fortran, read-only, big-endian),
values (including NaN / inf / FLT_MAX), targets, weights and options, some of them
deliberately wrong. ``run_case`` makes the call and reports a finding by raising
``Finding``:

* any exception other than ValueError / TypeError / IndexError (a crash is one too);
* an argument modified (other than ``input`` with ``inplace=True`` and ``out``),
  including by a call that raised;
* a result that differs from a float64 NumPy reference (finite small inputs only).

Each input runs on one of the compiled paths the CPU supports (``capability_for``:
baseline, AVX2, AVX-512 in turn), through ``run_input``.
``tests/test_fuzz_regressions.py`` replays every file of ``tests/fuzz_corpus`` through
the same functions. Run with ``scripts/fuzz.sh`` (bounded time) or directly:
``python fuzz/fuzz_bindings.py -max_total_time=60 CORPUS_DIR``.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusedloss import _core
from fusedloss._losses import ELEMENTWISE_LOSSES, GAN_DISCRIMINATOR_KINDS, GAN_GENERATOR_KINDS

EXPECTED = (ValueError, TypeError, IndexError)
FLT_MAX = float(np.finfo(np.float32).max)
SPECIALS = (np.nan, np.inf, -np.inf, FLT_MAX, -FLT_MAX, 1e308, -0.0, 1e-45, 3e38, 65504.0)


class Finding(AssertionError):
    """fusedloss did something it must never do."""


class Reader:
    """Deterministic decoding of fuzz bytes; past the end every read gives 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def below(self, n: int) -> int:
        return self.byte() % n if n > 1 else 0

    def pick(self, options: Any) -> Any:
        return options[self.below(len(options))]

    def chance(self, in_256: int) -> bool:
        return self.byte() < in_256

    def value(self, special_chance: int = 12) -> float:
        """k/16 in [-8, 8) (exact in float16), sometimes a special value."""
        if self.chance(special_chance):
            return self.pick(SPECIALS)
        return (self.byte() - 128) / 16.0


@dataclass
class Case:
    layer: str  # "api" or "core"
    fn: str
    args: list[Any]
    kwargs: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, np.ndarray):
                return (f"array(shape={v.shape}, dtype={v.dtype}, strides={v.strides}, "
                        f"writeable={v.flags.writeable})")
            return repr(v)
        args = ", ".join(short(a) for a in self.args)
        kwargs = ", ".join(f"{k}={short(v)}" for k, v in self.kwargs.items())
        return f"{self.layer}.{self.fn}({args}{', ' if kwargs else ''}{kwargs})"


# ------------------------------------------------------------------------- arrays

INPUT_DTYPES = ["float32", "float64", "float32", "float64", "float16", "complex64",
                "complex128", ">f4", ">f8", "int64", "int32", "bool", "object", "<U3", "uint16"]


def layout(r: Reader, values: np.ndarray) -> np.ndarray:
    """The same values behind a layout picked by the fuzzer."""
    kind = r.below(8)
    if values.ndim == 0 or kind < 3:
        out = values.copy()
    elif kind == 3:  # reversed along axis 0 (negative stride)
        out = values[::-1].copy()[::-1]
    elif kind == 4:  # every other element of a wider buffer
        wide = np.repeat(values, 2, axis=-1)
        out = wide[..., ::2]
    elif kind == 5:  # Fortran order
        out = np.asfortranarray(values)
    elif kind == 6:  # reversed wider buffer
        wide = np.repeat(values[..., ::-1], 3, axis=-1)
        out = wide[..., ::-3]
    else:  # a slice of a bigger array along the first axis
        pad = np.concatenate([values, values[:1]], axis=0) if values.shape[0] else values
        out = pad[: values.shape[0]]
    if r.chance(24):
        out.flags.writeable = False
    return out


def make_array(r: Reader, shape: tuple[int, ...], dtype: str,
               values_from: str = "logits") -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    if values_from == "probs":
        vals = np.array([r.byte() / 255.0 for _ in range(min(n, 256))] or [0.0])
    elif values_from == "weight":
        vals = np.array([r.byte() / 64.0 for _ in range(min(n, 256))] or [0.0])
    else:
        vals = np.array([r.value() for _ in range(min(n, 256))] or [0.0])
    flat = np.resize(vals, n).astype(np.float64)
    base = flat.reshape(shape)
    with np.errstate(all="ignore"):
        if dtype in ("complex64", "complex128"):
            imag = np.resize(np.array([r.value(0) for _ in range(min(n, 16))] or [0.0]), n)
            arr = (base + 1j * imag.reshape(shape)).astype(dtype)
        elif dtype == "object":
            arr = base.astype(object)
        elif dtype == "<U3":
            arr = base.astype("<U3")
        else:
            arr = base.astype(dtype)
    return layout(r, np.asarray(arr))


def shape_for(r: Reader, ndim: int, min_dim: int = 0, max_dim: int = 5) -> tuple[int, ...]:
    return tuple(min_dim + r.below(max_dim - min_dim + 1) for _ in range(ndim))


def wrong_shape(r: Reader, shape: tuple[int, ...]) -> tuple[int, ...]:
    how = r.below(3)
    if how == 0 or not shape:
        return (*shape, 1 + r.below(2))
    if how == 1:
        return shape[:-1]
    i = r.below(len(shape))
    return shape[:i] + (shape[i] + 1,) + shape[i + 1:]


# -------------------------------------------------------------------------- decode


REDUCTIONS = ["mean", "sum", "none", "mean", "sum", "none", "avg", None, 1]
SMOOTHINGS = [0.0, 0.0, 0.1, 0.5, 1.0, 0.25, -0.1, 1.5, float("nan"), "0.1", None, True, 0]
IGNORES = [-100, -100, -1, 0, 1, 2, 1.5, None, "a", True, 2**64]


def _grad_kwargs(r: Reader, case_kwargs: dict[str, Any], x: np.ndarray,
                 loss_shape: tuple[int, ...], accum: str) -> None:
    reduction = case_kwargs.get("reduction", "mean")
    g = r.below(8)
    if g == 1:
        case_kwargs["grad_output"] = r.value(0)
    elif g == 2:
        shape = loss_shape if reduction == "none" else ()
        case_kwargs["grad_output"] = make_array(r, shape, accum)
    elif g == 3:
        case_kwargs["grad_output"] = make_array(r, wrong_shape(r, loss_shape), accum)
    elif g == 4:
        case_kwargs["grad_output"] = r.pick(["1", True, [1.0], np.array(1j), None])
    o = r.below(10)
    if o == 1:
        case_kwargs["out"] = np.full(x.shape, 7.0, x.dtype if x.dtype.kind in "fc" else "f4")
    elif o == 2:
        case_kwargs["out"] = np.full(x.shape + (2,), 7.0, x.dtype if x.dtype.kind in "fc"
                                     else "f4")[..., 1]
    elif o == 3:
        case_kwargs["out"] = np.empty(wrong_shape(r, x.shape), "f4")
    elif o == 4:
        case_kwargs["out"] = np.empty(x.shape, r.pick(["f8", "f4", "f2", "i4", ">f4"]))
    elif o == 5:
        ro = np.empty(x.shape, x.dtype if x.dtype.kind in "fc" else "f4")
        ro.flags.writeable = False
        case_kwargs["out"] = ro
    elif o == 6:
        case_kwargs["out"] = x
    if r.chance(40):
        case_kwargs["inplace"] = r.pick([True, True, True, "yes", 1])


def _index_target(r: Reader, classes: int, loss_shape: tuple[int, ...], ignore: Any) -> np.ndarray:
    """Class indices, mostly valid, some ignore_index, some out of range, of some
    integer dtype (or bool) and layout."""
    tdtype = r.pick(["int64", "int64", "int32", "uint8", "int8", ">i8", "uint64", "bool"])
    n = int(np.prod(loss_shape)) if loss_shape else 1
    vals = []
    for _ in range(n):
        c = r.below(16)
        if c < 11:
            vals.append(r.below(max(classes, 1)))
        elif c < 13 and type(ignore) is int and -(2**63) <= ignore < 2**63:
            vals.append(ignore)
        else:
            vals.append(r.pick([-1, classes, classes + 3, -100, 2**31]))
    t = np.array(vals, np.int64).reshape(loss_shape)
    with np.errstate(all="ignore"):
        t = t.astype(tdtype) if tdtype != "bool" else t.astype(bool)
    return layout(r, t)


def _weight_kwarg(r: Reader, kwargs: dict[str, Any], classes: int, dtype: str) -> None:
    """Sometimes a per-class weight: right, of the wrong shape, or not an array."""
    w = r.below(8)
    if w in (1, 2):
        kwargs["weight"] = make_array(r, (classes,), r.pick(["float32", "float64", dtype]),
                                      "weight")
    elif w == 3:
        kwargs["weight"] = make_array(r, wrong_shape(r, (classes,)), "float32", "weight")
    elif w == 4:
        kwargs["weight"] = r.pick([[1.0], np.ones(classes, bool), np.ones(classes, "c8"), "w"])


def _decode_cross_entropy(r: Reader, fn: str) -> Case:
    """cross_entropy(_and_grad), or nll_loss(_and_grad): the same arguments but for
    class-probability targets and label_smoothing."""
    nll = fn.startswith("nll")
    ndim = r.pick([2, 2, 2, 1, 3, 4, 0])
    shape = list(shape_for(r, ndim, 0, 5))
    if ndim >= 2 and shape[1] == 0 and r.chance(200):
        shape[1] = 1
    if ndim == 1 and shape[0] == 0 and r.chance(200):
        shape[0] = 3
    shape_t = tuple(shape)
    dtype = r.pick(INPUT_DTYPES)
    x = make_array(r, shape_t, dtype)
    classes = shape_t[0] if ndim == 1 else (shape_t[1] if ndim >= 2 else 0)
    loss_shape = () if ndim <= 1 else shape_t[:1] + shape_t[2:]
    kwargs: dict[str, Any] = {}
    ignore = -100
    if r.chance(48):
        ignore = r.pick(IGNORES)
        kwargs["ignore_index"] = ignore
    kind = r.below(10)
    if kind < 6 or (nll and kind < 8):  # class indices
        target = _index_target(r, classes, loss_shape, ignore)
    elif kind < 8:  # probabilities
        target = make_array(r, shape_t, r.pick(["float32", "float64", "float16", dtype]),
                            "probs")
    elif kind == 8:
        target = make_array(r, wrong_shape(r, loss_shape), "int64")
    else:
        target = r.pick([[0, 1], None, "x", 1.0, np.zeros(loss_shape, "c8")])
    _weight_kwarg(r, kwargs, classes, dtype)
    if r.chance(128):
        kwargs["reduction"] = r.pick(REDUCTIONS)
    if not nll and r.chance(80):
        kwargs["label_smoothing"] = r.pick(SMOOTHINGS)
    if fn.endswith("_and_grad"):
        accum = "float64" if x.dtype == np.float64 else "float32"
        _grad_kwargs(r, kwargs, x, loss_shape, accum)
    return Case("api", fn, [x, target], kwargs)


def _decode_regression(r: Reader, fn: str) -> Case:
    shape = shape_for(r, r.below(5), 0, 5)
    dtype = r.pick(INPUT_DTYPES)
    x = make_array(r, shape, dtype)
    tkind = r.below(8)
    if tkind < 5:
        target = make_array(r, shape, dtype)
    elif tkind == 5:
        target = make_array(r, shape, r.pick(["float32", "float64", "int32", "complex64",
                                               "bool", "float16"]))
    elif tkind == 6:
        target = make_array(r, wrong_shape(r, shape), dtype)
    else:
        target = r.pick([[0.0], None, 1.0, "t"])
    kwargs: dict[str, Any] = {}
    if r.chance(128):
        kwargs["reduction"] = r.pick(REDUCTIONS)
    if fn.endswith("_and_grad"):
        accum = "float64" if x.dtype in (np.float64, np.complex128) else "float32"
        _grad_kwargs(r, kwargs, x, shape, accum)
    return Case("api", fn, [x, target], kwargs)


GAN_BAD_KINDS = ["vanilla", None, 1, "MINIMAX"]
GAN_DTYPES = ["float32", "float64", "float32", "float16", ">f4", ">f8"]
GAN_ARGS = {"gan_discriminator_loss": ["real_logits", "fake_logits"],
            "gan_generator_loss": ["fake_logits"]}


def _gan_out(r: Reader, x: np.ndarray, others: list[np.ndarray]) -> Any:
    """An out= for the gradient of ``x``: fitting, strided, wrong, read-only or aliasing."""
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype("f4")
    o = r.below(8)
    if o == 0:
        return np.full(x.shape, 7.0, dtype)
    if o == 1:
        return np.full(x.shape + (2,), 7.0, dtype)[..., 1]
    if o == 2:
        return np.empty(wrong_shape(r, x.shape), dtype)
    if o == 3:
        return np.empty(x.shape, r.pick(["f8", "f4", "f2", ">f4", "i4"]))
    if o == 4:
        ro = np.empty(x.shape, dtype)
        ro.flags.writeable = False
        return ro
    if o == 5:
        return x
    return r.pick(others + [[0.0], "out"])  # another operand (aliasing), or not an array


def _decode_gan(r: Reader, fn: str) -> Case:
    """real_logits / fake_logits of any shapes and dtypes (often different), a kind
    (sometimes unknown) and, for _and_grad, grad_output, out_real / out_fake / out, inplace."""
    base = fn.removesuffix("_and_grad")
    discriminator = base == "gan_discriminator_loss"
    kinds = list(GAN_DISCRIMINATOR_KINDS if discriminator else GAN_GENERATOR_KINDS)
    arrays = []
    for _ in GAN_ARGS[base]:
        if r.chance(12):
            arrays.append(r.pick([[0.5, -1.0], None, "x", 1.0]))
            continue
        dtype = r.pick(GAN_DTYPES) if r.chance(220) else r.pick(INPUT_DTYPES)
        x = make_array(r, shape_for(r, r.below(4), 0, 6), dtype)
        if arrays and isinstance(arrays[0], np.ndarray) and r.chance(24):
            same = arrays[0]  # the same memory twice: itself, or reversed
            x = same if r.chance(128) or same.ndim == 0 else same[::-1]
        arrays.append(x)
    kwargs: dict[str, Any] = {}
    if r.chance(200):
        kwargs["kind"] = r.pick(kinds) if r.chance(230) else r.pick(GAN_BAD_KINDS)
    if fn.endswith("_and_grad"):
        g = r.below(8)
        if g == 1:
            kwargs["grad_output"] = r.value(0)
        elif g == 2:
            kwargs["grad_output"] = make_array(r, (), r.pick(["float32", "float64"]))
        elif g == 3:
            kwargs["grad_output"] = r.pick(["1", True, [1.0], np.array(1j), np.ones(2)])
        outs = ["out_real", "out_fake"] if discriminator else ["out"]
        for name, x in zip(outs, arrays):
            if isinstance(x, np.ndarray) and r.chance(60):
                kwargs[name] = _gan_out(r, x, [a for a in arrays if a is not x])
        if r.chance(40):
            kwargs["inplace"] = r.pick([True, True, True, "yes", 1])
    return Case("api", fn, arrays, kwargs, {"arg_names": GAN_ARGS[base]})


def _decode_core(r: Reader, scalar_target: bool = False) -> Case:
    """A call into _core; with ``scalar_target``, an elementwise one without a target
    array (``target_scalar``, ``scale``), as the GAN objective makes it."""
    fn = r.pick(["cross_entropy", "mse", "l1", "elementwise"])
    if scalar_target:
        fn = "elementwise"
    dtype = r.pick(["float32", "float64", "float16", "uint16", "complex64", "int32", ">f4"])
    bf16 = r.chance(40)
    accum = r.pick(["float32", "float64", "float16"])
    if fn == "cross_entropy":
        shape = shape_for(r, r.pick([3, 3, 3, 2]), 0, 4)
        x = make_array(r, shape, dtype)
        outer = shape[0] if shape else 0
        inner = shape[2] if len(shape) > 2 else 1
        classes = shape[1] if len(shape) > 1 else 0
        if r.chance(160):
            t = np.array([r.below(max(classes, 1) + 2) - 1 for _ in range(outer * inner)],
                         np.int64).reshape(outer, inner)
            target = layout(r, t)
        else:
            target = make_array(r, shape if r.chance(200) else wrong_shape(r, shape),
                                dtype, "probs")
        weight = make_array(r, (classes,), accum, "weight") if r.chance(60) else None
        red = r.below(4) - (1 if r.chance(20) else 0)
        loss_shape = (outer, inner) if r.chance(220) else wrong_shape(r, (outer, inner))
        loss_out = make_array(r, loss_shape, accum) if red == 0 or r.chance(40) else None
        grad = None
        if r.chance(160):
            grad = x if r.chance(40) else make_array(r, shape, dtype)
        go = make_array(r, loss_shape, accum) if r.chance(40) else None
        args = [x, target, weight, r.pick([-100, -1, 0, 1, 2**63 - 1]),
                r.pick([0.0, 0.1, 1.0, -0.5, float("nan")]), red, loss_out, grad, go,
                r.value(0), bf16]
        return Case("core", fn, args, {})
    shape = shape_for(r, r.below(3), 0, 6)
    x = make_array(r, shape, dtype)
    target = make_array(r, shape if r.chance(200) else wrong_shape(r, shape),
                        r.pick([dtype, dtype, "float32", "float64"]))
    red = r.below(4) - (1 if r.chance(20) else 0)
    n = int(np.prod(shape)) if shape else 1
    loss_out = make_array(r, (n,) if r.chance(220) else (n + 1,), accum) \
        if red == 0 or r.chance(40) else None
    grad = (x if r.chance(40) else make_array(r, shape, dtype)) if r.chance(160) else None
    go = make_array(r, (n,), accum) if r.chance(40) else None
    op = r.pick(ELEMENTWISE_OP_CODES) if fn == "elementwise" else ELEMENTWISE_OP_CODES[fn == "l1"]
    kwargs: dict[str, Any] = {}
    if scalar_target:
        target = None
        kwargs = {"target_scalar": r.value(), "scale": r.pick([1.0, 0.5, -1.0, r.value()])}
    return Case("core", "elementwise", [op, x, target, red, loss_out, grad, go, r.value(0), bf16],
                kwargs)


P_VALUES = [1, 1, 2, 2, 2.0, 3, 0, 1.5, "2", True, None]
MARGINS = [1.0, 1.0, 0.5, 0.0, -1.0, 2, 3.5, float("nan"), float("inf"), "1", None, True]


def _decode_multi_margin(r: Reader, fn: str) -> Case:
    ndim = r.pick([2, 2, 2, 1, 0, 3])
    shape = list(shape_for(r, ndim, 0, 5))
    if ndim and shape[-1] == 0 and r.chance(200):
        shape[-1] = 1
    shape_t = tuple(shape)
    dtype = r.pick(INPUT_DTYPES)
    x = make_array(r, shape_t, dtype)
    classes = shape_t[-1] if ndim else 1
    loss_shape = shape_t[:1] if ndim == 2 else r.pick([(), (1,)])
    kind = r.below(10)
    if kind < 8:
        target: Any = _index_target(r, classes, loss_shape, None)
    elif kind == 8:
        target = make_array(r, wrong_shape(r, loss_shape), "int64")
    else:
        target = r.pick([[0, 1], None, "x", 1.0, np.zeros(loss_shape, "f4")])
    kwargs: dict[str, Any] = {}
    if r.chance(100):
        kwargs["p"] = r.pick(P_VALUES)
    if r.chance(100):
        kwargs["margin"] = r.pick(MARGINS)
    _weight_kwarg(r, kwargs, classes, dtype)
    if r.chance(128):
        kwargs["reduction"] = r.pick(REDUCTIONS)
    if fn.endswith("_and_grad"):
        accum = "float64" if x.dtype == np.float64 else "float32"
        _grad_kwargs(r, kwargs, x, loss_shape, accum)
    return Case("api", fn, [x, target], kwargs)


def _decode_class_core(r: Reader) -> Case:
    """_core.nll / _core.multi_margin with buffers of any dtype, shape or aliasing."""
    fn = r.pick(["nll", "multi_margin"])
    dtype = r.pick(["float32", "float64", "float16", "uint16", "complex64", "int32", ">f4"])
    bf16 = r.chance(40)
    accum = r.pick(["float32", "float64", "float16"])
    shape = shape_for(r, r.pick([3, 3, 2, 2, 1]), 0, 4)
    x = make_array(r, shape, dtype)
    outer = shape[0] if shape else 0
    classes = shape[1] if len(shape) > 1 else 0
    inner = shape[2] if len(shape) > 2 else 1
    n = outer * inner
    t = np.array([r.below(max(classes, 1) + 2) - 1 for _ in range(n)], np.int64)
    target = layout(r, t) if r.chance(200) else make_array(r, (n + 1,), r.pick(["int64", "f4"]))
    weight = make_array(r, (classes,), accum, "weight") if r.chance(60) else None
    red = r.below(4) - (1 if r.chance(20) else 0)
    loss_out = make_array(r, (n,) if r.chance(220) else (n + 1,), accum) \
        if red == 0 or r.chance(40) else None
    grad = (x if r.chance(40) else make_array(r, shape, dtype)) if r.chance(160) else None
    go = make_array(r, (n,), accum) if r.chance(40) else None
    if fn == "nll":
        geometry = [outer, classes, inner] if r.chance(128) else []
        args = [x, target, weight, r.pick([-100, -1, 0, 1, 2**63 - 1]), red, loss_out, grad, go,
                r.value(0), bf16, *geometry]
    else:
        args = [x, target, weight, r.pick([1, 2, 2, 3, 0]), r.pick([1.0, 0.0, -2.5, 1e30]),
                red, loss_out, grad, go, r.value(0), bf16]
    return Case("core", fn, args, {})


# Inputs whose first byte is in this range call the losses over class indices
# (nll_loss, multi_margin_loss): no committed corpus input starts with one, so the
# corpus decodes as before they were added.
CLASS_LOSS_FIRST_BYTES = range(224, 240)
CLASS_FNS = ["nll_loss", "nll_loss_and_grad", "multi_margin_loss", "multi_margin_loss_and_grad",
             "core"]


def _decode_class_loss(r: Reader) -> Case:
    fn = r.pick(CLASS_FNS)
    if fn == "core":
        return _decode_class_core(r)
    if fn.startswith("nll"):
        return _decode_cross_entropy(r, fn)
    return _decode_multi_margin(r, fn)


# The elementwise losses come from the project's list of losses (fusedloss/_losses.py);
# mse and l1 first, so that corpus files written before the list grew decode as before.
API_FNS = ["cross_entropy", "cross_entropy_and_grad", "mse_loss", "mse_loss_and_grad",
           "l1_loss", "l1_loss_and_grad", "set_num_threads"] + [
    name for loss in ELEMENTWISE_LOSSES if loss.name not in ("mse_loss", "l1_loss")
    for name in (loss.name, loss.name + "_and_grad")]
# Kernel op codes in the order mse, l1, then the rest (for the core layer).
ELEMENTWISE_OP_CODES = sorted(_core.ELEMENTWISE_OPS.values())


# Inputs whose first byte is in this range call the GAN objective (or the kernel
# with a scalar target, as it does): no committed corpus input written before
# starts with one, so the corpus decodes as before they were added.
GAN_FIRST_BYTES = range(196, 212)
GAN_FNS = [name for base in GAN_ARGS for name in (base, base + "_and_grad")] + ["core"]


def _decode_gan_family(r: Reader) -> Case:
    fn = r.pick(GAN_FNS)
    return _decode_core(r, scalar_target=True) if fn == "core" else _decode_gan(r, fn)


def decode(data: bytes) -> Case:
    if data and data[0] in CLASS_LOSS_FIRST_BYTES:
        return _decode_class_loss(Reader(data[1:]))
    if data and data[0] in GAN_FIRST_BYTES:
        return _decode_gan_family(Reader(data[1:]))
    r = Reader(data)
    if r.chance(48):
        return _decode_core(r)
    fn = r.pick(API_FNS)
    if fn == "set_num_threads":
        n = r.pick([1, 2, 3, 4, 0, -1, 2**63, 2**40, 1.5, "2", True, None, np.int64(2)])
        return Case("api", fn, [n], {})
    if fn.startswith("cross"):
        return _decode_cross_entropy(r, fn)
    return _decode_regression(r, fn)


# ------------------------------------------------------------------------ reference


def _ce_reference(x: np.ndarray, target: np.ndarray, weight: Any, ignore_index: int,
                  reduction: str, smoothing: float,
                  grad_output: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """torch.nn.functional.cross_entropy semantics in float64 NumPy: (loss, grad, terms),
    terms being the size of the two parts of the gradient that cancel."""
    one_row = x.ndim == 1
    xs = x[None] if one_row else x
    cls = xs.shape[1]
    inner = int(np.prod(xs.shape[2:]))
    x3 = np.moveaxis(xs.reshape(xs.shape[0], cls, inner), 1, -1)  # (N, inner, C)
    w = np.ones(cls) if weight is None else np.asarray(weight, np.float64)
    m = x3.max(axis=-1, keepdims=True) if cls else np.zeros(x3.shape[:-1] + (1,))
    z = x3 - m
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    logp = z - lse
    sm = np.exp(logp)
    if target.dtype.kind == "f":
        p = np.moveaxis((target[None] if one_row else target).reshape(xs.shape[0], cls, inner),
                        1, -1).astype(np.float64)
        p = p * (1 - smoothing) + (smoothing / cls if cls else 0.0)
        coef = p * w
        denom = np.float64(np.prod(x3.shape[:-1]))
        active = np.ones(x3.shape[:-1], bool)
    else:
        t = (target[None] if one_row else target).reshape(xs.shape[0], inner).astype(np.int64)
        active = t != ignore_index
        safe = np.where(active, t, 0)
        onehot = np.zeros(x3.shape)
        np.put_along_axis(onehot, safe[..., None], 1.0, axis=-1)
        coef = ((1 - smoothing) * onehot * w[safe][..., None] + smoothing * w / max(cls, 1))
        coef = coef * active[..., None]
        denom = np.float64((w[safe] * active).sum())
    loss_el = -(coef * np.where(coef != 0, logp, 0)).sum(axis=-1)
    g_el = np.ones(loss_el.shape)
    if reduction == "none":
        if grad_output is not None:
            g_el = np.asarray(grad_output, np.float64).reshape(loss_el.shape)
        loss: Any = loss_el.reshape(() if one_row else (xs.shape[0], *xs.shape[2:]))
        scale = 1.0
    else:
        g = 1.0 if grad_output is None else float(grad_output)
        total = loss_el.sum()
        with np.errstate(all="ignore"):
            loss = total / denom if reduction == "mean" else total
            scale = g / denom if reduction == "mean" else g
    with np.errstate(all="ignore"):
        g3 = (g_el * scale)[..., None]
        grad3 = (coef.sum(axis=-1, keepdims=True) * sm - coef) * g3
        # the size of the two terms that cancel: the roundoff a float result may carry
        terms3 = (np.abs(coef.sum(axis=-1, keepdims=True) * sm) + np.abs(coef)) * np.abs(g3)
    grad3 = np.where(active[..., None], grad3, 0.0)  # ignored rows: 0, as torch
    grad = np.moveaxis(grad3, -1, 1).reshape(xs.shape)
    terms = np.moveaxis(terms3, -1, 1).reshape(xs.shape)
    return loss, grad[0] if one_row else grad, terms[0] if one_row else terms


def _regression_reference(fn: str, x: np.ndarray, t: np.ndarray, reduction: str,
                          grad_output: Any) -> tuple[Any, np.ndarray]:
    complex_ = x.dtype.kind == "c"
    x = x.astype(np.complex128 if complex_ else np.float64)
    d = x - t.astype(x.dtype)
    if fn.startswith("mse"):
        el, dgrad = np.abs(d) ** 2, 2 * d
    else:
        el = np.abs(d)
        with np.errstate(all="ignore"):
            dgrad = np.where(el == 0, 0, d / np.where(el == 0, 1, el)) if complex_ else np.sign(d)
    if reduction == "none":
        g = np.ones(el.shape) if grad_output is None else np.asarray(grad_output, np.float64)
        return el, dgrad * g
    g = 1.0 if grad_output is None else float(grad_output)
    with np.errstate(all="ignore"):
        if reduction == "mean":
            return el.sum() / el.size if el.size else np.nan, dgrad * (g / max(el.size, 1))
        return el.sum(), dgrad * g


def _nll_reference(x: np.ndarray, target: np.ndarray, weight: Any, ignore_index: int,
                   reduction: str, grad_output: Any) -> tuple[Any, np.ndarray]:
    """torch.nn.functional.nll_loss semantics in float64 NumPy: (loss, grad)."""
    one_row = x.ndim == 1
    xs = x[None] if one_row else x
    rows, cls = xs.shape[0], xs.shape[1]
    inner = int(np.prod(xs.shape[2:]))
    x3 = xs.reshape(rows, cls, inner)
    t = target.reshape(rows, inner).astype(np.int64)
    w = np.ones(cls) if weight is None else np.asarray(weight, np.float64)
    active = t != ignore_index
    safe = np.where(active, t, 0)
    wt = np.where(active, w[safe], 0.0) if cls else np.zeros(t.shape)
    xt = np.take_along_axis(x3, safe[:, None, :], axis=1)[:, 0, :] if cls else np.zeros(t.shape)
    loss_el = np.where(active, -wt * xt, 0.0)
    loss_shape = () if one_row else (rows, *xs.shape[2:])
    with np.errstate(all="ignore"):
        if reduction == "none":
            loss: Any = loss_el.reshape(loss_shape)
            g = np.ones(t.shape) if grad_output is None else \
                np.asarray(grad_output, np.float64).reshape(t.shape)
        else:
            g0 = 1.0 if grad_output is None else float(grad_output)
            denom = wt.sum()
            loss = loss_el.sum() / denom if reduction == "mean" else loss_el.sum()
            g = np.full(t.shape, g0 / denom if reduction == "mean" else g0)
        grad3 = np.zeros(x3.shape)
        o, j = np.nonzero(active)
        grad3[o, safe[o, j], j] = -wt[o, j] * g[o, j]
    grad = grad3.reshape(xs.shape)
    return loss, grad[0] if one_row else grad


def _multi_margin_reference(x: np.ndarray, target: np.ndarray, p: int, margin: float,
                            weight: Any, reduction: str,
                            grad_output: Any) -> tuple[Any, np.ndarray]:
    """torch.nn.functional.multi_margin_loss semantics in float64 NumPy: (loss, grad)."""
    rows = x.shape[0] if x.ndim == 2 else 1
    cls = x.shape[-1] if x.ndim else 1
    x2 = x.reshape(rows, cls).astype(np.float64)
    t = target.reshape(rows).astype(np.int64)
    w = np.ones(cls) if weight is None else np.asarray(weight, np.float64)
    every = np.arange(rows)
    z = margin - x2[every, t][:, None] + x2
    positive = z > 0
    positive[every, t] = False
    zp = np.where(positive, z, 0.0)
    loss_el = (zp if p == 1 else zp * zp).sum(axis=1) * w[t] / cls
    with np.errstate(all="ignore"):
        if reduction == "none":
            loss: Any = loss_el.reshape(target.shape)
            g = np.ones(rows) if grad_output is None else \
                np.asarray(grad_output, np.float64).reshape(rows)
        else:
            g0 = np.float64(1.0 if grad_output is None else float(grad_output))
            loss = loss_el.sum() / rows if reduction == "mean" else loss_el.sum()
            g = np.full(rows, g0 / rows if reduction == "mean" else g0)
        coef = (g * w[t] / cls)[:, None]
        grad = np.where(positive, coef if p == 1 else 2 * coef * z, 0.0)
        grad[every, t] = -grad.sum(axis=1)
    return loss, grad.reshape(x.shape)


def _close(what: str, got: Any, ref: Any, dtype: np.dtype, case: Case,
           terms: Any = 0.0) -> None:
    """|got - ref| <= tol * (|ref| + max|ref|) + 8 eps: relative to the array's
    magnitude, plus a few units of roundoff of 1 (a loss is the log of a sum >= 1, a
    gradient p - q cancels to O(1) roundoff: neither is better than that in float)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        raise Finding(f"{what}: shape {got.shape} != reference {ref.shape} in {case.describe()}")
    # values the output dtype cannot hold (float16 overflow) are not compared
    finite = np.isfinite(ref) & (np.abs(ref) <= float(np.finfo(np.dtype(dtype)).max))
    g = got.astype(np.complex128 if got.dtype.kind == "c" else np.float64)
    if not finite.any():
        return
    scale = float(np.max(np.abs(ref[finite])))
    tol = {"f8": 1e-9, "c16": 1e-9, "f4": 2e-5, "c8": 2e-5, "f2": 4e-3}[
        np.dtype(dtype).kind + str(np.dtype(dtype).itemsize)]
    eps = float(np.finfo(np.dtype(dtype)).eps)
    err = np.abs(g[finite] - ref[finite])
    terms = np.broadcast_to(np.asarray(terms, np.float64), ref.shape)[finite]
    bound = tol * (np.abs(ref[finite]) + scale) + 8 * eps * np.maximum(1.0, terms)
    if not np.all(err <= bound):
        i = int(np.argmax(err - bound))
        raise Finding(
            f"{what}: {g[finite].reshape(-1)[i]!r} vs reference {ref[finite].reshape(-1)[i]!r} "
            f"(tol {tol}) in {case.describe()}")


def _all_finite_small(*values: Any) -> bool:
    for v in values:
        if v is None:
            continue
        a = np.asarray(v)
        if a.dtype.kind in "fc" and a.size and (not np.all(np.isfinite(a))
                                                or np.max(np.abs(a)) > 64):
            return False
        if a.dtype.kind in "fc" and a.size > 4096:
            return False
    return True


def _check_result(case: Case, result: Any, originals: list[Any]) -> None:
    """Compare a successful API call with the float64 reference (small finite inputs)."""
    import fusedloss as fl  # noqa: F401  (for symmetry with run_case)

    fn = case.fn
    if fn.startswith("gan_"):
        return _check_gan_result(case, result)
    x0, t0 = originals[0], originals[1]
    kw = case.kwargs
    red = kw.get("reduction", "mean")
    go = kw.get("grad_output")
    go_arr = None if go is None else np.asarray(go)
    if not _all_finite_small(x0, t0, kw.get("weight"), go_arr):
        return
    dtype = np.dtype(x0.dtype).newbyteorder("=")
    real = np.empty(0, dtype).real.dtype
    loss, grad = result if fn.endswith("_and_grad") else (result, None)
    if red == "none":
        if not isinstance(loss, np.ndarray) or loss.dtype != real:
            raise Finding(f"loss: {type(loss)} {getattr(loss, 'dtype', '')} in {case.describe()}")
    elif not isinstance(loss, np.generic) or loss.dtype != real:
        raise Finding(f"loss: {type(loss)} {getattr(loss, 'dtype', '')} in {case.describe()}")
    if fn.startswith("cross"):
        accum = np.float64 if dtype == np.float64 else np.float32
        w = kw.get("weight")
        w = None if w is None else np.asarray(w).astype(accum)
        smoothing = float(kw.get("label_smoothing") or 0.0)
        t = t0 if t0.dtype.kind in "iub" else t0.astype(dtype)
        ref_loss, ref_grad, terms = _ce_reference(x0.astype(np.float64), t, w,
                                           int(kw.get("ignore_index", -100)), red, smoothing,
                                           None if go_arr is None else go_arr.astype(accum))
    elif fn.startswith(("nll", "multi_margin")):
        accum = np.float64 if dtype == np.float64 else np.float32
        w = kw.get("weight")
        w = None if w is None else np.asarray(w).astype(accum)
        go_acc = None if go_arr is None else go_arr.astype(accum)
        if fn.startswith("nll"):
            ref_loss, ref_grad = _nll_reference(x0.astype(np.float64), t0, w,
                                                int(kw.get("ignore_index", -100)), red, go_acc)
        else:
            margin = float(kw.get("margin", 1.0))
            if not math.isfinite(margin):
                return
            ref_loss, ref_grad = _multi_margin_reference(x0, t0, int(kw.get("p", 1)),
                                                         float(accum(margin)), w, red, go_acc)
        terms = 0.0
    elif fn.startswith(("mse", "l1")):
        ref_loss, ref_grad = _regression_reference(fn, x0, t0.astype(dtype), red, go_arr)
        terms = 0.0
    else:  # the other elementwise losses: checked against torch by the tests, here for
        return  # crashes, exception types, untouched arguments and result types
    _close("loss", loss, ref_loss, dtype, case)
    if grad is not None:
        if grad.dtype != dtype or grad.shape != x0.shape:  # byte order may become native
            raise Finding(f"grad: {grad.dtype} {grad.shape} in {case.describe()}")
        _close("grad", grad, ref_grad, dtype, case, np.nan_to_num(terms))
        if kw.get("inplace") is True and grad is not case.args[0]:
            raise Finding(f"inplace=True did not return input in {case.describe()}")
        if kw.get("out") is not None and grad is not kw["out"]:
            raise Finding(f"out= was not returned in {case.describe()}")


def _check_gan_result(case: Case, result: Any) -> None:
    """The GAN functions' results: a NumPy scalar of the logits' promoted dtype, each
    gradient shaped and typed like its logits, out= / inplace=True arrays returned.
    (Values are checked against torch by tests/test_gan.py.)"""
    arrays = [np.asarray(a) for a in case.args]
    native = [a.dtype.newbyteorder("=") for a in arrays]
    loss, grads = (result[0], result[1:]) if case.fn.endswith("_and_grad") else (result, ())
    if not isinstance(loss, np.generic) or loss.dtype != np.result_type(*native):
        raise Finding(f"loss: {type(loss)} {getattr(loss, 'dtype', '')} in {case.describe()}")
    out_names = ("out",) if len(arrays) == 1 else ("out_real", "out_fake")
    outs = [case.kwargs.get(k) for k in out_names]
    for grad, a, dtype, out, arg in zip(grads, arrays, native, outs, case.args):
        if not isinstance(grad, np.ndarray) or grad.dtype != dtype or grad.shape != a.shape:
            raise Finding(f"grad: {getattr(grad, 'dtype', type(grad))} in {case.describe()}")
        if case.kwargs.get("inplace") is True and grad is not arg:
            raise Finding(f"inplace=True did not return the logits in {case.describe()}")
        if out is not None and grad is not out:
            raise Finding(f"out= was not returned in {case.describe()}")


# ----------------------------------------------------------------------------- run


def _snapshot(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.copy()
    return None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    # bytes, not values: NaN == NaN here, and object arrays compare by identity
    return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


OUT_NAMES = ("out", "out_real", "out_fake")


def run_case(case: Case) -> str:
    """Make the call; raise Finding on a finding. Returns the outcome's name."""
    import fusedloss as fl
    from fusedloss import _core

    values = list(case.args) + list(case.kwargs.values())
    snaps = [_snapshot(v) for v in values]
    threads = fl.get_num_threads()
    target = getattr(fl if case.layer == "api" else _core, case.fn)
    try:
        result = target(*case.args, **case.kwargs)
        outcome = "ok"
    except EXPECTED as exc:
        if not str(exc):
            raise Finding(f"{type(exc).__name__} without a message in {case.describe()}") from exc
        result, outcome = None, type(exc).__name__
    except Exception as exc:  # noqa: BLE001
        raise Finding(f"unexpected {type(exc).__name__}: {exc} in {case.describe()}") from exc
    finally:
        if case.fn == "set_num_threads":
            fl.set_num_threads(threads)
    if case.layer == "core":
        return outcome
    # Arguments other than out (and the logits with inplace=True after success) are untouched.
    arg_names = case.notes.get("arg_names", ["input", "target"])
    may_change = set()
    if outcome == "ok" and case.kwargs.get("inplace") is True:
        may_change = {0, 1} if len(arg_names) == 2 and arg_names[0] == "real_logits" else {0}
    names = arg_names[:len(case.args)] + list(case.kwargs)
    outs = [v for k, v in case.kwargs.items() if k in OUT_NAMES and isinstance(v, np.ndarray)]
    for i, (v, snap) in enumerate(zip(values, snaps)):
        if snap is None or i in may_change or names[i] in OUT_NAMES:
            continue
        if outcome == "ok" and any(np.may_share_memory(v, out) for out in outs):
            continue
        if not _same(v, snap):
            raise Finding(f"{names[i]} was modified ({outcome}) by {case.describe()}")
    if outcome == "ok" and case.fn != "set_num_threads":
        _check_result(case, result, snaps)
    return outcome


def capability_for(data: bytes) -> str:
    """The compiled path an input runs on: each path the CPU supports in turn, chosen
    by the input's length (not by a decoded byte: older corpus files decode as before)."""
    from fusedloss import _core

    paths = _core.supported_capabilities()
    return paths[len(data) % len(paths)]


def run_input(data: bytes) -> str:
    """run_case(decode(data)) on the path capability_for(data)."""
    import fusedloss as fl
    from fusedloss import _core

    previous, path = fl.cpu_capability(), capability_for(data)
    _core.set_capability(path)
    try:
        return run_case(decode(data))
    except Finding as finding:
        raise Finding(f"{finding} [{path} path]") from finding
    finally:
        _core.set_capability(previous)


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris's name)
    run_input(data)


def main() -> None:
    import atheris

    import fusedloss._api
    import fusedloss._validate

    # fusedloss is often an editable install whose import hook atheris's
    # instrument_imports() does not see: instrument the functions themselves.
    for module in (fusedloss._api, fusedloss._validate, sys.modules[__name__]):
        for name, obj in list(vars(module).items()):
            if callable(obj) and getattr(obj, "__module__", None) == module.__name__ and \
                    hasattr(obj, "__code__"):
                setattr(module, name, atheris.instrument_func(obj))
    np.seterr(all="ignore")
    # libFuzzer re-executes argv[0] for -merge / -fork: point it at an executable wrapper.
    argv = [os.environ.get("FUZZ_SELF", sys.argv[0]), *sys.argv[1:]]
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
