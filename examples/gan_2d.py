"""A GAN on 2-D data in NumPy only: a generator learns a ring of eight Gaussians.

Generator and discriminator are small MLPs with hand-written backprop
(numpy_mlp.py, beside this file); the losses and their gradients come from
fusedloss in one fused pass each:

    loss_d, grad_real, grad_fake = fl.gan_discriminator_loss_and_grad(r, f, kind)
    loss_g, grad_fake = fl.gan_generator_loss_and_grad(f, kind)

Run: ``python examples/gan_2d.py [--steps 300] [--kind non_saturating|least_squares|hinge]``.
Every few steps it prints the losses and two measures of the samples: their mean
distance from the ring, and how many of the eight modes hold at least 2% of them.
It exits with an error unless the distance from the ring has at least halved
since step 0 (the generator starts with every sample near the centre). The
short default run shows that; ``--steps 4000`` (under a minute) brings the
samples onto the ring, most modes covered.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fusedloss as fl
from numpy_mlp import MLP, Adam

MODES, RADIUS, SPREAD = 8, 2.0, 0.1
NOISE_DIM = 8
CENTRES = RADIUS * np.stack([np.cos(2 * np.pi * np.arange(MODES) / MODES),
                             np.sin(2 * np.pi * np.arange(MODES) / MODES)], axis=1)


def real_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = CENTRES[rng.integers(0, MODES, n)]
    return (centres + SPREAD * rng.standard_normal((n, 2))).astype(np.float32)


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, NOISE_DIM)).astype(np.float32)


def sample_quality(samples: np.ndarray) -> tuple[float, int]:
    """(mean |distance from the centre - radius|, modes holding >= 2% of the samples);
    a sample belongs to a mode when it lies within 4 standard deviations of it."""
    ring_error = float(np.abs(np.linalg.norm(samples, axis=1) - RADIUS).mean())
    dist = np.linalg.norm(samples[:, None, :] - CENTRES[None], axis=2)
    near = dist.min(axis=1) < 4 * SPREAD
    counts = np.bincount(dist.argmin(axis=1)[near], minlength=MODES)
    return ring_error, int((counts >= 0.02 * len(samples)).sum())


def train(steps: int, kind: str, batch: int = 256, seed: int = 0, log_every: int = 100) -> dict:
    """Returns the sample measures at step 0 and at the end."""
    rng = np.random.default_rng(seed)
    gen = MLP([NOISE_DIM, 128, 128, 2], rng)
    gen.params[-2] *= 0.1  # start with every sample near the centre, far from the ring
    disc = MLP([2, 128, 128, 1], rng)
    opt_g = Adam(gen.params, lr=1e-3, betas=(0.5, 0.999))
    opt_d = Adam(disc.params, lr=1e-3, betas=(0.5, 0.999))
    z_eval = noise(rng, 2000)  # the same noise for every measurement
    start = sample_quality(gen(z_eval))
    print(f"step     0  ring error {start[0]:.3f}  modes covered {start[1]}/{MODES}")
    grad = np.empty((2 * batch, 1), np.float32)  # the discriminator's gradient, both halves
    for step in range(1, steps + 1):
        # Discriminator: real and generated samples in one batch; each half's gradient
        # is written by fusedloss straight into its half of one buffer.
        fake = gen(noise(rng, batch))
        logits = disc(np.concatenate([real_batch(rng, batch), fake]))
        loss_d, _, _ = fl.gan_discriminator_loss_and_grad(
            logits[:batch], logits[batch:], kind, out_real=grad[:batch], out_fake=grad[batch:])
        disc.backward(grad)
        opt_d.step(disc.grads)
        # Generator: through the discriminator (its parameters untouched) into the generator.
        fake = gen(noise(rng, batch))
        loss_g, grad_fake = fl.gan_generator_loss_and_grad(disc(fake), kind, inplace=True)
        gen.backward(disc.backward(grad_fake))
        opt_g.step(gen.grads)
        if step % log_every == 0 or step == steps:
            err, modes = sample_quality(gen(z_eval))
            print(f"step {step:5d}  loss D {float(loss_d):7.4f}  loss G {float(loss_g):7.4f}  "
                  f"ring error {err:.3f}  modes covered {modes}/{MODES}")
    end = sample_quality(gen(z_eval))
    return {"ring_error": (start[0], end[0]), "modes": (start[1], end[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kind", default="non_saturating",
                        choices=["non_saturating", "least_squares", "hinge"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.steps, args.kind, seed=args.seed)
    (err0, err1), (modes0, modes1) = result["ring_error"], result["modes"]
    learned = err1 < 0.5 * err0
    print(f"ring error {err0:.3f} -> {err1:.3f}, modes covered {modes0} -> {modes1}: "
          + ("learned" if learned else "DID NOT LEARN"))
    return 0 if learned else 1


if __name__ == "__main__":
    sys.exit(main())
