"""A binary classifier in NumPy only: a small MLP learns the "two moons".

The model is an MLP with hand-written backprop (numpy_mlp.py, beside this file);
the loss and its gradient w.r.t. the logits come from fusedloss in one fused pass:

    loss, grad_logits = fl.binary_cross_entropy_with_logits_and_grad(logits, labels)

Run: ``python examples/binary_classifier.py [--steps 300]``. It prints the
training loss and the test accuracy every few steps, and exits with an error
unless the final test accuracy is above 0.9.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fusedloss as fl
from numpy_mlp import MLP, Adam


def two_moons(rng: np.random.Generator, n: int,
              noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """n points on two interleaved half circles (label 0: upper, 1: lower), with noise."""
    label = rng.integers(0, 2, n)
    angle = rng.uniform(0, np.pi, n)
    x = np.where(label == 0, np.cos(angle), 1 - np.cos(angle))
    y = np.where(label == 0, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32), label.astype(np.float32)


def accuracy(net: MLP, points: np.ndarray, labels: np.ndarray) -> float:
    return float(((net(points)[:, 0] > 0) == (labels > 0.5)).mean())


def train(steps: int, batch: int = 128, seed: int = 0, log_every: int = 50) -> tuple[float, float]:
    """Returns the test accuracy before and after training."""
    rng = np.random.default_rng(seed)
    train_x, train_y = two_moons(rng, 4000)
    test_x, test_y = two_moons(rng, 1000)
    net = MLP([2, 32, 32, 1], rng)
    opt = Adam(net.params, lr=1e-2)
    start = accuracy(net, test_x, test_y)
    print(f"step    0  test accuracy {start:.3f}")
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(train_x), batch)
        logits = net(train_x[idx])[:, 0]
        # mean over the batch; the gradient w.r.t. the logits overwrites them (inplace)
        loss, grad = fl.binary_cross_entropy_with_logits_and_grad(logits, train_y[idx],
                                                                  inplace=True)
        net.backward(grad[:, None])
        opt.step(net.grads)
        if step % log_every == 0 or step == steps:
            print(f"step {step:4d}  loss {float(loss):.4f}  "
                  f"test accuracy {accuracy(net, test_x, test_y):.3f}")
    return start, accuracy(net, test_x, test_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start, end = train(args.steps, seed=args.seed)
    ok = end > 0.9
    print(f"test accuracy {start:.3f} -> {end:.3f}: " + ("learned" if ok else "DID NOT LEARN"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
