"""``python -m fusedloss bench [--quick] [--plot FILE.png] [--threads N] [--json FILE]``.

Argument parsing and printing only; the measuring lives in ``fusedloss._bench``.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedloss")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time fused losses against the memory floor, torch and NumPy")
    bench.add_argument("--quick", action="store_true", help="tiny shapes only (a smoke test)")
    bench.add_argument("--plot", metavar="FILE.png", help="save a bar chart of the speedups")
    bench.add_argument("--threads", type=int, metavar="N", help="threads for fusedloss and torch")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    from . import _bench

    if _bench.optional("torch") is None:
        print("note: torch is not installed: torch columns read n/a and the floor is NumPy's "
              "(pip install 'fusedloss[bench]' for the full comparison)", file=sys.stderr)
    report = _bench.run(quick=args.quick, threads=args.threads, quiet=args.no_progress)
    print(report.text())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_json(), f, indent=2)
    if args.plot:
        if _bench.optional("matplotlib") is None:
            print("note: matplotlib is not installed, no plot written", file=sys.stderr)
        else:
            _bench.plot(report.rows, args.plot)
            print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
