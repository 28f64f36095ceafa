"""fusedloss and torch in one process: does either slow the other down?

    python bench/openmp_interplay.py [--repeats N] [--json FILE]

A training loop alternates torch ops and the loss. If fusedloss and torch ran on two
OpenMP runtimes, each with its own thread pool, the idle workers of one would spin on
the cores the other's workers need (a 256 x 1000 cross-entropy right after a torch op
took 25x its time alone). fusedloss shares torch's runtime instead
(src/fusedloss/_openmp.py); this measures it, for both import orders, each in a fresh
subprocess of the Python running this script (so run it with the environment to test,
e.g. a venv with the repaired wheel installed):

- fusedloss: ``fl.cross_entropy_and_grad(x, t, out=g)`` (float32, class indices);
- torch op: ``torch.mul(y, 1.5, out=h)`` with y, h of the logits' shape (the bench's
  "floor": a parallel pass, all threads) on buffers of its own: with shared buffers
  the timings would mostly show cache lines moving between cores, because torch and
  fusedloss split the work among their threads differently;
- "alone": back-to-back calls of one; "after": the other runs just before each timed call;
- "control": the same library runs just before, on the other library's memory (fusedloss
  on y, h; torch.mul on x, g): the cost of the memory the other op touched, whoever
  touches it (at small sizes on few cores, a 20 us op slows down when another op has
  evicted its data, whichever library ran that op);
- "after torch's softmax" (torch op only): torch's own softmax over x into g runs just before,
  the same memory as fusedloss's call and a row pass like it, by torch itself: what any
  library's call there costs the next op;
- the seven are measured in three interleaved rounds, medians of the rounds' medians.

Ratios "after / alone" near 1 mean the two do not get in each other's way; "after /
control" near 1 means the other library costs no more than its memory traffic. Each child
also reports the libgomp files mapped into it and threadpoolctl's entries (when
threadpoolctl is installed). Medians over ``--repeats`` calls (more for small shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

SHAPES = ((256, 1000), (1024, 32000))
ORDERS = {
    "fusedloss first": "import fusedloss as fl\nimport torch",
    "torch first": "import torch\nimport fusedloss as fl",
}

CHILD = """
{imports}
import json, sys, time
import numpy as np

repeats = int(sys.argv[1])
shapes = json.loads(sys.argv[2])
now = time.perf_counter


def median(xs):
    return sorted(xs)[len(xs) // 2]


def timed(step, before=None, n=repeats):
    times = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = now()
        step()
        times.append(now() - t0)
    return median(times)


rng = np.random.default_rng(0)
rows = []
for n, c in shapes:
    x = rng.standard_normal((n, c), dtype=np.float32)
    t = rng.integers(0, c, size=n)
    g = np.empty_like(x)
    y = torch.randn(n, c)
    h = torch.empty_like(y)
    xt, gt, yn, hn = torch.from_numpy(x), torch.from_numpy(g), y.numpy(), h.numpy()

    def fused():
        fl.cross_entropy_and_grad(x, t, out=g)

    def torch_op():
        torch.mul(y, 1.5, out=h)

    def fused_elsewhere():
        fl.cross_entropy_and_grad(yn, t, out=hn)

    def torch_op_elsewhere():
        torch.mul(xt, 1.5, out=gt)

    def torch_softmax():  # fusedloss's call as torch would run it: the same buffers, a row pass
        torch._softmax(xt, 1, False, out=gt)

    k = max(repeats, repeats * 10**7 // (n * c))  # ~1000 calls at 256x1000
    for _ in range(3):
        fused(), torch_op()
    modes = dict(fl_alone=(fused, None), fl_after_torch=(fused, torch_op),
                 fl_control=(fused, fused_elsewhere), torch_alone=(torch_op, None),
                 torch_after_fl=(torch_op, fused), torch_control=(torch_op, torch_op_elsewhere),
                 torch_after_softmax=(torch_op, torch_softmax))
    per_round = {{mode: [] for mode in modes}}
    for _ in range(3):  # interleaved rounds: a drift of the machine hits every mode alike
        for mode, (step, before) in modes.items():
            per_round[mode].append(timed(step, before, n=k // 3 + 1))
    rows.append(dict(shape=f"{{n}}x{{c}}", **{{m: median(t) for m, t in per_round.items()}}))

libgomp = sorted({{line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}})
try:
    import threadpoolctl
    pools = [(d["internal_api"], d["num_threads"]) for d in threadpoolctl.threadpool_info()
             if d["user_api"] == "openmp"]
except ImportError:
    pools = None
print(json.dumps(dict(rows=rows, libgomp=libgomp, threadpoolctl_openmp=pools,
                      threads=[fl.get_num_threads(), torch.get_num_threads()])))
"""


def run_order(imports: str, repeats: int) -> dict:
    code = textwrap.dedent(CHILD).format(imports=imports)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(repeats), json.dumps(SHAPES)],
        capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def report(order: str, result: dict) -> str:
    lines = [
        f"### {order}",
        "",
        f"libgomp mapped: {', '.join(result['libgomp']) or 'none'}; threadpoolctl OpenMP "
        f"entries: {result['threadpoolctl_openmp']}; threads fusedloss/torch: "
        f"{result['threads'][0]}/{result['threads'][1]}",
        "",
        "| call | shape | alone | after the other library | / alone | control | / control "
        "| after torch's softmax | / that |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lib, other in (("fl", "torch"), ("torch", "fl")):
        for r in result["rows"]:
            alone, after, control = r[f"{lib}_alone"], r[f"{lib}_after_{other}"], r[f"{lib}_control"]
            soft = r.get(f"{lib}_after_softmax")
            tail = f"{fmt(soft)} | {after / soft:.2f}x" if soft else "- | -"
            lines.append(
                f"| {'fusedloss CE' if lib == 'fl' else 'torch op'} | {r['shape']} | {fmt(alone)} "
                f"| {fmt(after)} | {after / alone:.2f}x | {fmt(control)} | {after / control:.2f}x "
                f"| {tail} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls at 1024x32000")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    results = {order: run_order(imports, args.repeats) for order, imports in ORDERS.items()}
    for order, result in results.items():
        print(report(order, result))
    load = os.getloadavg()
    print(f"python {sys.executable}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{os.cpu_count()} logical CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
