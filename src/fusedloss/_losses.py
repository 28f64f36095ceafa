"""The list of losses, written once: the NumPy API, the torch layer, the tests,
the fuzz harness and the bench read their elementwise losses (and the GAN
objective's kinds) from here.

Each entry names the public function (``fl.NAME``, ``fl.NAME_and_grad``,
``flt.NAME``), the kernel op it runs (``_core.ELEMENTWISE_OPS``, generated from
the C++ list in ``csrc/fusedloss/kernels.h``), the ``nn.Module`` class, the
keyword options with sample values (the first one is torch's default), whether
torch differentiates the target, and what values its input and target take.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ElementwiseLoss(NamedTuple):
    name: str                    # fl.NAME / fl.NAME_and_grad / flt.NAME
    op: str                      # kernel op, a key of _core.ELEMENTWISE_OPS
    module: str                  # nn.Module class in torch.nn and fusedloss.torch
    options: dict[str, tuple[Any, ...]]  # keyword -> sample values, torch's default first
    target_grad: bool            # torch gives a gradient for the target
    input_kind: str              # "real", "probability" or "log_probability"
    target_kind: str             # "real", "probability", "binary" or "log_probability"
    reductions: tuple[str, ...] = ("none", "mean", "sum")
    complex_input: bool = False


ELEMENTWISE_LOSSES: tuple[ElementwiseLoss, ...] = (
    ElementwiseLoss("mse_loss", "mse", "MSELoss", {}, True, "real", "real", complex_input=False),
    ElementwiseLoss("l1_loss", "l1", "L1Loss", {}, True, "real", "real", complex_input=True),
    ElementwiseLoss("huber_loss", "huber", "HuberLoss", {"delta": (1.0, 0.5, 2.5)}, True,
                    "real", "real"),
    ElementwiseLoss("smooth_l1_loss", "smooth_l1", "SmoothL1Loss", {"beta": (1.0, 0.0, 0.3)},
                    True, "real", "real"),
    ElementwiseLoss("binary_cross_entropy", "binary_cross_entropy", "BCELoss", {}, True,
                    "probability", "probability"),
    ElementwiseLoss("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits",
                    "BCEWithLogitsLoss", {}, True, "real", "probability"),
    ElementwiseLoss("kl_div", "kl_div", "KLDivLoss", {"log_target": (False, True)}, True,
                    "log_probability", "probability",
                    reductions=("none", "mean", "sum", "batchmean")),
)

ELEMENTWISE_BY_NAME = {loss.name: loss for loss in ELEMENTWISE_LOSSES}


class GanTerm(NamedTuple):
    """One term of the GAN objective: ``scale * mean(op(logits, target))`` over one
    array of logits, ``target`` the same scalar for every element (DESIGN.md, Wave 2)."""
    op: str                      # kernel op, a key of _core.ELEMENTWISE_OPS
    target: float
    scale: float


# logistic(x, t) = softplus(-t x): -log s(x) for t = 1, -log(1 - s(x)) for t = -1.
_D_MINIMAX = (GanTerm("logistic", 1.0, 1.0), GanTerm("logistic", -1.0, 1.0))

# kind -> (term on the real logits, term on the fake logits); the loss is their sum.
GAN_DISCRIMINATOR_KINDS: dict[str, tuple[GanTerm, GanTerm]] = {
    # mean(-log s(r)) + mean(-log(1 - s(f)))
    "minimax": _D_MINIMAX,
    "non_saturating": _D_MINIMAX,  # the non-saturating GAN trains the same discriminator
    # 0.5 mean((r - 1)^2) + 0.5 mean(f^2)
    "least_squares": (GanTerm("mse", 1.0, 0.5), GanTerm("mse", 0.0, 0.5)),
    # mean(relu(1 - r)) + mean(relu(1 + f))
    "hinge": (GanTerm("hinge", 1.0, 1.0), GanTerm("hinge", -1.0, 1.0)),
    # mean(f) - mean(r)
    "wasserstein": (GanTerm("linear", -1.0, 1.0), GanTerm("linear", 1.0, 1.0)),
}

# kind -> the term on the fake logits.
GAN_GENERATOR_KINDS: dict[str, GanTerm] = {
    "non_saturating": GanTerm("logistic", 1.0, 1.0),  # mean(-log s(f))
    "minimax": GanTerm("logistic", -1.0, -1.0),       # mean(log(1 - s(f))) = -mean(softplus(f))
    "least_squares": GanTerm("mse", 1.0, 0.5),        # 0.5 mean((f - 1)^2)
    "hinge": GanTerm("linear", -1.0, 1.0),            # -mean(f)
    "wasserstein": GanTerm("linear", -1.0, 1.0),      # -mean(f)
}
