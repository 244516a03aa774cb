"""Seeded mutation fuzzing of the token, weight, config, YAML and image readers (fuzz_files.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

READERS = ("config.json", "flax_model.msgpack", "image.bmp", "image.gif", "image.jpg", "image.png", "image.tif",
           "image.webp", "model.safetensors", "model.yaml", "preprocessor_config.json", "tokens.jsonl", "tokens.npz",
           "tokens.parquet")  # fmt: skip


def test_fuzzed_files_are_read_or_refused_naming_the_file():
    """30 seconds of mutations (flipped, cut and inserted bytes; odd values in the JSON fields):
    each read succeeds or raises ValueError/OSError naming the file; no other exception, no crash,
    no hang (the timeout), memory within the 1 GiB decode budget. ``VQGAN_FLAX_FUZZ_SEED`` explores
    other seeds."""
    seed = int(os.environ.get("VQGAN_FLAX_FUZZ_SEED", "0"))
    script = pathlib.Path(__file__).parent / "fuzz_files.py"
    result = subprocess.run([sys.executable, str(script), "30", str(seed)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"fuzzing (seed {seed}) died with {result.returncode}: {result.stderr[-2000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps({k: summary[k] for k in ("iterations", "failure_count", "peak_rss_above_baseline_mb")}))
    assert summary["failures"] == [], summary["failure_kinds"]
    assert summary["iterations"] >= 2000, summary["iterations"]
    assert summary["peak_rss_above_baseline_mb"] < 1024, summary["peak_rss_above_baseline_mb"]
    refused = {key.split(" ")[0] for key, count in summary["outcomes"].items() if key.endswith("refused") and count}
    assert refused == set(READERS), sorted(set(READERS) - refused)
    assert any(key.startswith("config.json field: read") for key in summary["outcomes"])
