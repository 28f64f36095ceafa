"""The scripts in examples/ run, short versions, and do what they claim."""

from __future__ import annotations

import json
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


def test_train_lm_head_loss_falls_and_tracks_torch(tmp_path) -> None:
    pytest.importorskip("torch")
    """20 steps of the word-level LM: the loss falls with the fused head, step for
    step with the materialised-logits head, and the fused head's peak memory is lower."""
    out = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_lm_head.py"), "--steps", "20", "--batch", "512",
         "--chunk-mib", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "flt.LinearCrossEntropyLoss" in proc.stdout
    runs = json.loads(out.read_text())
    fused, ref = runs["fused"]["losses"], runs["torch"]["losses"]
    assert sum(fused[-3:]) / 3 < fused[0] - 0.5, fused
    for a, b in zip(fused, ref):  # same model, data and float32 arithmetic up to sum order
        assert abs(a - b) <= 1e-3 * abs(b), (a, b)
    assert runs["fused"]["peak_extra_mib"] < runs["torch"]["peak_extra_mib"]
