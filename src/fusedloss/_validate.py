"""Argument checks for the NumPy API: every message names the argument.

Each check returns the argument normalised for the kernels (C-contiguous,
native byte order, the dtype the kernels take) so that ``_api`` stays a thin
sequence of calls. The common case (already contiguous float32/float64) costs
a few attribute reads: the API's per-call overhead is part of its speed.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NamedTuple

import numpy as np

F32 = _F32 = np.dtype(np.float32)
F64 = _F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_C64 = np.dtype(np.complex64)
_C128 = np.dtype(np.complex128)

REAL_DTYPES = (_F32, _F64, _F16)
COMPLEX_DTYPES = (_C64, _C128)
#: The kernels' reduction codes (csrc/fusedloss/kernels.h, Reduction); every layer reads them here.
NONE, MEAN, SUM = 0, 1, 2
REDUCTIONS = {"none": NONE, "mean": MEAN, "sum": SUM}
#: The KL losses also take "batchmean": a mean whose denominator is the batch size.
KL_REDUCTIONS = {**REDUCTIONS, "batchmean": MEAN}


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64 (and complex128) data, float32 for everything else."""
    if dtype is _F64 or dtype is _F32:  # identity first: the per-call hot path
        return dtype
    return _F64 if dtype in (_F64, _C128) else _F32


def real_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a loss value of `dtype` data has (complex -> its real part)."""
    if dtype is _F64 or dtype is _F32:
        return dtype
    if dtype == _C64:
        return _F32
    if dtype == _C128:
        return _F64
    return dtype


def array(value: object, name: str) -> np.ndarray:
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ndarray):  # subclasses (np.matrix, memmap) as plain arrays
        return value.view(np.ndarray)
    raise TypeError(f"{name}: expected a numpy.ndarray, got {type(value).__name__}")


def float_array(value: object, name: str, allow_complex: bool = False) -> np.ndarray:
    """A C-contiguous array of a supported floating dtype, native byte order."""
    arr = array(value, name)
    dtype = arr.dtype
    if dtype is _F32 or dtype is _F64:
        return arr if arr.flags.c_contiguous else np.asarray(arr, order="C")
    allowed = REAL_DTYPES + COMPLEX_DTYPES if allow_complex else REAL_DTYPES
    native = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
    if native not in allowed:
        kinds = "float32, float64, float16, complex64 or complex128" if allow_complex else (
            "float32, float64 or float16")
        raise TypeError(f"{name}: expected a {kinds} array, got dtype {dtype}")
    return np.asarray(arr, dtype=native, order="C")


def known_reduction(reduction: object, table: dict[str, int] = REDUCTIONS) -> int | None:
    """The kernels' code for a reduction name in ``table``, or None (the torch layer
    then leaves the call to torch, which raises its own error)."""
    return table.get(reduction) if isinstance(reduction, str) else None


def reduction_code(reduction: object, table: dict[str, int] = REDUCTIONS) -> int:
    code = known_reduction(reduction, table)
    if code is None:
        names = [repr(name) for name in table]
        raise ValueError(
            f"reduction: expected {', '.join(names[:-1])} or {names[-1]}, got {reduction!r}"
        )
    return code


def as_float(value: object, name: str) -> float:
    """float(value) for a real number; a Python int beyond float's range is an error
    naming the argument (float() alone raises an OverflowError that names none)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"{name}: expected a number within float's range, got an int of "
                         f"{len(str(value))} digits") from None


def label_smoothing_value(value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing: expected a float in [0, 1], got {type(value).__name__}")
    value = as_float(value, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1], got {value}")
    return value


def no_class_to_ignore(ignore_index: int) -> None:
    """Probability targets have no class to ignore: as torch, an ignore_index that
    could name one (>= 0) is an error, a negative one ignores nothing."""
    if ignore_index >= 0:
        raise ValueError(
            "ignore_index: not supported with class-probability targets (only a negative "
            f"value, which ignores nothing), got {ignore_index}"
        )


def integer_value(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if not -(2**63) <= result < 2**63:
        raise ValueError(f"{name}: {result} does not fit in a 64-bit integer")
    return result


def positive_integer(value: object, name: str) -> int:
    result = integer_value(value, name)
    if result < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {result}")
    return result


def real_number(value: object, name: str, what: str) -> float:
    """A finite real number (not a bool) as a float; ``what`` describes the allowed values."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    result = as_float(value, name)
    # Comparisons, not math.isfinite: torch.compile traces them when the value is
    # symbolic (a float argument that changed between calls); NaN fails both.
    if not -math.inf < result < math.inf:
        raise ValueError(f"{name}: expected {what}, got {result}")
    return result


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CEOptions(NamedTuple):
    """Cross-entropy's LLM options, checked, as the kernel takes them."""

    logit_scale: float
    softcap: float  # 0.0: no cap
    lse_square_scale: float
    num_items_in_batch: float | None


def ce_options(
    logit_scale: object, softcap: object, lse_square_scale: object, num_items_in_batch: object
) -> CEOptions:
    scale = real_number(logit_scale, "logit_scale", "a finite number")
    cap = 0.0
    if softcap is not None:
        cap = real_number(softcap, "softcap", "None or a finite number > 0")
        if cap <= 0:
            raise ValueError(f"softcap: expected None or a finite number > 0, got {cap}")
        # The kernels take tanh of x * (logit_scale / softcap), that factor in the
        # accumulation dtype: an infinite one would make x = 0 NaN (torch's
        # (scale x) / cap gives 0), so it must stay within float32's range.
        if not abs(scale / cap) <= _FLOAT32_MAX:
            raise ValueError(
                f"softcap: logit_scale / softcap must lie within float32's range, got "
                f"logit_scale={scale} and softcap={cap}"
            )
    zloss = real_number(lse_square_scale, "lse_square_scale", "a finite number >= 0")
    if zloss < 0:
        raise ValueError(f"lse_square_scale: expected a finite number >= 0, got {zloss}")
    items = None
    if num_items_in_batch is not None:
        items = real_number(num_items_in_batch, "num_items_in_batch", "None or a number > 0")
        if items <= 0:
            raise ValueError(f"num_items_in_batch: expected None or a number > 0, got {items}")
    return CEOptions(scale, cap, zloss, items)


NO_CE_OPTIONS = CEOptions(1.0, 0.0, 0.0, None)


def check_num_items(options: CEOptions, reduction: int) -> None:
    if options.num_items_in_batch is not None and reduction != REDUCTIONS["mean"]:
        name = next(k for k, code in REDUCTIONS.items() if code == reduction)
        raise ValueError(
            f"num_items_in_batch: only taken with reduction='mean' (it replaces the mean's "
            f"denominator), got reduction={name!r}"
        )


def same_shape(arr: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> None:
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} ({what}), got {arr.shape}")


def class_geometry(shape: tuple[int, ...]) -> tuple[int, int, int, tuple[int, ...]]:
    """(outer, C, inner, loss shape) of an input shaped (C,), (N, C) or (N, C, d1, ..., dk)."""
    ndim = len(shape)
    if ndim == 2:
        return shape[0], shape[1], 1, shape[:1]
    if ndim > 2:
        return shape[0], shape[1], math.prod(shape[2:]), shape[:1] + shape[2:]
    if ndim == 1:
        return 1, shape[0], 1, ()
    raise ValueError("input: expected shape (C,), (N, C) or (N, C, d1, ..., dk), got a 0-d array")


def class_weight(weight: object, classes: int, accum: np.dtype) -> np.ndarray | None:
    """One weight per class, as a C-contiguous array of the accumulation dtype."""
    if weight is None:
        return None
    w = array(weight, "weight")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"weight: expected a floating array, got dtype {w.dtype}")
    same_shape(w, (classes,), "weight", "one weight per class")
    return np.asarray(w, dtype=accum, order="C")


def grad_output_value(
    grad_output: object, reduction: int, loss_shape: tuple[int, ...], accum: np.dtype
) -> tuple[np.ndarray | None, float]:
    """Split grad_output into (array for reduction none, scalar for mean/sum)."""
    if grad_output is None:
        return None, 1.0
    if reduction != 0:
        if isinstance(grad_output, (bool, np.bool_)):
            raise TypeError("grad_output: expected a real number, got bool")
        if isinstance(grad_output, numbers.Real):
            return None, as_float(grad_output, "grad_output")
        arr = array(grad_output, "grad_output")
        if arr.shape != ():
            raise ValueError(
                f"grad_output: the loss is a scalar, so grad_output must be a scalar or 0-d "
                f"array, got shape {arr.shape}"
            )
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"grad_output: expected a real number, got dtype {arr.dtype}")
        return None, float(arr)
    if loss_shape == () and isinstance(grad_output, numbers.Real):
        # An unreduced loss of one (C,) sample is 0-d: a number is its shape
        # (2 * loss of a 0-d array is a NumPy scalar, not an array).
        if isinstance(grad_output, (bool, np.bool_)):
            raise TypeError("grad_output: expected a real number, got bool")
        grad_output = np.asarray(grad_output)
    arr = array(grad_output, "grad_output")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"grad_output: expected a real floating array, got dtype {arr.dtype}")
    same_shape(arr, loss_shape, "grad_output", "the shape of the unreduced loss")
    return np.asarray(arr, dtype=accum, order="C"), 1.0


def writable(arr: np.ndarray, name: str, why: str = "") -> None:
    """`arr` can receive results: writeable, and no two of its elements share memory
    (a zero or overlapping stride, as ``as_strided`` or ``broadcast_to`` make: the
    last write would win, silently). The test is the standard sufficient one: each
    dimension's stride, smallest first, spans at least the dimensions inside it."""
    if not arr.flags.writeable:
        raise ValueError(f"{name}: array is read-only{why}")
    if arr.flags.c_contiguous or arr.flags.f_contiguous or arr.size == 0:
        return  # (the common case, first)
    span = arr.itemsize
    for stride, size in sorted((abs(st), n) for st, n in zip(arr.strides, arr.shape) if n > 1):
        if stride < span:
            raise ValueError(
                f"{name}: its elements overlap in memory (strides {arr.strides}), so results "
                "written into it would overwrite each other"
            )
        span = stride * (size - 1) + span


def lse_destination(
    lse_out: object, loss_shape: tuple[int, ...], accum: np.dtype, operands: dict[str, object]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(buffer the kernel fills with the log-sum-exp, the caller's array to copy it
    into afterwards or None): lse_out itself when C-contiguous of the accumulation dtype."""
    arr = array(lse_out, "lse_out")
    if arr.dtype.kind != "f":
        raise TypeError(f"lse_out: expected a floating array, got dtype {arr.dtype}")
    same_shape(arr, loss_shape, "lse_out", "the shape of the unreduced loss")
    writable(arr, "lse_out")
    for name, other in operands.items():
        if isinstance(other, np.ndarray) and np.may_share_memory(arr, other):
            raise ValueError(f"lse_out: shares memory with {name}")
    if arr.dtype == accum and arr.flags.c_contiguous and arr.dtype.isnative:
        return arr, None
    return np.empty(loss_shape, dtype=accum), arr


def gradient_buffer(
    x: np.ndarray,
    original: np.ndarray,
    out: object,
    inplace: bool,
    input_name: str = "input",
    out_name: str = "out",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Where the kernel writes the gradient, and the user array to copy it into after.

    Returns (kernel_buffer, copy_back): kernel_buffer is C-contiguous with x's
    dtype and shape; copy_back, when set, is the caller's non-contiguous `out`
    (or `input` for inplace=True) that receives kernel_buffer afterwards.
    Messages name the arguments `input_name` and `out_name`.
    """
    if out is None and inplace is False:  # the common case first
        return np.empty_like(x), None
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
    if inplace:
        if out is not None:
            raise ValueError(f"{out_name}: cannot be combined with inplace=True")
        writable(original, input_name, ", so inplace=True cannot overwrite it")
        if x.dtype != original.dtype:
            raise TypeError(
                f"{input_name}: inplace=True needs a native float array, got dtype "
                f"{original.dtype}"
            )
        if x is original:
            return x, None
        return x, original  # x is a contiguous copy; the gradient goes back into input
    if out is None:
        return np.empty_like(x), None
    out_arr = array(out, out_name)
    if out_arr.dtype != x.dtype:
        raise TypeError(
            f"{out_name}: expected dtype {x.dtype} (the {input_name}'s), got {out_arr.dtype}"
        )
    same_shape(out_arr, original.shape, out_name, f"the {input_name}'s shape")
    writable(out_arr, out_name)
    if out_arr.flags.c_contiguous and out_arr.dtype.isnative:
        return out_arr, None
    return np.empty_like(x), out_arr


def check_no_overlap(
    out: np.ndarray,
    input: np.ndarray,
    others: dict[str, Any],
    input_name: str = "input",
    out_name: str = "out",
) -> None:
    """`out` may be exactly `input` (an in-place gradient: the kernel reads either
    `input` itself, C-contiguous, or a contiguous copy of it, and the gradient
    reaches a non-contiguous `out` by copy-back) but must not otherwise alias an
    operand: the kernel would read values it has already overwritten."""
    if np.may_share_memory(out, input) and not (
        out.ctypes.data == input.ctypes.data
        and out.strides == input.strides
        and out.shape == input.shape
    ):
        raise ValueError(f"{out_name}: overlaps {input_name} without being the same array")
    for name, arrays in others.items():  # an array, or a tuple of them (kernel's, caller's)
        for other in arrays if isinstance(arrays, tuple) else (arrays,):
            if isinstance(other, np.ndarray) and np.may_share_memory(out, other):
                raise ValueError(f"{out_name}: shares memory with {name}")
