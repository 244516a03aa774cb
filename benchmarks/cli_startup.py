"""How long ``vqgan-flax --help`` and ``--version`` take in a fresh process (the issue's bar:
under 1 s), next to ``python -c pass`` (the interpreter alone) measured in the same rounds.

    python benchmarks/cli_startup.py [--rounds 7] [--json out.json]

Each round runs the three commands once, interleaved; the record keeps every time, the medians
and the min-max spread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from vqgan_flax.evaluation import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "vqgan-flax --help": [sys.executable, "-m", "vqgan_flax.cli", "--help"],
    "vqgan-flax --version": [sys.executable, "-m", "vqgan_flax.cli", "--version"],
}


def _seconds(argv: list) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the three commands")
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    provenance.check_can_record(args.json, args.allow_dirty)
    header = provenance.provenance(__file__)
    for argv in COMMANDS.values():  # warm the file cache and the bytecode once
        _seconds(argv)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(_seconds(argv))
    rows = []
    for name, seconds in times.items():
        ordered = sorted(seconds)
        rows.append({"command": name, "seconds": seconds, "median_s": ordered[len(ordered) // 2],
                     "min_s": ordered[0], "max_s": ordered[-1]})  # fmt: skip
        print(f"{name:<22} {rows[-1]['median_s']:.3f} s ({ordered[0]:.3f}-{ordered[-1]:.3f}) over {args.rounds}")
    report = {**header, "benchmark": "cli_startup", "rounds": args.rounds, "rows": rows, "target_s": 1.0}
    if args.json:
        provenance.write_record(args.json, report)


if __name__ == "__main__":
    main()
