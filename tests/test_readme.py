"""Every ```python block of README.md runs as written, each in a namespace of its own
(a block defines everything it uses). Blocks that import torch are skipped without it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    """(id naming the block's first line in README.md, source) for each block; the
    source is padded with blank lines so that tracebacks give README.md's line numbers."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for m in BLOCK.finditer(text):
        first_line = text.count("\n", 0, m.start()) + 2
        blocks.append((f"line{first_line}", "\n" * (first_line - 1) + m.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2, "README.md's NumPy and PyTorch examples are missing"


@pytest.mark.parametrize("source", [src for _, src in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_readme_block_runs(source: str) -> None:
    if re.search(r"^\s*(import|from) torch\b|fusedloss\.torch", source, re.MULTILINE):
        if importlib.util.find_spec("torch") is None:
            pytest.skip("the block needs torch")
    exec(compile(source, str(README), "exec"), {"__name__": "readme_block"})
