"""Typed surface of the compiled module ``fusedloss._core``.

The bindings know buffers, not users: every array must already be
C-contiguous, of a supported dtype and of the documented shape (the Python
layer in ``_api.py`` guarantees that and produces the user-facing messages).
The bindings still re-check shapes and dtypes and raise ``ValueError`` /
``TypeError`` rather than touch memory they were not given. The GIL is released
while a kernel runs.

Storage dtypes: float32, float64, float16, and bfloat16 passed as a uint16
array together with ``bfloat16=True``. The *accumulation* dtype is float64 for
float64 input and float32 otherwise; ``weight``, ``grad_output`` and
``loss_out`` use the accumulation dtype.

Reductions are integers: 0 = none, 1 = mean, 2 = sum.
"""

import numpy as np
import numpy.typing as npt

def cross_entropy(
    input: npt.NDArray[np.generic],          # (outer, C, inner)
    target: npt.NDArray[np.generic],         # int64 (outer, inner) or probabilities shaped like input
    weight: npt.NDArray[np.floating] | None, # (C,) accumulation dtype
    ignore_index: int,
    label_smoothing: float,
    reduction: int,
    loss_out: npt.NDArray[np.floating] | None,     # (outer, inner); required for reduction none
    grad_input: npt.NDArray[np.generic] | None,    # like input; may be input itself; None = no gradient
    grad_output: npt.NDArray[np.floating] | None,  # (outer, inner), reduction none only
    grad_output_scalar: float = 1.0,
    bfloat16: bool = False,
    outer: int = -1,                         # with classes/inner: the geometry of any
    classes: int = -1,                       # C-contiguous input of outer*C*inner elements
    inner: int = -1,                         # (then only element counts are checked)
    logit_scale: float = 1.0,                # z = logit_scale * x (finite)
    softcap: float = 0.0,                    # then z = softcap * tanh(z / softcap); 0 = no cap
    lse_square_scale: float = 0.0,           # z-loss: + lse_square_scale * logsumexp(z)^2 per kept position
    lse_out: npt.NDArray[np.floating] | None = None,  # (outer, inner) accumulation dtype: logsumexp(z),
                                             # NaN where the target is ignored
) -> float:
    """Fused softmax cross-entropy (+ gradient) of the logits z = logit_scale * x
    (then capped), w.r.t. x. Returns the reduced loss (0.0 for reduction none).
    Raises IndexError naming ``target`` for an index outside [0, C) that is not
    ignore_index; nothing is written then."""

def cross_entropy_common(
    input: object, target: object, out: object, reduction: object, ignore_index: object,
    label_smoothing: object, want_grad: bool, /,
) -> tuple[np.generic, npt.NDArray[np.floating] | None] | None:
    """The common NumPy call (C-contiguous float32/float64 (N, C) logits, C > 0,
    C-contiguous int64 (N,) targets, reduction "mean" or "sum", an int ignore_index, a
    float label_smoothing in [0, 1], out None or a matching writeable array): (loss as a
    NumPy scalar of the logits' dtype, gradient or None); None for any other call."""

def elementwise_common(
    op: int, input: object, target: object, out: object, reduction: object, param: object,
    want_grad: bool, /,
) -> tuple[np.generic, npt.NDArray[np.floating] | None] | None:
    """The common NumPy call of an elementwise loss (C-contiguous float32/float64 input
    and target of one dtype and shape, reduction "mean" or "sum", a float param, out None
    or a matching writeable array sharing no memory with them): (loss as a NumPy scalar
    of the input's dtype, gradient or None); None for any other call, and for values
    outside the op's domain (the general route raises)."""

ELEMENTWISE_OPS: dict[str, int]  # kernel op name -> code (from FUSEDLOSS_ELEMENTWISE_OPS)

def elementwise(
    op: int,                                 # a value of ELEMENTWISE_OPS
    input: npt.NDArray[np.generic],          # n elements (complex: L1 only)
    target: npt.NDArray[np.generic] | None,  # n elements, or None: every target is target_scalar
    reduction: int,
    loss_out: npt.NDArray[np.floating] | None,     # n elements; required for reduction none
    grad_input: npt.NDArray[np.generic] | None,    # like input; may be input itself
    grad_output: npt.NDArray[np.floating] | None,  # n elements, reduction none only
    grad_output_scalar: float = 1.0,
    bfloat16: bool = False,
    # The callers pass the rest by position too: pybind11 matches keywords by name, slowly.
    target_scalar: float = 0.0,
    param: float = 0.0,                      # delta (Huber), beta (SmoothL1)
    scale: float = 1.0,                      # multiplies the loss and its gradients
    weight: npt.NDArray[np.floating] | None = None,      # weight[(i // repeat) % period]
    weight_period: int = 1,
    weight_repeat: int = 1,
    pos_weight: npt.NDArray[np.floating] | None = None,  # likewise (BCE with logits)
    pos_weight_period: int = 1,
    pos_weight_repeat: int = 1,
    mean_denominator: float = 0.0,           # mean divides by this (the count when <= 0)
    grad_target: npt.NDArray[np.generic] | None = None,  # receives d loss / d target
) -> float:
    """An elementwise loss with its gradients in one pass. Raises ValueError naming
    ``input`` or ``target`` for values outside the op's domain (BCE: [0, 1])."""

def nll(
    input: npt.NDArray[np.generic],          # (outer, C, inner) log-probabilities
    target: npt.NDArray[np.int64],           # (outer, inner) class indices
    weight: npt.NDArray[np.floating] | None, # (C,) accumulation dtype
    ignore_index: int,
    reduction: int,
    loss_out: npt.NDArray[np.floating] | None,     # (outer, inner); required for reduction none
    grad_input: npt.NDArray[np.generic] | None,    # like input; may be input itself
    grad_output: npt.NDArray[np.floating] | None,  # (outer, inner), reduction none only
    grad_output_scalar: float = 1.0,
    bfloat16: bool = False,
    outer: int = -1,                         # geometry as for cross_entropy
    classes: int = -1,
    inner: int = -1,
) -> float:
    """Negative log-likelihood (+ gradient). Raises IndexError naming ``target`` for an
    index outside [0, C) that is not ignore_index; nothing is written then."""

def multi_margin(
    input: npt.NDArray[np.generic],          # (N, C)
    target: npt.NDArray[np.int64],           # N class indices
    weight: npt.NDArray[np.floating] | None, # (C,) accumulation dtype
    p: int,                                  # 1 or 2
    margin: float,
    reduction: int,
    loss_out: npt.NDArray[np.floating] | None,     # N elements; required for reduction none
    grad_input: npt.NDArray[np.generic] | None,    # like input; may be input itself
    grad_output: npt.NDArray[np.floating] | None,  # N elements, reduction none only
    grad_output_scalar: float = 1.0,
    bfloat16: bool = False,
) -> float:
    """Multi-class margin loss (+ gradient). Raises IndexError naming ``target`` for an
    index outside [0, C); nothing is written then."""

def kl_div_with_logits(
    input: npt.NDArray[np.generic],          # (rows, classes) student logits
    target: npt.NDArray[np.generic],         # (rows, classes) teacher logits, input's dtype
    temperature: float,                      # finite, > 0
    reduction: int,                          # 1 (mean) divides by rows: torch's "batchmean"
    loss_out: npt.NDArray[np.floating] | None,     # (rows,); required for reduction none
    grad_input: npt.NDArray[np.generic] | None,    # like input; may be input itself
    grad_output: npt.NDArray[np.floating] | None,  # (rows,), reduction none only
    grad_output_scalar: float = 1.0,
    bfloat16: bool = False,
) -> float:
    """T^2 * KL(softmax(target / T) || softmax(input / T)) per row, reduced, and its
    gradient T * (softmax(input / T) - softmax(target / T)) w.r.t. input."""

def get_num_threads() -> int: ...
def set_num_threads(threads: int) -> None: ...
def cpu_capability() -> str: ...
def supported_capabilities() -> list[str]: ...
def set_capability(name: str) -> None:
    """Force a compiled path (tests). ValueError if unknown or unsupported."""
def elementwise_math(op: str, values: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """The kernels' own vector exp ('exp'), log ('log') or tanh ('tanh') on the active path, elementwise
    over a C-contiguous float32/float64 array, or a float32-only log1p polynomial ('log1p_unit' on
    [0, 1], 'log1p_neg_half' on [-0.5, 0]); tests bound their error."""
