"""Train a small causal language model on CPU, its output head through
``fusedloss.torch.LinearCrossEntropyLoss``, and compare it with the same model
whose head materialises the logits for ``nn.CrossEntropyLoss``.

    python examples/train_lm_head.py [--steps 300] [--batch 2048] [--chunk-mib 4]

The model is a word-level neural language model (Bengio et al. 2003): the
previous 8 words are embedded, concatenated and passed through a two-layer MLP,
and the head maps its 128 features to the vocabulary. The text is the opening of
Shakespeare's *Coriolanus* (public domain; ``examples/data/coriolanus.txt``, 48 KB,
2269 distinct words). Each run trains in its own process from the same seed and
reports its loss curve and the growth of its peak resident memory (VmHWM) over
the training steps, after a first step that allocated the gradients and the
optimizer's state: what is left is what the loss's forward and backward keep.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import fusedloss.torch as flt

TEXT = Path(__file__).with_name("data") / "coriolanus.txt"
CONTEXT = 8
EMBED = 32
FEATURES = 128
HEADS = ("fused", "torch")


def tokenize(text: str) -> list[str]:
    """Words (with apostrophes), single punctuation marks and newlines."""
    return re.findall(r"[A-Za-z']+|[^\sA-Za-z']|\n", text)


def load_corpus() -> tuple[torch.Tensor, int]:
    """Token ids (id 0 is the padding before the first word) and the vocabulary size."""
    words = tokenize(TEXT.read_text(encoding="utf-8"))
    vocab = {w: i + 1 for i, w in enumerate(sorted(set(words)))}
    return torch.tensor([vocab[w] for w in words]), len(vocab) + 1


class WordMLP(nn.Module):
    """Context words -> features; the head lives in the loss (fused) or here (torch)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.body = nn.Sequential(
            nn.Linear(CONTEXT * EMBED, 256), nn.GELU(), nn.Linear(256, FEATURES), nn.GELU())

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(context).flatten(1))


def batches(ids: torch.Tensor, batch: int, seed: int):
    """Random (context, next word) pairs; positions before the text read as padding."""
    padded = torch.cat([torch.zeros(CONTEXT, dtype=ids.dtype), ids])
    offsets = torch.arange(CONTEXT)
    g = torch.Generator().manual_seed(seed)
    while True:
        pos = torch.randint(0, len(ids), (batch,), generator=g)
        yield padded[pos[:, None] + offsets], ids[pos]


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    try:  # Linux >= 4.0: VmHWM := VmRSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def train(head_kind: str, steps: int, batch: int, chunk_mib: float, lr: float) -> dict:
    """One run; its losses, peak memory growth and time per step."""
    ids, vocab = load_corpus()
    torch.manual_seed(0)
    body = WordMLP(vocab)
    if head_kind == "fused":
        loss_fn = flt.LinearCrossEntropyLoss(FEATURES, vocab,
                                             chunk_bytes=int(chunk_mib * 2**20))
        head = loss_fn.linear  # same shape and initialisation as the nn.Linear below
    else:
        head = nn.Linear(FEATURES, vocab, bias=False)
        criterion = nn.CrossEntropyLoss()

        def loss_fn(features, target):
            return criterion(head(features), target)

    params = [*body.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    data = batches(ids, batch, seed=1)
    losses = []
    peak = 0
    start = None
    for step in range(steps):
        if step == 1:  # gradients and optimizer state exist now: measure from here
            reset_peak()
            base = vm_kib("VmRSS")
            start = time.perf_counter()
        context, target = next(data)
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(body(context), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step >= 1:
            peak = max(peak, vm_kib("VmHWM") - base)
    per_step = (time.perf_counter() - start) / (steps - 1) if start is not None else 0.0
    return {"head": head_kind, "vocab": vocab, "losses": losses,
            "peak_extra_mib": peak / 1024, "seconds_per_step": per_step}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def report(runs: dict[str, dict], batch: int) -> str:
    vocab = runs["fused"]["vocab"]
    lines = [f"vocabulary {vocab} words, {batch} tokens per step, "
             f"logits {batch * vocab * 4 / 2**20:.1f} MiB per step (float32)", "",
             "| head | first loss | last loss (mean of last 10) | peak extra memory | time/step |",
             "|---|---|---|---|---|"]
    for kind in HEADS:
        r = runs[kind]
        name = ("flt.LinearCrossEntropyLoss" if kind == "fused"
                else "nn.Linear + nn.CrossEntropyLoss")
        lines.append(f"| {name} | {r['losses'][0]:.3f} | {mean(r['losses'][-10:]):.3f} | "
                     f"{r['peak_extra_mib']:.1f} MiB | {r['seconds_per_step'] * 1e3:.0f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run (>= 2)")
    p.add_argument("--batch", type=int, default=2048, help="tokens per step")
    p.add_argument("--chunk-mib", type=float, default=4.0,
                   help="logits memory of one chunk of the fused head")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--json", metavar="FILE", help="also write both runs as JSON")
    p.add_argument("--run", choices=HEADS, help=argparse.SUPPRESS)  # one run, in this process
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2")
    if args.run:
        print(json.dumps(train(args.run, args.steps, args.batch, args.chunk_mib, args.lr)))
        return 0
    runs = {}
    for kind in HEADS:  # each in a fresh process: peak memory is per process
        print(f"training with the {kind} head ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--run", kind, "--steps", str(args.steps),
             "--batch", str(args.batch), "--chunk-mib", str(args.chunk_mib), "--lr", str(args.lr)],
            capture_output=True, text=True, check=True)
        runs[kind] = json.loads(out.stdout.splitlines()[-1])
    print(report(runs, args.batch))
    if args.json:
        Path(args.json).write_text(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
