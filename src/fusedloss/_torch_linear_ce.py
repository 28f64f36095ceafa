"""``flt.linear_cross_entropy`` and ``flt.LinearCrossEntropyLoss``: drop-ins for
torch 2.13's ``F.linear_cross_entropy`` and ``nn.LinearCrossEntropyLoss`` plus the
LLM options of cross-entropy, the logits computed one chunk of tokens at a time
(``_torch_linear_ce_ops``).

- ``options`` (torch's ``LinearCrossEntropyOptions``): torch's warning when its
  chunked path would ignore them, its errors, its loss dtype under autocast and its
  refusal of a second backward (``allow_retain_graph=False``); the chunk size torch
  resolves from ``batch_chunk_size`` / an explicit ``chunking_method`` (see
  ``_torch_linear_ce_options``). Otherwise a chunk holds ``chunk_bytes`` of logits
  (default 64 MiB). Unlike torch, ``options=None`` is chunked too.
- ``torch.compile(fullgraph=True)`` traces the custom ops
  ``fusedloss::linear_cross_entropy`` and ``fusedloss::linear_cross_entropy_backward``.

Falls back to torch (``F.linear`` then cross-entropy: torch's own
``F.linear_cross_entropy``, or ``flt.cross_entropy`` when an LLM option is set)
for what the kernel does not do: tensors not on the CPU, other dtypes, operands
of different dtypes, a target or class weight that requires grad, tensor
subclasses and torch.func transforms, empty extents, and bad shapes (torch raises
its own errors then).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _linear_ce_chunks as chunks
from . import _torch_ce_options as _ce_options
from . import _torch_linear_ce_options as _lce_options
from . import _torch_ops as _ops
from . import _validate as v
from ._torchscript import RefusesTorchScript, torch_twin
from ._torch_linear_ce_ops import (
    Config,
    LinearCrossEntropyFunction,
    forward_chunks,
    linear_cross_entropy_op,
)

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]

_DTYPES = _ops.SUPPORTED_DTYPES
_INT64_MIN, _INT64_MAX = _ops.INT64_MIN, _ops.INT64_MAX
_is_compiling = torch.compiler.is_compiling


# ------------------------------------------------------------- the public face


def _fusable(input, linear_weight, target, linear_bias, weight, ignore_index,
             label_smoothing, autocast) -> bool:
    """True when the chunked kernel computes what torch's reference path would."""
    tensors = (input, linear_weight, target)
    if not all(isinstance(t, Tensor) for t in tensors):
        return False
    if linear_bias is not None and not isinstance(linear_bias, Tensor):
        return False
    if _ops.torch_function_wanted(input, linear_weight, target, linear_bias, weight):
        return False
    if _ops.functorch_active():
        return False
    dtype = input.dtype
    if dtype not in _DTYPES or linear_weight.dtype is not dtype:
        return False
    if not all(t.is_cpu for t in tensors) or target.requires_grad:
        return False
    if input.dim() not in (1, 2) or linear_weight.dim() < 2:
        return False
    if input.numel() == 0 or linear_weight.numel() == 0:
        return False
    if input.shape[-1] != linear_weight.shape[-1]:
        return False
    logits_shape = (*input.shape[:-1], *linear_weight.shape[:-1])
    out_features = tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() == 1:
        return False
    if linear_bias is not None and not (
        linear_bias.dtype is dtype and linear_bias.is_cpu
        and tuple(linear_bias.shape) == tuple(linear_weight.shape[:-1])
    ):
        return False
    if target.dtype is torch.int64:
        if tuple(target.shape) != (*input.shape[:-1], *out_features):
            return False
    elif not (target.dtype is dtype and tuple(target.shape) == logits_shape
              and ignore_index is None):
        return False
    if weight is not None and not (
        isinstance(weight, Tensor) and weight.is_cpu
        and (weight.dtype is dtype or (weight.dtype in _DTYPES and autocast))
        and not weight.requires_grad and tuple(weight.shape) == (linear_weight.shape[0],)
    ):
        return False
    ignore = -100 if ignore_index is None else ignore_index
    return (type(ignore) is int and _INT64_MIN <= ignore <= _INT64_MAX
            and isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing <= 1.0)


def _check_like_torch(input, linear_weight, target, linear_bias, ignore_index) -> None:
    """F.linear_cross_entropy's own checks of the arguments, with its messages, for the
    reference path with LLM options (which composes F.linear and cross_entropy, whose
    errors would otherwise speak of matrix products and expanded sizes)."""
    if not (isinstance(input, Tensor) and isinstance(linear_weight, Tensor)
            and isinstance(target, Tensor)):
        return  # torch's own functions raise below
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError("expected linear_weight with dimensionality at least 2, got "
                           f"{linear_weight.dim()}")
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    logits_features = tuple(linear_weight.shape[:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != logits_features:
        raise RuntimeError(f"expected linear_bias shape {logits_features}, got "
                           f"{tuple(linear_bias.shape)}")
    if len(logits_features) > 1 and input.dim() == 1:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} "
            f"requires batched input, (N, {input.shape[-1]}), got unbatched input with shape "
            f"{tuple(input.shape)}")
    if ignore_index is not None and target.shape == (*input.shape[:-1], *logits_features):
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")


def _reference(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
               label_smoothing, options, extras: dict[str, Any]) -> Tensor:
    """torch's own computation (logits materialised), with the LLM options via
    ``flt.cross_entropy`` when any is set (``options`` then as on the fused path)."""
    if not extras:
        return F.linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=weight,
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            options=options,
        )
    from . import torch as flt

    _check_like_torch(input, linear_weight, target, linear_bias, ignore_index)
    out_features = tuple(linear_weight.shape[1:-1])
    rows = math.prod(linear_weight.shape[:-1])  # (not -1: in_features may be 0)
    logits = F.linear(input, linear_weight.reshape(rows, linear_weight.shape[-1]),
                      None if linear_bias is None else linear_bias.reshape(-1))
    logits = logits.reshape(*input.shape[:-1], linear_weight.shape[0], *out_features)
    _lce_options.resolve(options, input, linear_weight, target, linear_bias, reduction,
                         label_smoothing, stacklevel=4)  # (the warning: the caller's line)
    return flt.cross_entropy(
        logits, target, weight=weight, reduction=reduction,
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing, **extras,
    )


@torch_twin(F.linear_cross_entropy, neutral=("chunk_bytes",))
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    lse_square_scale: float = 0.0,
    num_items_in_batch: Any = None,
    chunk_bytes: int | None = None,
) -> Tensor:
    """Fused drop-in for torch 2.13's :func:`torch.nn.functional.linear_cross_entropy`
    (``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``) with the
    logits never materialised beyond one chunk of ``chunk_bytes`` (default 64 MiB),
    plus ``logit_scale``, ``softcap``, ``lse_square_scale`` and ``num_items_in_batch``
    as in :func:`fusedloss.torch.cross_entropy`. See the module docstring for
    ``options``, half precision and the fallbacks."""
    code = _ops.reduction_code(reduction)
    checked = _ce_options.check(logit_scale, softcap, lse_square_scale, num_items_in_batch,
                                False, reduction, _is_compiling())
    extras = {}  # for the reference path: the options as given, only those set
    if checked.extras is not None:
        extras = {"logit_scale": logit_scale, "softcap": softcap,
                  "lse_square_scale": lse_square_scale}
    if num_items_in_batch is not None:
        extras["num_items_in_batch"] = num_items_in_batch
    autocast = isinstance(input, Tensor) and _ops.float32_loss(input)
    if code is None or not _fusable(input, linear_weight, target, linear_bias, weight,
                                    ignore_index, label_smoothing, autocast):
        return _reference(input, linear_weight, target, linear_bias, weight, reduction,
                          ignore_index, label_smoothing, options, extras)
    chunked = _lce_options.resolve(options, input, linear_weight, target, linear_bias,
                                   reduction, label_smoothing, stacklevel=3)
    float32_loss = autocast and chunked is None  # torch's chunked op: the input's dtype
    scale, cap, zloss, _ = checked.extras or v.NO_CE_OPTIONS
    cfg = Config(
        code, -100 if ignore_index is None else ignore_index, float(label_smoothing),
        scale, cap, zloss, 0 if chunked is None else chunked.chunk_tokens,
        chunks.DEFAULT_CHUNK_BYTES if chunk_bytes is None else v.positive_integer(
            chunk_bytes, "chunk_bytes"),
    )
    num_items = None
    if checked.divisor is not None:  # a float, or (compiling) the caller's tensor
        num_items = torch.as_tensor(checked.divisor, dtype=torch.float64).detach().cpu()
    unbatched = input.dim() == 1
    if unbatched:  # one token: a batch of one, squeezed back
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and input.requires_grad, grad_on and linear_weight.requires_grad,
             grad_on and linear_bias is not None and linear_bias.requires_grad)
    if _is_compiling():
        loss = linear_cross_entropy_op(
            input, linear_weight, linear_bias, target.contiguous(), weight, num_items,
            cfg.reduction, cfg.ignore_index, cfg.label_smoothing, cfg.logit_scale, cfg.softcap,
            cfg.lse_square_scale, cfg.chunk_tokens, cfg.chunk_bytes, *needs, float32_loss,
        )[0]
    elif any(needs):
        loss = LinearCrossEntropyFunction.apply(
            input, linear_weight, linear_bias, target.contiguous(), weight, num_items, cfg,
            float32_loss, chunked is not None and chunked.backward_once,
            chunked is not None and chunked.backward_again)
    else:
        loss = forward_chunks(input, linear_weight, linear_bias, target.contiguous(), weight,
                              num_items, cfg, needs, float32_loss)[0]
    return loss.squeeze(0) if unbatched and code == chunks.NONE else loss


class LinearCrossEntropyLoss(RefusesTorchScript, nn.LinearCrossEntropyLoss):
    """Drop-in for torch 2.13's :class:`torch.nn.LinearCrossEntropyLoss` computed by
    :func:`fusedloss.torch.linear_cross_entropy`: same constructor (the head's
    weight is ``self.linear.weight``, ``(num_classes * prod(out_features),
    in_features)``) plus the LLM options and ``chunk_bytes``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options: Any = None,
        logit_scale: float = 1.0,
        softcap: float | None = None,
        lse_square_scale: float = 0.0,
        chunk_bytes: int | None = None,
    ) -> None:
        super().__init__(
            in_features, num_classes, out_features=out_features, bias=bias, device=device,
            dtype=dtype, reduction=reduction, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, options=options,
        )
        v.ce_options(logit_scale, softcap, lse_square_scale, None)  # bad values raise here
        self.logit_scale = logit_scale
        self.softcap = softcap
        self.lse_square_scale = lse_square_scale
        self.chunk_bytes = chunk_bytes

    def forward(self, input: Tensor, target: Tensor, num_items_in_batch: Any = None) -> Tensor:
        """``num_items_in_batch`` (reduction mean): the divisor instead of the
        batch's own count, for gradient accumulation over micro-batches."""
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = None
        if self.linear.bias is not None:
            linear_bias = self.linear.bias.reshape((self.num_classes, *self.out_features))
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options,
            logit_scale=self.logit_scale, softcap=self.softcap,
            lse_square_scale=self.lse_square_scale, num_items_in_batch=num_items_in_batch,
            chunk_bytes=self.chunk_bytes,
        )

    def extra_repr(self) -> str:
        extras = [f"{k}={getattr(self, k)}" for k, d in (
            ("logit_scale", 1.0), ("softcap", None), ("lse_square_scale", 0.0),
            ("chunk_bytes", None)) if getattr(self, k) != d]
        return ", ".join([super().extra_repr(), *extras])
