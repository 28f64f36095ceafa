"""PyTorch layer of fusedloss: autograd-aware drop-ins for ``torch.nn.functional``
losses and their ``nn.Module`` classes, backed by the fused CPU kernels.

``import fusedloss.torch as flt``::

    loss = flt.cross_entropy(logits, target, label_smoothing=0.1)
    criterion = flt.CrossEntropyLoss(weight=w, ignore_index=0)

Same signatures and results as their ``torch.nn.functional`` namesakes
(``cross_entropy`` here; ``mse_loss``, ``l1_loss``, ``huber_loss``,
``smooth_l1_loss``, ``binary_cross_entropy``, ``binary_cross_entropy_with_logits``
and ``kl_div`` in ``_torch_losses``; ``nll_loss`` and ``multi_margin_loss`` in
``_torch_class_losses``); the modules subclass the ``torch.nn`` classes of the
same names. Properties:

- Cross-entropy's gradient is computed in the forward pass by the fused kernel
  and only scaled in backward: forward + backward keeps one logits-sized buffer
  (the gradient) alive, where torch keeps log-softmax and temporaries (~3x).
- ``inplace_backward=True`` (cross-entropy) writes the gradient into the logits'
  own storage: no extra memory. The logits are then gone; autograd's version
  counter reports any op that saved them, and using them afterwards in a
  differentiable op raises in backward. A reshape of whole logits
  (``logits.view(-1, V)``) overwrites them; a view of part of a tensor gets its own
  gradient buffer instead. Logits that are leaves cannot be overwritten (torch's
  in-place rule); under ``torch.compile`` the flag is ignored.
- float16 / bfloat16 are read as they are and accumulated in float32; losses and
  gradients come back in the input's dtype.
- Registered as ``torch.library`` custom ops (``fusedloss::cross_entropy``,
  ``fusedloss::elementwise``, ``fusedloss::nll_loss``, ``fusedloss::multi_margin_loss``,
  ``fusedloss::kl_div_with_logits``): ``torch.compile(fullgraph=True)`` traces them.
- Cross-entropy takes the LLM options ``logit_scale``, ``softcap``,
  ``lse_square_scale`` (z-loss), ``num_items_in_batch`` and ``return_lse`` (see
  :func:`cross_entropy`); :func:`kl_div_with_logits` is the distillation loss on
  logits (see there).
- Double backward is not supported: differentiating a gradient raises.

Fallbacks to torch's own implementation (same result, no fusion): tensors not on
the CPU (CUDA, meta, ...), dtypes other than float32/float64/float16/bfloat16,
tensor subclasses with ``__torch_function__``, mismatched shapes or dtypes
(torch broadcasts, promotes or raises its own error), a ``weight`` that requires
grad (or, for the elementwise losses, of another dtype or not broadcasting to
the input), ``weight=`` for MSE/L1, and empty input (except the reduction of an
empty batch in :func:`multi_margin_loss`: 0 for the sum and NaN for the mean,
where torch 2.13's CPU kernel returns uninitialised memory). Non-contiguous
tensors are made contiguous. Bad arguments therefore raise torch's own exceptions.

Small cross-entropy problems (fewer than :data:`TORCH_KERNEL_BELOW` elements of
input, twice as many with a class weight, ``reduction="none"`` or other than
2-d input; without the LLM options or ``inplace_backward``) also go to torch in
eager mode: there the fixed cost of a Python autograd Function (about 30 us
forward + backward) outweighs the kernel, so torch's own kernel is the faster
one. Set it to 0 to run every problem on fusedloss's kernel.
"""

from __future__ import annotations

import torch

# The drop-ins follow torch 2.13 (F.linear_cross_entropy, nn.LinearCrossEntropyLoss and
# its options are new there): say so, rather than fail on a missing name further in.
_TORCH_NEEDED = "2.13"
if torch.__version__ < _TORCH_NEEDED:
    raise ImportError(f"fusedloss.torch needs torch {_TORCH_NEEDED} or newer (found {torch.__version__}); "
                      "pip install 'fusedloss[torch]' installs the tested release")

import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn
from torch.nn import _reduction as _Reduction

from . import _torch_ce_options as _options
from . import _torch_ops as _ops
from ._torchscript import RefusesTorchScript, torch_twin
from ._torch_kl import KLDivWithLogitsLoss, kl_div_with_logits
from ._torch_losses import (  # the elementwise losses
    BCELoss,
    BCEWithLogitsLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    SmoothL1Loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    huber_loss,
    kl_div,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
)
from ._torch_losses import __all__ as _elementwise_all
from ._torch_class_losses import MultiMarginLoss, NLLLoss, multi_margin_loss, nll_loss
from ._torch_class_losses import __all__ as _class_all
from ._torch_gan import gan_discriminator_loss, gan_generator_loss  # the GAN objective
from ._torch_linear_ce import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "KLDivWithLogitsLoss", "LinearCrossEntropyLoss", "cross_entropy",
           "gan_discriminator_loss", "gan_generator_loss", "kl_div_with_logits",
           "linear_cross_entropy", *_elementwise_all, *_class_all]

_DTYPES = _ops.SUPPORTED_DTYPES
_is_compiling = torch.compiler.is_compiling
_float32_loss = _ops.float32_loss
_functorch_active = _ops.functorch_active
_reduction_code = _ops.reduction_code
_INT64_MIN, _INT64_MAX = _ops.INT64_MIN, _ops.INT64_MAX
# Cross-entropy with fewer input elements than this runs on torch's own kernel in
# eager mode (module docstring); twice as many with a class weight, reduction
# "none" or other than 2-d input, whose calls cost more around the kernel.
# Measured crossovers, forward + backward, 2 threads: the common call about 25600
# elements on AMD Zen 3 (AVX2; 1.2x torch's time at 8192-12800) and 8192 on an
# Intel Xeon (AVX-512 and AVX2), the rest about 64000 on both.
TORCH_KERNEL_BELOW = 32768
_GENERAL_CALL_FACTOR = 2
# Defaults of cross-entropy's LLM options, tested by identity (see cross_entropy).
_NO_SCALE = 1.0
_NO_ZLOSS = 0.0


def _ce_fusable(input, target, weight, ignore_index, label_smoothing, autocast) -> bool:
    """True when the kernel computes exactly what F.cross_entropy would."""
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)):
        return False
    if _ops.torch_function_wanted(input, target, weight) or _functorch_active():
        return False
    if input.dtype not in _DTYPES or not (input.is_cpu and target.is_cpu):
        return False
    ndim = input.dim()
    if ndim == 0 or input.numel() == 0:
        return False
    shape = input.shape
    if target.dtype is torch.int64:
        if ndim == 1:
            if target.dim() != 0:
                return False
        elif target.shape != shape[:1] + shape[2:]:
            return False
    elif target.dtype is not input.dtype or target.shape != shape or not (
        type(ignore_index) is int and ignore_index < 0
    ):
        return False  # (torch refuses an ignore_index >= 0 with probability targets)
    if not _ops.class_weight_fusable(weight, input, shape[0 if ndim == 1 else 1], autocast):
        return False
    # An ignore_index outside int64 goes to torch, which raises its own error.
    return type(ignore_index) is int and _INT64_MIN <= ignore_index <= _INT64_MAX and (
        0.0 <= label_smoothing <= 1.0
    )


def _torch_kernel_faster(input: Tensor, weight, reduction, size_average, reduce) -> bool:
    """Whether eager cross-entropy of this size is faster on torch's own kernel
    (TORCH_KERNEL_BELOW): the common call (2-d input, no weight, mean or sum) pays
    off from fewer elements than the rest."""
    n = input.numel()
    if n < TORCH_KERNEL_BELOW:
        return True
    common = (weight is None and input.dim() == 2 and size_average is None and reduce is None
              and (reduction == "mean" or reduction == "sum"))
    return not common and n < TORCH_KERNEL_BELOW * _GENERAL_CALL_FACTOR


def _overwritable_whole(input: Tensor) -> Tensor | None:
    """The tensor ``inplace_backward`` overwrites and hands to autograd: ``input``
    itself, or, for a view, its base when the view is a plain reshape of all of it
    (``logits.view(-1, V)``, ``flatten``): autograd lets a Function that overwrites a
    view return nothing else, so the base is marked dirty instead, and the view's
    later uses still raise. None for a partial view: then the gradient gets its
    own buffer (same results, the logits stay intact). None too for a tensor with
    the negative bit set: the kernel reads a resolved copy of it (``_ops._array``),
    and its base holds the negated values."""
    if input.is_neg():
        return None
    if not input._is_view():
        return input
    base = input._base
    same_buffer = (
        base.dtype is input.dtype
        and base.numel() == input.numel()
        and base.data_ptr() == input.data_ptr()
        and base.is_contiguous()
    )
    return base if same_buffer else None


def _check_overwritable(input: Tensor) -> None:
    # Checked before the kernel overwrites anything: autograd would only
    # notice after forward, with the logits already gone.
    if input.is_leaf:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation "
            "(cross_entropy(..., inplace_backward=True) overwrites the logits with their "
            "gradient; pass logits computed by the model)"
        )
    if input._is_view() and input._base.is_leaf:
        raise RuntimeError(
            "a view of a leaf Variable that requires grad is being used in an in-place "
            "operation (cross_entropy(..., inplace_backward=True))"
        )


@torch_twin(F.cross_entropy)
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    inplace_backward: bool = False,
    logit_scale: float = _NO_SCALE,
    softcap: float | None = None,
    lse_square_scale: float = _NO_ZLOSS,
    num_items_in_batch: float | Tensor | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused drop-in for :func:`torch.nn.functional.cross_entropy`.

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; ``target`` int64
    class indices (input's shape without ``C``) or probabilities shaped like
    ``input``. Gradients flow to ``input`` and, for probability targets, to
    ``target``. With ``inplace_backward=True`` the gradient is written into the
    logits' storage (see the module docstring). Tensors not on the CPU and the
    other cases listed in the module docstring use torch's own implementation
    (for the options below: the same loss composed of torch ops).

    LLM options (keywords; the defaults change nothing), fused into the kernel:

    - ``logit_scale``: the softmax runs on ``z = logit_scale * input``;
    - ``softcap``: then ``z = softcap * tanh(z / softcap)`` (None or > 0, with
      ``logit_scale / softcap`` within float32's range);
    - ``lse_square_scale``: z-loss: each position that is not ignored adds
      ``lse_square_scale * logsumexp(z)**2`` to its own loss (not multiplied by
      ``weight``); "none" shows it, "mean" divides the total by the usual denominator;
    - ``num_items_in_batch``: with ``reduction="mean"``, the summed loss is divided by
      it instead (a number, or a one-element tensor as Hugging Face passes it; under
      ``torch.compile`` the tensor is not read by Python); other reductions raise;
    - ``return_lse=True``: returns ``(loss, lse)``, ``lse`` = ``logsumexp(z)`` per
      position (shaped like the unreduced loss, float32 for half input, NaN where the
      target is ignored), from the same pass and not differentiable.
    """
    if (type(input) is Tensor and not inplace_backward
            and _torch_kernel_faster(input, weight, reduction, size_average, reduce)
            and logit_scale is _NO_SCALE and lse_square_scale is _NO_ZLOSS and softcap is None
            and num_items_in_batch is None and return_lse is False and not _is_compiling()):
        # First, so that the hand-off costs a few checks (the fast path of the drop-in).
        return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                               label_smoothing)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if not (logit_scale is _NO_SCALE and lse_square_scale is _NO_ZLOSS and softcap is None
            and num_items_in_batch is None and return_lse is False):
        # (Under torch.compile a float may be symbolic, and the identity tests then
        # fail even for the defaults: the check sees the values.)
        options = _options.check(
            logit_scale, softcap, lse_square_scale, num_items_in_batch, return_lse, reduction,
            _is_compiling(),
        )
        if options.changes_something():
            return _options.cross_entropy(
                input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward,
                options,
            )
    return _plain_cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward
    )


def _plain_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                         inplace_backward):
    """cross_entropy without the LLM options (legacy arguments already resolved)."""
    code = _reduction_code(reduction)
    autocast = isinstance(input, Tensor) and _float32_loss(input)
    if code is None or not _ce_fusable(
        input, target, weight, ignore_index, label_smoothing, autocast
    ):
        return F.cross_entropy(
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )
    label_smoothing = float(label_smoothing)
    if _is_compiling():
        compute_grad = input.requires_grad and torch.is_grad_enabled()
        return _ops.cross_entropy_op(
            input.contiguous(), target.contiguous(), weight, code, ignore_index,
            label_smoothing, compute_grad, autocast,
        )[0]
    if not input.is_contiguous():
        input = input.contiguous()
    if not target.is_contiguous():
        target = target.contiguous()
    if not (torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)):
        return _ops.ce_kernel(
            input, target, weight, code, ignore_index, label_smoothing, None, autocast
        )
    if inplace_backward and input.requires_grad and not target.requires_grad:
        _check_overwritable(input)
        whole = _overwritable_whole(input)
        if whole is not None:
            return _ops.cross_entropy_apply(
                whole, target, weight, code, ignore_index, label_smoothing, True, autocast,
                input.shape, None, None,
            )[0]
    return _ops.cross_entropy_apply(
        input, target, weight, code, ignore_index, label_smoothing, False, autocast, None, None,
        None,
    )


class CrossEntropyLoss(RefusesTorchScript, nn.CrossEntropyLoss):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss` computed by
    :func:`fusedloss.torch.cross_entropy`; same constructor (deprecated
    ``size_average``/``reduce`` handled and warned about as torch does) plus
    ``inplace_backward`` and the LLM options ``logit_scale``, ``softcap``,
    ``lse_square_scale`` and ``num_items_in_batch`` (checked at construction;
    ``forward(..., num_items_in_batch=n)`` overrides the last one per call, as it
    changes from step to step)."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        inplace_backward: bool = False,
        logit_scale: float = _NO_SCALE,
        softcap: float | None = None,
        lse_square_scale: float = _NO_ZLOSS,
        num_items_in_batch: float | Tensor | None = None,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _options.check(
            logit_scale, softcap, lse_square_scale, num_items_in_batch, False, self.reduction,
            False,
        )
        self.inplace_backward = inplace_backward
        self.logit_scale = logit_scale
        self.softcap = softcap
        self.lse_square_scale = lse_square_scale
        self.num_items_in_batch = num_items_in_batch

    def forward(
        self, input: Tensor, target: Tensor, *, num_items_in_batch: float | Tensor | None = None
    ) -> Tensor:
        if num_items_in_batch is None:
            num_items_in_batch = self.num_items_in_batch
        return cross_entropy(  # type: ignore[return-value]
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
            inplace_backward=self.inplace_backward, logit_scale=self.logit_scale,
            softcap=self.softcap, lse_square_scale=self.lse_square_scale,
            num_items_in_batch=num_items_in_batch,
        )

    def extra_repr(self) -> str:
        given = {  # by value: an unpickled module holds equal floats, not the defaults
            "inplace_backward": self.inplace_backward is not False,
            "logit_scale": self.logit_scale != _NO_SCALE,
            "softcap": self.softcap is not None,
            "lse_square_scale": self.lse_square_scale != _NO_ZLOSS,
            "num_items_in_batch": self.num_items_in_batch is not None,
        }
        return ", ".join(f"{name}={getattr(self, name)!r}" for name, on in given.items() if on)
