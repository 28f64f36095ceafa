"""Replay of the fuzz corpus: every file in tests/fuzz_corpus goes through the fuzz
target's own decoder and checks (fuzz/fuzz_bindings.py), without atheris, on the
compiled path the target picks for it (each one the CPU supports, in turn).

A finding (crash, an exception other than ValueError / TypeError / IndexError, a
modified argument, a result that differs from the float64 NumPy reference) fails the
test named after the file. Add a file here for every bug the fuzzer finds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import fusedloss as fl

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


def _load_target() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_bindings", ROOT / "fuzz" / "fuzz_bindings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_bindings", module)
    spec.loader.exec_module(module)
    return module


target = _load_target()
FILES = sorted(p for p in CORPUS.iterdir() if p.is_file()) if CORPUS.is_dir() else []


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = fl.get_num_threads()
    yield
    fl.set_num_threads(before)


def test_corpus_present() -> None:
    assert len(FILES) >= 20, f"tests/fuzz_corpus has only {len(FILES)} files"


@pytest.mark.parametrize("path", FILES, ids=[p.name[:16] for p in FILES])
def test_replay(path: Path) -> None:
    with np.errstate(all="ignore"):
        outcome = target.run_input(path.read_bytes())
    assert outcome in ("ok", "ValueError", "TypeError", "IndexError")


def test_decoder_is_deterministic() -> None:
    for path in FILES[:10]:
        a = target.decode(path.read_bytes()).describe()
        b = target.decode(path.read_bytes()).describe()
        assert a == b


def test_random_bytes_smoke() -> None:
    """A few hundred fresh inputs each run, beyond the corpus (seeded: reproducible)."""
    rng = np.random.default_rng(12345)
    outcomes: dict[str, int] = {}
    for _ in range(400):
        data = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        with np.errstate(all="ignore"):
            outcome = target.run_input(data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > 20, outcomes
