"""`python -m fusedloss bench --quick` runs and prints its table (timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys

from fusedloss._bench import HEADER


def test_bench_quick_runs_and_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusedloss", "bench", "--quick", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert HEADER in proc.stdout
    for row in ("| CE 64x10 |", "| BCE logits 1e3 |", "| NLL 256x100 |", "| MultiMargin 256x100 |",
                "| GAN D+G 2x", "| CE + scale, softcap, z-loss 64x1000 fwd+grad |",
                "| kl_div_with_logits 64x1000 fwd+grad |", "| linear CE "):
        assert row in proc.stdout, row
    assert "ISA path:" in proc.stdout
