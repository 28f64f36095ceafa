"""The linear + cross-entropy rows of ``python -m fusedloss bench`` run, at a small
shape, with their peak-memory subprocesses (timings are never asserted)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fusedloss._bench_linear_ce import LABELS, linear_ce_row, linear_ce_table  # noqa: E402


def test_linear_ce_row_measures_every_contender() -> None:
    row = linear_ce_row(torch, quick=True, budget_s=0.01)
    assert set(row.seconds) == set(LABELS)
    assert row.parity is not None and row.parity < 1e-5  # same loss as torch's
    peaks = row.extra["peak_bytes"]
    assert all(isinstance(peaks[name], int) for name in LABELS), peaks
    table = linear_ce_table(row)
    for label in LABELS.values():
        assert f"| {label} |" in table
    assert "n/a" not in table
