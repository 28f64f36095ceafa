"""fusedloss: fused loss + gradient kernels for NumPy (and, optionally, PyTorch).

``import fusedloss as fl`` needs only NumPy; ``import fusedloss.torch`` adds the
autograd functions and nn.Module drop-ins.
"""

from ._api import (
    cpu_capability,
    cross_entropy,
    cross_entropy_and_grad,
    get_num_threads,
    l1_loss,
    l1_loss_and_grad,
    mse_loss,
    mse_loss_and_grad,
    set_num_threads,
)

__version__ = "0.1.0"

__all__ = [
    "cpu_capability",
    "cross_entropy",
    "cross_entropy_and_grad",
    "get_num_threads",
    "l1_loss",
    "l1_loss_and_grad",
    "mse_loss",
    "mse_loss_and_grad",
    "set_num_threads",
]
