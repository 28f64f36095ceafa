"""The scripts in examples/ run, short versions, and do what they claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, *args: str) -> str:
    """Runs ``examples/script`` as a user would; returns its output, failing on a
    non-zero exit (each script exits 1 when it did not learn)."""
    # The examples' matrices are tiny: on a busy machine BLAS threads that wait for
    # cores cost more than they save (300 GAN steps: 50 s against 4 s).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("kind", ["non_saturating", "least_squares", "hinge"])
def test_gan_2d_learns_the_ring(kind) -> None:
    """NumPy-only GAN trained with fl.gan_*_loss_and_grad: after 200 steps the samples'
    mean distance from the ring is less than half what it was at step 0."""
    out = run_example("gan_2d.py", "--steps", "200", "--kind", kind)
    assert out.rstrip().endswith("learned"), out
    assert "step   200" in out


def test_binary_classifier_accuracy_above_0_9() -> None:
    """NumPy MLP trained with fl.binary_cross_entropy_with_logits_and_grad on two moons."""
    out = run_example("binary_classifier.py", "--steps", "150")
    last = out.strip().splitlines()[-1]
    assert last.endswith("learned"), out
    assert float(last.split("->")[1].split(":")[0]) > 0.9
