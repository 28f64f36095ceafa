"""Threads: the GIL is released while a kernel runs, concurrent calls are correct, and
fusedloss's OpenMP and torch's live in one process without deadlock.

Anything that could hang runs in a child interpreter with a timeout, so a deadlock
fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest

import fusedloss as fl


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = fl.get_num_threads()
    yield
    fl.set_num_threads(before)


def _bits(value: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(value)).tobytes()


# ------------------------------------------------------------------ GIL released


def _long_call(name: str, seconds: float) -> tuple[Any, dict[str, Any], float]:
    """Arguments for one call of fl.<name> that takes at least ``seconds`` (1 thread)."""
    fn = getattr(fl, name)
    rng = np.random.default_rng(0)
    rows = 64
    while True:
        x = rng.standard_normal((rows, 4096), dtype=np.float32)
        target = (rng.integers(0, 4096, rows) if name.startswith(("cross", "multi_margin"))
                  else np.ones_like(x))
        kwargs: dict[str, Any] = {"out": np.empty_like(x)} if name.endswith("grad") else {}
        if name in ("mse_loss_and_grad", "l1_loss_and_grad"):  # memory-bound: more streams
            kwargs.update(reduction="none", grad_output=np.ones_like(x))
        fn(x, target, **kwargs)  # warm up (page faults of out)
        t0 = time.perf_counter()
        fn(x, target, **kwargs)
        took = time.perf_counter() - t0
        if took >= seconds or rows >= 32768:  # 512 MiB per array at most
            return (x, target), kwargs, took
        rows *= 2


# One per binding (forward-only calls go through the same bindings; nll_loss and
# multi_margin_loss share one kernel call in csrc/bindings/class_losses.cpp).
@pytest.mark.parametrize("name", ["cross_entropy_and_grad", "mse_loss_and_grad", "l1_loss_and_grad",
                                  "multi_margin_loss_and_grad"])
def test_gil_released_during_kernel(name: str) -> None:
    """A Python thread keeps running while kernels run in another thread.

    With the GIL held, the counting thread would stall for a whole kernel call, once
    per call (6 gaps at least as long as the shortest call); released, its gaps stay
    near the interpreter's switch interval (5 ms). On a shared machine the OS may
    still deschedule it now and then (gaps of tens of ms were seen with another job
    running), so up to 2 such gaps are tolerated: a held GIL would give all 6.
    """
    fl.set_num_threads(1)  # leave a core for the counting thread
    args, kwargs, per_call = _long_call(name, 0.04)
    assert per_call > 0.02, f"kernel too short to tell ({per_call:.4f} s)"
    fn = getattr(fl, name)
    done = threading.Event()
    started = threading.Event()

    calls: list[float] = []

    def worker() -> None:
        started.set()
        for _ in range(6):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            calls.append(time.perf_counter() - t0)
        done.set()

    count = 0
    gaps: list[float] = []
    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    last = time.perf_counter()
    while not done.is_set():
        count += 1
        now = time.perf_counter()
        if now - last > per_call / 4:
            gaps.append(now - last)
        last = now
    thread.join()
    long_gaps = [g for g in gaps if g >= 0.9 * min(calls)]  # as long as a whole call
    assert len(long_gaps) <= 2, (
        f"counting thread stalled {len(long_gaps)} times ({long_gaps}) during 6 kernel calls "
        f"of {per_call:.4f} s: GIL held?"
    )
    assert count > 1000, f"only {count} increments during 6 calls of {per_call:.4f} s"


# ------------------------------------------------------ many threads, same answers


def _workload(seed: int) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 300)
    k = rng.standard_normal((4, 9, 32, 32))
    kt = rng.integers(0, 9, (4, 32, 32))
    r = rng.standard_normal(200_001)
    rt = rng.standard_normal(200_001)
    w = rng.random(1000).astype(np.float32) + 0.5
    return [
        ("cross_entropy_and_grad", (x, t), {"weight": w, "label_smoothing": 0.1}),
        ("cross_entropy_and_grad", (k, kt), {"reduction": "none"}),
        ("cross_entropy", (x, t), {"reduction": "sum"}),
        ("mse_loss_and_grad", (r, rt), {}),
        ("l1_loss_and_grad", (r, rt), {"reduction": "sum"}),
        ("l1_loss", (r, rt), {"reduction": "none"}),
        ("nll_loss_and_grad", (k, kt), {"reduction": "sum"}),
        ("multi_margin_loss_and_grad", (x, t), {"p": 2, "weight": w}),
    ]


def _results(work: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[bytes]:
    out = []
    for name, args, kwargs in work:
        result = getattr(fl, name)(*args, **kwargs)
        for part in result if isinstance(result, tuple) else (result,):
            out.append(_bits(part))
    return out


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_many_python_threads_identical(kernel_threads: int) -> None:
    fl.set_num_threads(kernel_threads)
    work = _workload(1)
    expected = _results(work)
    barrier = threading.Barrier(8)

    def job(i: int) -> list[list[bytes]]:
        # each thread starts at a different call, so different kernels overlap
        order = list(range(i % len(work), len(work))) + list(range(i % len(work)))
        barrier.wait()
        rounds = []
        for _ in range(3):
            got = {k: _results([work[k]]) for k in order}
            rounds.append([b for k in range(len(work)) for b in got[k]])
        return rounds

    with ThreadPoolExecutor(8) as pool:
        all_results = list(pool.map(job, range(8)))
    for i, per_thread in enumerate(all_results):
        for j, got in enumerate(per_thread):
            assert got == expected, f"thread {i}, round {j}: results differ from single-threaded"


def test_threads_inplace_on_own_buffers() -> None:
    """8 threads, each overwriting its own input in place, shared read-only target."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 513))
    target = rng.integers(0, 513, 200)
    _, expected = fl.cross_entropy_and_grad(x, target, reduction="sum")
    barrier = threading.Barrier(8)

    def job(_: int) -> bool:
        mine = x.copy()
        barrier.wait()
        ok = True
        for _ in range(5):
            mine[...] = x
            fl.cross_entropy_and_grad(mine, target, reduction="sum", inplace=True)
            ok &= _bits(mine) == _bits(expected)
        return ok

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(8)))


def test_thread_count_is_process_wide() -> None:
    """set_num_threads in one Python thread applies to calls from every other thread."""
    fl.set_num_threads(3)
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(fl.get_num_threads()))
    t.start()
    t.join()
    assert seen == [3]


# ------------------------------------------------- with torch, in a child process


def _run_child(code: str, timeout: float, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
            timeout=timeout, env=full_env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child process hung (deadlock?) after {timeout} s: {exc.stdout!r}")
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_torch_and_fusedloss_threads_no_deadlock() -> None:
    """torch ops (its own OpenMP pool) and fusedloss calls alternate across Python threads."""
    out = _run_child(
        """
        import threading
        import numpy as np
        import torch
        import torch.nn.functional as F
        import fusedloss as fl

        torch.set_num_threads(2)
        fl.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 1024)).astype(np.float32)
        t = rng.integers(0, 1024, 512)
        xt = torch.from_numpy(x)
        tt = torch.from_numpy(t)
        ref_loss, ref_grad = fl.cross_entropy_and_grad(x, t)
        errors = []

        def torch_step():
            a = xt.clone().requires_grad_(True)
            F.cross_entropy(a, tt).backward()
            (xt @ xt.T).sum().item()

        def fl_step():
            loss, grad = fl.cross_entropy_and_grad(x, t)
            if loss != ref_loss or not np.array_equal(grad, ref_grad):
                errors.append("fusedloss result changed")

        def worker(i):
            try:
                for j in range(12):
                    (torch_step if (i + j) % 2 else fl_step)()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for j in range(12):  # the main thread alternates too
            (fl_step if j % 2 else torch_step)()
        for th in threads:
            th.join()
        # torch inside fusedloss-heavy phases and vice versa, sequentially in one thread
        for j in range(20):
            fl_step(); torch_step()
        assert not errors, errors
        print("ok")
        """,
        timeout=180,
    )
    assert out.strip().endswith("ok")


def test_thread_counts_independent_of_torch() -> None:
    """The paragraph in the README: fl's thread count and torch's are separate settings."""
    out = _run_child(
        """
        import os
        import torch
        import fusedloss as fl
        default = fl.get_num_threads()
        assert default == int(os.environ["OMP_NUM_THREADS"]), default
        assert torch.get_num_threads() == default, torch.get_num_threads()
        torch.set_num_threads(1)
        assert fl.get_num_threads() == default, "torch.set_num_threads changed fusedloss's"
        fl.set_num_threads(3)
        assert torch.get_num_threads() == 1, "fl.set_num_threads changed torch's"
        assert fl.get_num_threads() == 3
        import numpy as np
        x = np.random.default_rng(0).standard_normal((64, 64))
        fl.cross_entropy_and_grad(x, np.zeros(64, np.int64))
        assert fl.get_num_threads() == 3 and torch.get_num_threads() == 1
        print("ok")
        """,
        timeout=120,
        env={"OMP_NUM_THREADS": "2"},
    )
    assert out.strip().endswith("ok")
    # Without OMP_NUM_THREADS the default is the number of cores OpenMP sees.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(
        [sys.executable, "-c", "import os, fusedloss as fl; "
         "print(fl.get_num_threads(), len(os.sched_getaffinity(0)))"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    threads, cores = map(int, proc.stdout.split())
    assert threads == cores


def _openmp_wait_settings(imports: str) -> list[str]:
    """The wait policy and spin count the process's libgomp reports (omp_display_env) after
    running ``imports``, in a child without OMP_WAIT_POLICY / GOMP_SPINCOUNT set. torch is
    hidden there: fusedloss would load torch's copy of libgomp, which predates
    omp_display_env (src/fusedloss/_openmp.py)."""
    code = f"""
        import ctypes, sys
        sys.modules["torch"] = None
        {imports}
        try:
            gomp = ctypes.CDLL("libgomp.so.1")  # the copy already loaded, if any
        except OSError:
            sys.exit(3)  # another OpenMP runtime (not GNU's)
        if not hasattr(gomp, "omp_display_env"):
            sys.exit(3)
        gomp.omp_display_env(1)
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=env)
    if proc.returncode == 3:
        pytest.skip("no libgomp with omp_display_env")
    assert proc.returncode == 0, proc.stderr
    return [line.strip() for line in proc.stderr.splitlines()
            if "OMP_WAIT_POLICY" in line or "GOMP_SPINCOUNT" in line]


def test_import_leaves_openmp_wait_policy_alone() -> None:
    """The OpenMP runtime is process-wide and shared with torch: importing fusedloss must
    not change how its idle workers wait (a passive policy set at import made torch's small
    ops several times slower whenever fusedloss was imported first)."""
    plain = _openmp_wait_settings("")
    assert any("GOMP_SPINCOUNT" in line for line in plain), plain
    assert _openmp_wait_settings("import fusedloss") == plain
    # The check can fail: a policy changed before the runtime loads shows up.
    passive = "import os; os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'; import fusedloss"
    assert _openmp_wait_settings(passive) != plain


@pytest.mark.parametrize("order", ["torch_first", "fusedloss_imported_first"])
def test_torch_set_num_threads_before_first_use(order: str) -> None:
    """torch and fusedloss share the process's libgomp; torch.set_num_threads() calls
    omp_set_num_threads(). fusedloss's default must still be OMP_NUM_THREADS / the
    cores, whenever torch's setting happens relative to fusedloss's first use."""
    imports = ("import torch; torch.set_num_threads(1); import fusedloss as fl"
               if order == "torch_first" else
               "import fusedloss as fl, torch; torch.set_num_threads(1)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(
        [sys.executable, "-c", f"import os; {imports}; "
         "print(fl.get_num_threads(), len(os.sched_getaffinity(0)))"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    threads, cores = map(int, proc.stdout.split())
    assert threads == cores, f"torch.set_num_threads(1) changed fusedloss's default to {threads}"


FORK_CHILD = """
import multiprocessing as mp, sys
import numpy as np
import fusedloss as fl
fl.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)
t = np.zeros(2048, np.int64)
ref = float(fl.cross_entropy(x, t))  # the parent's OpenMP pool now exists

def child(q):
    if sys.argv[1] == "one_thread":
        fl.set_num_threads(1)
    q.put(float(fl.cross_entropy(x, t)))

ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,), daemon=True)
p.start()
p.join(15)
if p.is_alive():
    p.kill()
    print("hung")
    sys.exit(0)
print("ok" if q.get(timeout=5) == ref else "wrong")
"""


@pytest.mark.parametrize("child_threads", ["one_thread", "default"])
def test_fork_after_parallel_kernel(child_threads: str) -> None:
    """A child forked after a parallel kernel (multiprocessing's default start method on
    Linux, DataLoader workers) can call fusedloss. GNU libgomp's thread pool does not
    survive fork(): a parallel region in the child waits forever for threads that were
    not copied. fl.set_num_threads(1) in the child avoids the pool (the documented
    workaround, as for torch); by default fusedloss must not hang either."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, child_threads], capture_output=True, text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok", (
        f"forked child with {child_threads} threads: {proc.stdout.strip()}"
    )
