"""The NumPy-level API: torch.nn.functional semantics over NumPy arrays.

Each public function validates and normalises its arguments (``_validate``),
makes one call into the compiled kernels (``_core``), and shapes the result.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import _core
from . import _validate as v

__all__ = [
    "cross_entropy",
    "cross_entropy_and_grad",
    "get_num_threads",
    "set_num_threads",
    "cpu_capability",
]

_INT64 = np.dtype(np.int64)
_F32 = v.F32
_F64 = v.F64
_REDUCTIONS = v.REDUCTIONS
_MAX_THREADS = 4096  # OpenMP takes an int; far beyond any machine's cores


def _input(input: Any, allow_complex: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the caller's array, the array the kernel reads: itself or a C-contiguous
    float copy). Checks the common case itself before the general validation:
    that saves ~0.2 us of a ~3 us call at 64 x 10."""
    if type(input) is np.ndarray:
        dtype = input.dtype
        if (dtype is _F32 or dtype is _F64) and input.flags.c_contiguous:
            return input, input
    original = v.array(input, "input")
    return original, v.float_array(original, "input", allow_complex)


def _class_index_target(target: np.ndarray, loss_shape: tuple[int, ...]) -> np.ndarray:
    if loss_shape == () and target.shape == (1,):  # one unbatched sample: torch takes both
        target = target.reshape(())
    v.same_shape(target, loss_shape, "target", "class indices: the input's shape without dim C")
    if target.dtype.kind == "u" and target.size and target.max() > np.iinfo(np.int64).max:
        raise IndexError("target: class index above 2**63 - 1 is out of range")
    return np.asarray(target, dtype=np.int64, order="C")


def _cross_entropy_target(
    target: Any, x: np.ndarray, loss_shape: tuple[int, ...]
) -> np.ndarray:
    """Class indices as C-contiguous int64, or probabilities as C-contiguous x.dtype."""
    t = v.array(target, "target")
    kind = t.dtype.kind
    if kind in "iu":
        return _class_index_target(t, loss_shape)
    if kind == "f":
        v.same_shape(t, x.shape, "target", "class probabilities: the input's shape")
        return np.asarray(t, dtype=x.dtype, order="C")
    raise TypeError(
        "target: expected integer class indices or floating class probabilities, "
        f"got dtype {t.dtype}"
    )


def _plain_cross_entropy(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    want_grad: bool,
    grad_output: Any,
    out: Any,
    inplace: Any,
) -> tuple[Any, np.ndarray | None] | None:
    """The common call, recognised and run by the binding (``_core.cross_entropy_common``:
    C-contiguous float32/float64 (N, C) logits, C-contiguous int64 (N,) targets, mean or
    sum, out= None or a matching C-contiguous writeable array), or None.

    No weight, grad_output or inplace, checked here. _cross_entropy would make the same
    kernel call; at 64 x 10 its general checks cost more than the kernel.
    """
    if weight is not None or grad_output is not None or inplace is not False:
        return None
    return _core.cross_entropy_common(  # type: ignore[no-any-return]
        input, target, out, reduction, ignore_index, label_smoothing, want_grad
    )


def _cross_entropy(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    want_grad: bool,
    grad_output: Any = None,
    out: Any = None,
    inplace: Any = False,
    options: v.CEOptions = v.NO_CE_OPTIONS,
    lse_out: Any = None,
) -> tuple[Any, np.ndarray | None]:
    # The common case (contiguous float32/float64, int64 targets, default
    # options) takes only identity checks here: at 64 x 10 the Python layer
    # costs more than the kernel, so every attribute read counts.
    original, x = _input(input, False)
    dtype = x.dtype
    outer, classes, inner, loss_shape = v.class_geometry(x.shape)
    if classes == 0 and outer * inner > 0:
        raise ValueError("input: the class dimension is empty")

    red = v.known_reduction(reduction)
    if red is None:
        red = v.reduction_code(reduction)
    if type(label_smoothing) is not float or not 0.0 <= label_smoothing <= 1.0:
        label_smoothing = v.label_smoothing_value(label_smoothing)
    if type(ignore_index) is not int or not -(2**63) <= ignore_index < 2**63:
        ignore_index = v.integer_value(ignore_index, "ignore_index")
    accum = v.accumulation_dtype(dtype)

    t = target
    if not (
        type(t) is np.ndarray
        and t.dtype is _INT64
        and t.shape == loss_shape
        and t.flags.c_contiguous
    ):
        t = _cross_entropy_target(target, x, loss_shape)
        if t.dtype is not _INT64:
            v.no_class_to_ignore(ignore_index)

    w = v.class_weight(weight, classes, accum)

    def kernel(loss_buf: Any, grad_buf: Any, go: Any, go_scalar: float) -> float:
        if options is v.NO_CE_OPTIONS and lse_out is None:
            return _core.cross_entropy(
                x, t, w, ignore_index, label_smoothing, red, loss_buf, grad_buf, go, go_scalar,
                False, outer, classes, inner,
            )
        operands = {"input": original, "target": target, "weight": w, "grad_output": go, "out": out}
        return _kernel_with_options(
            x, t, w, ignore_index, label_smoothing, red, loss_buf, grad_buf, go, go_scalar,
            (outer, classes, inner), loss_shape, options, lse_out, operands,
        )

    return _fused_call(x, original, red, loss_shape, want_grad, grad_output, out, inplace,
                       {"target": (t, target), "weight": (w, weight)}, kernel)


def _kernel_with_options(
    x: np.ndarray,
    t: np.ndarray,
    w: np.ndarray | None,
    ignore_index: int,
    label_smoothing: float,
    red: int,
    loss_buf: np.ndarray | None,
    grad_buf: np.ndarray | None,
    go: np.ndarray | None,
    go_scalar: float,
    geometry: tuple[int, int, int],
    loss_shape: tuple[int, ...],
    options: v.CEOptions,
    lse_out: Any,
    operands: dict[str, Any],
) -> float:
    """The kernel call with the LLM options: num_items_in_batch turns the mean into
    a sum divided by it (loss and gradient); lse_out is filled (through a buffer of
    the accumulation dtype when it is not one)."""
    v.check_num_items(options, red)
    divisor = options.num_items_in_batch
    if divisor is not None:
        red = _REDUCTIONS["sum"]
        go_scalar /= divisor
    lse_buf = lse_copy = None
    if lse_out is not None:
        accum = v.accumulation_dtype(x.dtype)
        lse_buf, lse_copy = v.lse_destination(lse_out, loss_shape, accum, operands)
    total = _core.cross_entropy(
        x, t, w, ignore_index, label_smoothing, red, loss_buf, grad_buf, go, go_scalar, False,
        *geometry, logit_scale=options.logit_scale, softcap=options.softcap,
        lse_square_scale=options.lse_square_scale, lse_out=lse_buf,
    )
    if lse_copy is not None:
        with np.errstate(over="ignore"):  # float16 lse_out: inf past its range, as a cast
            lse_copy[...] = lse_buf
    return total if divisor is None else total / divisor


def _gradient_destination(
    x: np.ndarray,
    original: np.ndarray,
    red: int,
    loss_shape: tuple[int, ...],
    accum: np.dtype,
    grad_output: Any,
    out: Any,
    inplace: Any,
    operands: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """(kernel gradient buffer, caller array to copy it into, grad_output array, scalar).
    ``operands``: name -> the arrays ``out`` must not overlap (the kernel's and the
    caller's, when the kernel reads a copy)."""
    go, go_scalar = v.grad_output_value(grad_output, red, loss_shape, accum)
    grad_buf, copy_back = v.gradient_buffer(x, original, out, inplace)
    if out is not None and (copy_back is not None or x is not original):
        # The binding rejects aliasing among the buffers it is given; an out= it
        # only receives by copy-back, or the caller's input behind a copy, it never sees.
        v.check_no_overlap(out, original, {**operands, "grad_output": go})
    return grad_buf, copy_back, go, go_scalar


def _narrow_scalar(dtype: np.dtype, total: float) -> Any:
    """The loss in the input's dtype; a float16 overflow is inf, silently, as in torch."""
    if dtype.itemsize >= 4:
        return dtype.type(total)
    with np.errstate(over="ignore"):
        return dtype.type(total)


def _shape_loss(loss_buf: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The per-element loss in the input's (real) dtype (float16: overflow is inf)."""
    result_dtype = v.real_dtype(dtype)
    if loss_buf.dtype == result_dtype:
        return loss_buf
    with np.errstate(over="ignore"):
        return loss_buf.astype(result_dtype)


def _finish_grad(
    grad_buf: np.ndarray,
    copy_back: np.ndarray | None,
    original: np.ndarray,
    out: Any,
    inplace: Any,
) -> np.ndarray:
    if copy_back is not None:
        copy_back[...] = grad_buf.reshape(copy_back.shape)
    if inplace:
        return original
    if out is not None:
        return out
    return grad_buf  # shaped like x, which is shaped like original


def _fused_call(
    x: np.ndarray,
    original: np.ndarray,
    red: int,
    loss_shape: tuple[int, ...],
    want_grad: bool,
    grad_output: Any,
    out: Any,
    inplace: Any,
    operands: dict[str, Any],
    kernel: Callable[[Any, Any, Any, float], float],
) -> tuple[Any, np.ndarray | None]:
    """One fused kernel call with its buffers, results shaped and typed as torch's.

    ``kernel(loss_buf, grad_buf, go, go_scalar)`` runs the kernel and returns its
    reduced total: ``loss_buf`` (accumulation dtype, ``loss_shape``) for reduction
    none, else None; ``grad_buf`` and ``go`` from :func:`_gradient_destination`
    (``operands``: the other inputs ``out`` must not overlap), None without the
    gradient. The loss is a scalar of x's real dtype, or an array of x's dtype."""
    dtype = x.dtype
    accum = v.accumulation_dtype(dtype)
    loss_buf = np.empty(loss_shape, dtype=accum) if red == 0 else None
    grad_buf = copy_back = go = None
    go_scalar = 1.0
    if want_grad:
        grad_buf, copy_back, go, go_scalar = _gradient_destination(
            x, original, red, loss_shape, accum, grad_output, out, inplace, operands
        )
    total = kernel(loss_buf, grad_buf, go, go_scalar)
    if loss_buf is None:
        loss = _narrow_scalar(v.real_dtype(dtype), total)
    else:
        loss = _shape_loss(loss_buf, dtype)
    if grad_buf is None:
        return loss, None
    return loss, _finish_grad(grad_buf, copy_back, original, out, inplace)


# Defaults of the LLM options, by identity: a call that leaves them all out
# costs five `is` tests, not a validation.
_NO_SCALE = 1.0
_NO_ZLOSS = 0.0


def _with_options(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    want_grad: bool,
    grad_output: Any,
    out: Any,
    inplace: Any,
    logit_scale: Any,
    softcap: Any,
    lse_square_scale: Any,
    num_items_in_batch: Any,
    lse_out: Any,
) -> tuple[Any, np.ndarray | None]:
    """A call that passes any LLM option: checked, then the plain route still
    serves it when the values change nothing (logit_scale=1, ...)."""
    options = v.ce_options(logit_scale, softcap, lse_square_scale, num_items_in_batch)
    if options == v.NO_CE_OPTIONS and lse_out is None:
        plain = _plain_cross_entropy(
            input, target, weight, ignore_index, reduction, label_smoothing, want_grad,
            grad_output, out, inplace,
        )
        if plain is not None:
            return plain
        options = v.NO_CE_OPTIONS
    return _cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, want_grad, grad_output,
        out, inplace, options, lse_out,
    )


def cross_entropy(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    logit_scale: float = _NO_SCALE,
    softcap: float | None = None,
    lse_square_scale: float = _NO_ZLOSS,
    num_items_in_batch: float | None = None,
    lse_out: np.ndarray | None = None,
) -> Any:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    input: (C,), (N, C) or (N, C, d1, ..., dk) logits, a float32, float64 or
    float16 array (float16 is accumulated in float32; any strides or byte order).
    target: integer class indices shaped like input without C, or class
    probabilities shaped like input. Returns a scalar of input's dtype for
    mean/sum, or the per-element loss (input's dtype) for reduction="none".

    LLM options (keywords; the defaults change nothing), all fused into the one pass:

    - ``logit_scale``: the softmax runs on ``z = logit_scale * input`` (finite, any sign);
    - ``softcap``: then ``z = softcap * tanh(z / softcap)`` (Gemma-2 capping; None or > 0,
      with ``logit_scale / softcap`` within float32's range);
    - ``lse_square_scale``: z-loss (PaLM): each position that is not ignored adds
      ``lse_square_scale * logsumexp(z)**2`` to its own loss, not multiplied by ``weight``.
      It is part of the per-position loss: ``reduction="none"`` shows it, "sum" adds it,
      "mean" divides the total by the usual denominator (the count, or the sum of the
      targets' weights);
    - ``num_items_in_batch``: with ``reduction="mean"``, the summed loss is divided by
      this number instead of the batch's own denominator (gradient accumulation over
      micro-batches: 0 when every target is ignored); any other reduction raises ValueError;
    - ``lse_out``: an array shaped like the unreduced loss that receives ``logsumexp(z)``
      per position, NaN where the target is ignored (computed in the same pass).
    """
    if not (logit_scale is _NO_SCALE and lse_square_scale is _NO_ZLOSS
            and softcap is None and num_items_in_batch is None and lse_out is None):
        return _with_options(
            input, target, weight, ignore_index, reduction, label_smoothing, False, None, None,
            False, logit_scale, softcap, lse_square_scale, num_items_in_batch, lse_out,
        )[0]
    plain = _plain_cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, False, None, None, False
    )
    if plain is not None:
        return plain[0]
    loss, _ = _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, False)
    return loss


def cross_entropy_and_grad(
    input: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_output: Any = None,
    out: np.ndarray | None = None,
    inplace: bool = False,
    *,
    logit_scale: float = _NO_SCALE,
    softcap: float | None = None,
    lse_square_scale: float = _NO_ZLOSS,
    num_items_in_batch: float | None = None,
    lse_out: np.ndarray | None = None,
) -> tuple[Any, np.ndarray]:
    """Cross-entropy and its gradient w.r.t. ``input``, in one fused pass.

    The gradient is that of ``sum(grad_output * loss)`` (grad_output defaults
    to 1 and has the loss's shape), in input's dtype (float32, float64 or
    float16, as :func:`cross_entropy`). ``out=`` receives the gradient;
    ``inplace=True`` overwrites ``input`` with it (no extra memory). The LLM
    options are those of :func:`cross_entropy`; the gradient is w.r.t. ``input``
    (through the scale and the cap), z-loss's included.
    """
    if not (logit_scale is _NO_SCALE and lse_square_scale is _NO_ZLOSS
            and softcap is None and num_items_in_batch is None and lse_out is None):
        return _with_options(  # type: ignore[return-value]
            input, target, weight, ignore_index, reduction, label_smoothing, True, grad_output,
            out, inplace, logit_scale, softcap, lse_square_scale, num_items_in_batch, lse_out,
        )
    result = _plain_cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, True, grad_output, out,
        inplace,
    )
    if result is None:
        result = _cross_entropy(
            input, target, weight, ignore_index, reduction, label_smoothing, True,
            grad_output, out, inplace,
        )
    assert result[1] is not None
    return result  # type: ignore[return-value]


def get_num_threads() -> int:
    """Threads the kernels use (defaults to OpenMP's, i.e. OMP_NUM_THREADS or the cores)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the threads the kernels use (independent of torch.set_num_threads;
    threadpoolctl's ``threadpool_limits`` sets and restores it too)."""
    threads = v.positive_integer(n, "n")
    if threads > _MAX_THREADS:
        raise ValueError(f"n: expected at most {_MAX_THREADS} threads, got {threads}")
    _core.set_num_threads(threads)


def cpu_capability() -> str:
    """The instruction set the kernels run with: 'baseline', 'avx2' or 'avx512'."""
    return _core.cpu_capability()
