"""What the input checks (pixels before encode, token indices before decode_code) cost next to a
warm encode / decode_code, on the shipped default model (the fastest model we ship, so the worst
case for the share).

    python benchmarks/input_checks.py [--size 256] [--batch 8] [--repeats 7] [--json out.json]

Both sides are timed in the same process, alternating; the share is median(check) /
median(call) with the min and max of the per-round ratios. Target: under 2 %.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from vqgan_flax import DEFAULT_MODEL, FlaxVQGANModel
from vqgan_flax.evaluation import provenance
from vqgan_flax.models.input_checks import check_indices, check_pixels


def _seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the record here (needs a clean checkout)")
    parser.add_argument("--allow-dirty", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    provenance.check_can_record(args.json, args.allow_dirty)
    header = provenance.provenance(__file__)

    model = FlaxVQGANModel.from_pretrained(DEFAULT_MODEL)
    pixels = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    indices = np.asarray(model.encode(pixels).indices)
    model.decode_code(indices)  # compile both
    cases = {
        "encode": (lambda: model.encode(pixels), lambda: check_pixels(pixels, model.config.in_channels)),
        "decode_code": (lambda: model.decode_code(indices), lambda: check_indices(indices, model.config.n_embed)),
    }
    rows = []
    for name, (call, check) in cases.items():
        calls, checks = [], []
        for _ in range(args.repeats):
            calls.append(_seconds(call))  # includes the check, as users run it
            checks.append(min(_seconds(check) for _ in range(5)))
        ratios = [c / t for c, t in zip(checks, calls)]
        rows.append(
            {
                "call": name,
                "call_s_median": float(np.median(calls)),
                "check_s_median": float(np.median(checks)),
                "check_share_median": float(np.median(checks) / np.median(calls)),
                "check_share_min": min(ratios),
                "check_share_max": max(ratios),
            }
        )
    report = {
        **header,
        "benchmark": "input_checks",
        "batch": args.batch,
        "size": args.size,
        "rows": rows,
    }
    for row in rows:
        call_ms, check_ms = row["call_s_median"] * 1e3, row["check_s_median"] * 1e3
        share = f"{row['check_share_median']:.2%} (min {row['check_share_min']:.2%}, max {row['check_share_max']:.2%})"
        print(f"{row['call']:<12} call {call_ms:8.1f} ms  check {check_ms:6.2f} ms  share {share}")
    if args.json:
        provenance.write_record(args.json, report)


if __name__ == "__main__":
    main()
