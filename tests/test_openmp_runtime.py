"""One OpenMP runtime per process, whichever of torch and fusedloss comes first, and
fusedloss's threads visible to and limited by threadpoolctl (src/fusedloss/_openmp.py,
src/fusedloss/_threadpoolctl.py). Structural facts only, each in a fresh child process;
bench/openmp_interplay.py measures what they are for (no slowdown of either by the other).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("threadpoolctl", minversion="3.5")

ORDERS = {
    "fusedloss, torch, threadpoolctl": "import fusedloss as fl; import torch; import threadpoolctl",
    "torch, fusedloss, threadpoolctl": "import torch; import fusedloss as fl; import threadpoolctl",
    "threadpoolctl, fusedloss, torch": "import threadpoolctl; import fusedloss as fl; import torch",
}

CHILD = """
{imports}
import json
from fusedloss import _core, _openmp

def openmp_entries():
    return [(d["internal_api"], d["filepath"], d["num_threads"])
            for d in threadpoolctl.threadpool_info() if d["user_api"] == "openmp"]

before = openmp_entries()
with threadpoolctl.threadpool_limits(1):
    limited = (fl.get_num_threads(), openmp_entries())
with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    limited_openmp = fl.get_num_threads()
torch.set_num_threads(1)
print(json.dumps(dict(
    libgomp=sorted({{line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}}),
    torch_copy=_openmp.torch_copy(), core=_core.__file__, before=before, limited=limited,
    limited_openmp=limited_openmp, after=fl.get_num_threads(),
)))
"""


def run_child(imports: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "3"  # fusedloss's default, distinct from 1
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD).format(imports=imports)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("order", ORDERS)
def test_one_runtime_and_threadpoolctl_limits_fusedloss(order: str) -> None:
    facts = run_child(ORDERS[order])
    # One libgomp in the process: torch's own copy when torch has one.
    assert len(facts["libgomp"]) == 1, facts["libgomp"]
    if facts["torch_copy"] is not None:
        assert os.path.samefile(facts["libgomp"][0], facts["torch_copy"])
    runtimes = [e for e in facts["before"] if e[0] != "fusedloss"]
    ours = [e for e in facts["before"] if e[0] == "fusedloss"]
    assert len(runtimes) == 1, facts["before"]
    assert len(ours) == 1 and os.path.samefile(ours[0][1], facts["core"]), facts["before"]
    assert ours[0][2] == 3  # OMP_NUM_THREADS
    # threadpool_limits sets fusedloss's own count too, and restores it; torch's
    # set_num_threads (the runtime's omp_set_num_threads) leaves it alone.
    threads, entries = facts["limited"]
    assert threads == 1
    assert all(e[2] == 1 for e in entries), entries
    assert facts["limited_openmp"] == 1
    assert facts["after"] == 3


def test_missing_runtime_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no libgomp loaded, none in torch and none on the system, the import error
    names the packages that bring one."""
    from fusedloss import _openmp

    def no_library(*args, **kwargs):
        raise OSError("libgomp.so.1: cannot open shared object file")

    monkeypatch.setattr(_openmp, "_runtime", None)
    monkeypatch.setattr(_openmp, "_loaded", lambda: None)
    monkeypatch.setattr(_openmp, "torch_copy", lambda: None)
    monkeypatch.setattr(_openmp.ctypes, "CDLL", no_library)
    with pytest.raises(ImportError, match="libgomp1.*PyTorch"):
        _openmp.load_runtime()
