"""torch 2.13's ``LinearCrossEntropyOptions`` as ``flt.linear_cross_entropy`` takes
them: what torch's ``F.linear_cross_entropy`` does with ``options`` that a caller can
observe, whichever way the loss is computed here.

- When torch's chunked path cannot take them (K-dimensional weight, label smoothing,
  probability targets, a reduction it lacks), torch warns that they are ignored and
  computes its reference path: the same warning here.
- Otherwise torch resolves them (``LinearCrossEntropyOptions._adjust``), which raises
  its ValueError for a ``batch_chunk_size`` that disagrees with ``chunking_method``,
  and an AttributeError for something that is not options (a TypeError here, naming
  ``options``). Its chunked op then returns the loss in the input's dtype even under
  autocast, and, with ``allow_retain_graph=False`` and reduction mean / sum, consumes
  its saved gradients: a second backward raises; with ``allow_retain_graph=True`` it
  keeps them, and every further backward (no ``retain_graph`` needed) adds them again.
- The chunk size torch resolves is the one used here, except under
  ``chunking_method="auto"`` without ``batch_chunk_size`` (torch's per-device pick),
  where ``chunk_bytes`` decides. ``acc_policy`` and ``acc_dtype`` change nothing: half
  input is always computed in float32 and the weight's gradient accumulated in float32
  (an ``acc_dtype`` torch refuses for the input's dtype raises its RuntimeError).
- Under ``torch.compile`` torch's warnings are not given (a warning breaks the graph;
  torch's own call fails under ``fullgraph=True``) and a second backward works, as
  torch's does there (it forces ``allow_retain_graph=True``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Chunked:
    """What torch's chunked path makes of the options."""

    chunk_tokens: int  # tokens per chunk; 0: from chunk_bytes
    backward_once: bool  # a second backward through the graph raises, as torch's
    backward_again: bool  # a second backward works without retain_graph, as torch's


def _torch_ignores(linear_weight: Tensor, target: Tensor, reduction: str,
                   label_smoothing: float) -> bool:
    """torch's condition for ignoring ``options`` (under jit tracing torch's own
    function runs: see ``torch_twin``)."""
    return bool(linear_weight.shape[1:-1] or reduction not in ("mean", "sum", "none")
                or label_smoothing != 0.0 or target.dtype != torch.int64)


def resolve(options: Any, input: Tensor, linear_weight: Tensor, target: Tensor,
            linear_bias: Tensor | None, reduction: str, label_smoothing: float,
            stacklevel: int) -> Chunked | None:
    """None for no options or options torch would ignore (then with torch's warning,
    ``stacklevel`` counted from the caller); else what its chunked path would do."""
    if options is None:
        return None
    if _torch_ignores(linear_weight, target, reduction, label_smoothing):
        if torch.compiler.is_compiling():
            return None  # a warning would break the graph (fullgraph: an error, as torch's)
        out_features = tuple(linear_weight.shape[1:-1])
        bias_shape = None if linear_bias is None else tuple(linear_bias.shape)
        warnings.warn(  # torch 2.13's words
            "linear_cross_entropy: ``options`` ignored; chunked path needs "
            "reduction in {'mean','sum','none'}, label_smoothing == 0, target.dtype"
            " == int64, out_features == (). Got "
            f"reduction={reduction!r}, label_smoothing={label_smoothing}, "
            f"target.dtype={target.dtype}, out_features={out_features}"
            f", tracing=False, linear_bias.shape={bias_shape}.",
            UserWarning, stacklevel=stacklevel + 1,
        )
        return None
    if not isinstance(options, nn.LinearCrossEntropyOptions):
        raise TypeError(
            "linear_cross_entropy: options must be a torch.nn.LinearCrossEntropyOptions "
            f"or None, got {type(options).__name__}"
        )
    chunk_tokens = 0
    if options.chunking_method != "auto" or options.batch_chunk_size is not None:
        chunk_tokens = options._adjust(  # torch's own resolution (and errors)
            num_batches=input.shape[0] if input.dim() == 2 else 1,
            in_features=input.shape[-1], num_classes=linear_weight.shape[0],
            dtype=input.dtype, device=input.device,
        ).batch_chunk_size
    # (else torch's per-device pick, which cannot fail: chunk_bytes decides here)
    acc = options.acc_dtype
    if acc is not None and acc != input.dtype and not (
            input.dtype in (torch.float16, torch.bfloat16) and acc == torch.float32):
        raise RuntimeError(  # torch 2.13's check (its op's, after _adjust) and words
            "linear_cross_entropy supports float32 acc_dtype with float16/bfloat16 inputs, "
            f"but got {acc} acc_dtype and {input.dtype} inputs.")
    mean_or_sum = reduction != "none"
    return Chunked(chunk_tokens, mean_or_sum and not options.allow_retain_graph,
                   mean_or_sum and options.allow_retain_graph)
