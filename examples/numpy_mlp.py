"""A small multilayer perceptron and the Adam optimiser in NumPy, backpropagated by
hand: the models of the examples in this folder (no autograd, no torch).

    net = MLP([2, 64, 64, 1], rng)
    out = net(x)                # forward; keeps what backward needs
    grad_x = net.backward(g)    # g = d(loss)/d(out); fills net.grads
    opt = Adam(net.params, lr=1e-3)
    opt.step(net.grads)
"""

from __future__ import annotations

import numpy as np

LEAK = 0.2  # leaky ReLU slope: GAN discriminators and generators train better without dead units


class MLP:
    """Linear layers with leaky ReLU between them (none after the last)."""

    def __init__(self, sizes: list[int], rng: np.random.Generator, dtype=np.float32) -> None:
        self.params: list[np.ndarray] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            w = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)  # He initialisation
            self.params += [w.astype(dtype), np.zeros(n_out, dtype)]
        self.grads = [np.zeros_like(p) for p in self.params]
        self._inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._inputs = []
        layers = len(self.params) // 2
        for i in range(layers):
            self._inputs.append(x)
            x = x @ self.params[2 * i] + self.params[2 * i + 1]
            if i < layers - 1:
                x = np.where(x > 0, x, LEAK * x)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """d(loss)/d(input) of the last call, given d(loss)/d(output); the parameters'
        gradients go into ``self.grads``."""
        for i in reversed(range(len(self.params) // 2)):
            x = self._inputs[i]
            self.grads[2 * i] = x.T @ grad
            self.grads[2 * i + 1] = grad.sum(axis=0)
            grad = grad @ self.params[2 * i].T
            if i > 0:  # through the activation that produced x (x = act(pre), same sign)
                grad = np.where(x > 0, grad, LEAK * grad)
        return grad


class Adam:
    """Adam (Kingma & Ba), updating the parameter arrays in place."""

    def __init__(self, params: list[np.ndarray], lr: float, betas=(0.9, 0.999), eps=1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        lr = self.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr * m / (np.sqrt(v) + self.eps)).astype(p.dtype)
