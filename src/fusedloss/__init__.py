"""fusedloss: fused loss + gradient kernels for NumPy (and, optionally, PyTorch).

``import fusedloss as fl`` needs only NumPy; ``import fusedloss.torch`` adds the
autograd functions and nn.Module drop-ins.
"""

from ._openmp import load_runtime as _load_openmp_runtime

_load_openmp_runtime()  # before the compiled module: one OpenMP runtime beside torch's

from ._api import (  # noqa: E402
    cpu_capability,
    cross_entropy,
    cross_entropy_and_grad,
    get_num_threads,
    set_num_threads,
)
from ._elementwise import (
    binary_cross_entropy,
    binary_cross_entropy_and_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_and_grad,
    huber_loss,
    huber_loss_and_grad,
    kl_div,
    kl_div_and_grad,
    l1_loss,
    l1_loss_and_grad,
    mse_loss,
    mse_loss_and_grad,
    smooth_l1_loss,
    smooth_l1_loss_and_grad,
)
from ._class_losses import (
    multi_margin_loss,
    multi_margin_loss_and_grad,
    nll_loss,
    nll_loss_and_grad,
)
from ._gan import (
    gan_discriminator_loss,
    gan_discriminator_loss_and_grad,
    gan_generator_loss,
    gan_generator_loss_and_grad,
)
from ._kl_div import kl_div_with_logits, kl_div_with_logits_and_grad
from ._linear_ce import linear_cross_entropy, linear_cross_entropy_and_grad

from ._threadpoolctl import register_on_import as _register_with_threadpoolctl  # noqa: E402

_register_with_threadpoolctl()

__version__ = "0.1.0"

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "cpu_capability",
    "cross_entropy",
    "cross_entropy_and_grad",
    "gan_discriminator_loss",
    "gan_discriminator_loss_and_grad",
    "gan_generator_loss",
    "gan_generator_loss_and_grad",
    "get_num_threads",
    "huber_loss",
    "huber_loss_and_grad",
    "kl_div",
    "kl_div_and_grad",
    "kl_div_with_logits",
    "kl_div_with_logits_and_grad",
    "l1_loss",
    "l1_loss_and_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "mse_loss",
    "mse_loss_and_grad",
    "multi_margin_loss",
    "multi_margin_loss_and_grad",
    "nll_loss",
    "nll_loss_and_grad",
    "set_num_threads",
    "smooth_l1_loss",
    "smooth_l1_loss_and_grad",
]
