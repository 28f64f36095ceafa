"""fusedloss.torch's linear_cross_entropy in use: torch.compile (aot_eager and
inductor), DDP with gloo, and peak memory against torch on materialised logits
(as tests/test_torch_training.py does for cross-entropy)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from test_linear_cross_entropy import needs_extras  # noqa: E402
from test_torch_training import run_ddp  # noqa: E402


# ------------------------------------------------------------------ torch.compile


class TinyLM(nn.Module):
    def __init__(self, crit: nn.Module):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 16), nn.GELU())
        self.crit = crit

    def forward(self, x, t):
        return self.crit(self.body(x), t)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction) -> None:
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch.manual_seed(1)
    model = TinyLM(flt.LinearCrossEntropyLoss(16, 23, bias=True, reduction=reduction,
                                              label_smoothing=0.1, chunk_bytes=5 * 23 * 4))
    ref = copy.deepcopy(model)
    ref.crit = nn.LinearCrossEntropyLoss(16, 23, bias=True, reduction=reduction,
                                         label_smoothing=0.1)
    ref.crit.load_state_dict(model.crit.state_dict())

    def step(m, x, t):
        loss = m(x, t)
        return loss if reduction == "mean" else (loss * torch.linspace(0, 1, len(t))).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    for _ in range(2):
        x, t = torch.randn(24, 12), torch.randint(0, 23, (24,))
        t[::5] = -100
        compiled(model, x, t).backward()
        step(ref, x, t).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert graphs and all("fusedloss.linear_cross_entropy" in g for g in graphs)


INDUCTOR_SCRIPT = """
import copy
import torch
from torch import nn
import fusedloss.torch as flt

torch.manual_seed(5)
body = nn.Sequential(nn.Linear(20, 32), nn.GELU())
crit = flt.LinearCrossEntropyLoss(32, 50, bias=True, label_smoothing=0.1, chunk_bytes=7 * 50 * 4)
ref_body = copy.deepcopy(body)
ref_crit = nn.LinearCrossEntropyLoss(32, 50, bias=True, label_smoothing=0.1)
ref_crit.load_state_dict(crit.state_dict())
for red in ("mean", "none"):
    crit.reduction = ref_crit.reduction = red
    compiled = torch.compile(lambda x, t: crit(body(x), t).sum(), fullgraph=True)
    for _ in range(2):
        x, t = torch.randn(32, 20), torch.randint(0, 50, (32,))
        loss = compiled(x, t)
        loss.backward()
        ref = ref_crit(ref_body(x), t).sum()
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    pairs = zip([*body.parameters(), *crit.parameters()],
                [*ref_body.parameters(), *ref_crit.parameters()])
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
print("INDUCTOR OK")
"""


@pytest.mark.slow
def test_torch_compile_default_backend_inductor(tmp_path) -> None:
    """Inductor (the default backend) in its own process, as for cross-entropy."""
    script = tmp_path / "inductor_linear_ce.py"
    script.write_text(INDUCTOR_SCRIPT)
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INDUCTOR OK" in proc.stdout


@needs_extras
def test_torch_compile_llm_options_and_num_items_tensor() -> None:
    """The options and a tensor num_items_in_batch (as HF's Trainer passes it) trace."""
    torch._dynamo.reset()
    x = torch.randn(12, 8, requires_grad=True)
    w = torch.randn(9, 8, requires_grad=True)
    t = torch.randint(0, 9, (12,))

    def f(x, w, t, n):
        return flt.linear_cross_entropy(x, w, t, num_items_in_batch=n, softcap=5.0,
                                        lse_square_scale=1e-3, chunk_bytes=9 * 4 * 5)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x, w, t, torch.tensor(30))
    grads = torch.autograd.grad(loss, (x, w))
    ref = f(x, w, t, 30)
    ref_grads = torch.autograd.grad(ref, (x, w))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [
    dict(options=nn.LinearCrossEntropyOptions(batch_chunk_size=5)),
    dict(options=nn.LinearCrossEntropyOptions(), label_smoothing=0.1),
], ids=["options-taken", "options-ignored"])
def test_torch_compile_fullgraph_with_options(kwargs) -> None:
    """torch's options trace under fullgraph: their resolution (torch's _adjust), and
    no warning where torch's chunked path would ignore them (a warning breaks the
    graph; torch's own call fails there). Twice the upstream gradient on a second
    backward: torch forces allow_retain_graph=True under torch.compile."""
    torch._dynamo.reset()
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 8, dtype=torch.float64)
    t = torch.randint(0, 9, (12,))
    compiled = torch.compile(lambda x, t: flt.linear_cross_entropy(x, w, t, **kwargs),
                             fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = compiled(x, t)
    loss.backward(retain_graph=True)
    loss.backward()
    ref = torch.nn.functional.cross_entropy(
        x @ w.T, t, label_smoothing=kwargs.get("label_smoothing", 0.0))
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, 2 * ref_grad)


# ------------------------------------------------------------------ DDP, memory

LINEAR_CE_TRAIN = """
import functools


class Model(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
        self.head = head

    def forward(self, x, t):
        return self.head(self.body(x), t)


def train(rank, head_cls):
    torch.manual_seed(0)
    model = Model(head_cls(32, 29, bias=True, dtype=torch.float64, label_smoothing=0.1,
                           weight=torch.linspace(0.5, 1.5, 29, dtype=torch.float64)))
    model.body.double()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    for _ in range(10):
        x = torch.randn(24, 16, generator=g, dtype=torch.float64)
        t = torch.randint(0, 29, (24,), generator=g)
        opt.zero_grad()
        ddp(x, t).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


OURS = functools.partial(flt.LinearCrossEntropyLoss, chunk_bytes=5 * 29 * 8)  # 5 chunks
REF = nn.LinearCrossEntropyLoss
"""


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_torch(tmp_path) -> None:
    """The head's weight and bias (parameters of the loss module) under DDP, against
    torch's nn.LinearCrossEntropyLoss: same parameters after 10 steps, ranks in sync."""
    run_ddp(tmp_path, LINEAR_CE_TRAIN, timeout=120)


MEMORY_PROBE = textwrap.dedent("""
    import sys
    import torch
    import torch.nn.functional as F
    import fusedloss.torch as flt

    mode = sys.argv[1]
    n, h, c = 1024, 256, 16000


    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024


    def step(x, w, t):
        if mode == "torch":
            F.cross_entropy(x @ w.T, t).backward()
        else:
            flt.linear_cross_entropy(x, w, t, chunk_bytes=8 << 20).backward()


    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # warm up: libraries, threads, allocator
        step(torch.randn(64, h, requires_grad=True), torch.randn(c, h, requires_grad=True),
             torch.randint(0, c, (64,)))
    x = torch.randn(n, h, generator=g, requires_grad=True)
    w = (torch.randn(c, h, generator=g) * 0.05).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    step(x, w, t)
    print(status("VmHWM:") - before)
""")


@pytest.mark.slow
def test_peak_memory_is_a_fraction_of_materialised_logits(tmp_path) -> None:
    """Forward + backward at 1024 x 256 x 16000 float32 (logits 62.5 MiB): torch
    keeps logits-sized buffers; the fused path the weight's gradient (15.6 MiB),
    the input's, and one 8 MiB chunk."""
    script = tmp_path / "memory_probe.py"
    script.write_text(MEMORY_PROBE)
    peaks = {}
    for mode in ("torch", "fused"):
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        peaks[mode] = int(proc.stdout.split()[-1]) / 2**20
    print(f"\npeak extra memory: fused {peaks['fused']:.1f} MiB, torch {peaks['torch']:.1f} MiB")
    assert peaks["torch"] > 2 * 62.5  # the measurement sees the logits
    assert peaks["fused"] < 40
