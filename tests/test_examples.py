"""The README's main job (`make demo`) runs and reports exact parity."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from utils import FIXTURES, same_output


@pytest.fixture(scope="session")
def compile_caches(tmp_path_factory) -> dict:
    """The environment for the harnesses: one inductor and JAX compile cache for the whole session,
    xdist workers included (their base folders share a parent), which the harnesses keep
    (``harness.compile_caches``). The speed harness and the float32 op profile compile the same
    tiny model at 16² on the torch side; whichever runs second starts warm."""
    import harness

    base = tmp_path_factory.getbasetemp()
    env, _ = harness.compile_caches(str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base))
    return env


def test_parity_demo(tmp_path):
    root = FIXTURES.parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "parity_demo.py"), "--output", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["case"] for row in report] == [
        "taming_vq",
        "taming_gumbel",
        "taming_vq_nonsquare",
        "vqganjax",
        "vqganjax_old_layout",
    ]
    assert all(row["ok"] for row in report)
    assert all(row["max_abs_diff_decode"] < 1e-4 for row in report)
    assert (tmp_path / "taming_gumbel" / "model.safetensors").is_file()
    # The README shows this table: the same cases, shapes, index counts and verdicts; the errors
    # (float32 rounding, ~1e-6, differing in the last digit between stacks) to 1e-5.
    shown = re.search(r"```\n(case {2,}input.*?)```", (root / "README.md").read_text(), flags=re.S).group(1)
    table = result.stdout[result.stdout.index("case ") :].splitlines()
    printed = "\n".join(table[: len(shown.strip().splitlines())])
    assert same_output(printed, shown, abs_tol=1e-5), f"parity_demo.py printed\n{printed}\nthe README shows\n{shown}"


@pytest.mark.torch
def test_benchmark_harness_runs(tmp_path, compile_caches):
    """The speed harness itself (tiny model, two rounds): every system measured in every round, the
    record carries its provenance and names the caller's compile caches, and the report's ratios
    follow from the measured seconds."""
    root = FIXTURES.parent.parent
    out = tmp_path / "bench.json"
    systems = ["jax-float32", "torch-eager-float32", "torch-compile-float32"]
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "run.py"), "--systems", *systems, "--batch-sizes", "2",
         "--size", "16", "--preset", "tiny", "--repeats", "1", "--rounds", "2", "--json", str(out), "--allow-dirty"],
        cwd=root, capture_output=True, text=True, timeout=900, env=compile_caches,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    _assert_provenance(record, "run.py")
    assert record["compile_caches_inherited"] == ["TORCHINDUCTOR_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"]
    assert "first call s (enc / dec, caller's compile caches)" in result.stdout
    measured = [(m["round"], m["system"]) for m in record["measurements"]]
    assert measured == [(r, s) for r in (0, 1) for s in systems]  # interleaved, rounds repeated
    assert all(m["encode_s"] > 0 and m["decode_s"] > 0 and m["peak_rss_mb"] > 0 for m in record["measurements"])
    assert all(m["per_image_loop"] for m in record["measurements"])  # batch 2 on CPU: both sides loop
    import report

    ours = next(r for r in report.speed_rows(record) if r["system"] == "jax-float32")
    for round_index, ratio in enumerate(ours["encode_ratio"]):
        row = [m for m in record["measurements"] if m["round"] == round_index]
        best = min(m["encode_s"] for m in row if m["system"].startswith("torch-"))
        assert ratio == pytest.approx(best / next(m["encode_s"] for m in row if m["system"] == "jax-float32"))
    assert "| jax-float32 (per image) | 2 |" in result.stdout


def _run_script(root, *argv, env=None):
    result = subprocess.run([sys.executable, *map(str, argv)], cwd=root, capture_output=True, text=True, timeout=600,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.one_stack
def test_memory_benchmark_runs(tmp_path):
    root = FIXTURES.parent.parent
    out = tmp_path / "memory.json"
    _run_script(root, root / "benchmarks" / "memory.py", "--decode-tokens", 4, "--encode-counts", 1, 3, "--json", out,
                "--allow-dirty")  # fmt: skip
    record = json.loads(out.read_text())
    _assert_provenance(record, "memory.py")
    rows = record["rows"]
    assert [r["case"].split()[:2] for r in rows] == [["decode", "64x64"], ["encode", "1"], ["encode", "3"]]
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] > 0 for r in rows)
    assert rows[0]["peak_rss_mb"] >= rows[0]["peak_rss_mb_after_load"]
    growth = (rows[2]["peak_rss_mb"] - rows[1]["peak_rss_mb"]) / 2
    assert record["streaming"] == {"from_images": 1, "to_images": 3, "mb_per_extra_image": pytest.approx(growth)}


def test_bf16_agreement_script(tmp_path):
    root = FIXTURES.parent.parent
    out = tmp_path / "agreement.json"
    stdout = _run_script(root, root / "benchmarks" / "bf16_agreement.py", "--size", 64, "--json", out, "--allow-dirty")
    record = json.loads(out.read_text())
    _assert_provenance(record, "bf16_agreement.py")
    rows = record["rows"]
    from vqgan_flax import DEFAULT_MODEL, VQGANConfig

    side = 64 // VQGANConfig.from_pretrained(DEFAULT_MODEL).downsampling_factor  # the shipped model's grid
    assert [r["tokens"] for r in rows] == [4 * side * side, 4 * 4 * 4] and "tokens agree" in stdout
    # bf16 rounding flips near-tied codes only: most tokens must agree, not all need to.
    assert all(0.8 < r["agreement"] <= 1.0 for r in rows)


def test_input_checks_benchmark_runs(tmp_path):
    root = FIXTURES.parent.parent
    out = tmp_path / "checks.json"
    _run_script(root, root / "benchmarks" / "input_checks.py", "--size", "32", "--batch", "2", "--repeats", "1",
                "--json", out, "--allow-dirty")  # fmt: skip
    report = json.loads(out.read_text())
    assert [row["call"] for row in report["rows"]] == ["encode", "decode_code"]
    assert all(0 < row["check_share_median"] < 1 and row["call_s_median"] > 0 for row in report["rows"])
    _assert_provenance(report, "input_checks.py")


@pytest.mark.one_stack
def test_tokenize_benchmark_runs(tmp_path):
    """Every mode once (the script's plumbing: one stack, for CI time)."""
    root = FIXTURES.parent.parent
    out = tmp_path / "tokenization.json"
    modes = ["files", "tar", "s3", "ray"]
    _run_script(root, root / "benchmarks" / "dataset_tokenization.py", "--preset", "tiny", "--size", "16",
                "--batch", "2", "--n", "4", "--rss-n", "4", "6", "--rounds", "1", "--modes", *modes,
                "--json", out, "--allow-dirty")  # fmt: skip
    report = json.loads(out.read_text())
    assert [sorted(r) for r in report["rounds"]] == [sorted(["model", *modes])]
    assert all(r["n"] == 4 and r["images_per_s"] > 0 for r in report["rounds"][0].values())
    assert set(report["ratio_to_model"]) == set(modes) and [m["n"] for m in report["memory"]] == [4, 6]
    # resident memory after every batch of 2 images: 2, 4 (and 6) images done
    assert [[n for n, _ in m["trace"]] for m in report["memory"]] == [[2, 4], [2, 4, 6]]
    assert all(rss > 10 for m in report["memory"] for _, rss in m["trace"]) and report["memory_env"] == {}
    _assert_provenance(report, "dataset_tokenization.py")
    # memory runs only, in an altered environment that the record names
    _run_script(root, root / "benchmarks" / "dataset_tokenization.py", "--preset", "tiny", "--size", "16",
                "--batch", "2", "--rss-n", "3", "--rounds", "0", "--memory-env", "MALLOC_ARENA_MAX=2",
                "--json", out, "--allow-dirty")  # fmt: skip
    report = json.loads(out.read_text())
    assert report["rounds"] == [] and report["ratio_to_model"] == {}
    assert report["memory_env"] == {"MALLOC_ARENA_MAX": "2"}
    assert [[n for n, _ in m["trace"]] for m in report["memory"]] == [[2, 3]]


def _assert_provenance(record: dict, script: str) -> None:
    """The header every results file carries (vqgan_flax/evaluation/provenance.py)."""
    assert len(record["commit"]) == 40 and isinstance(record["dirty"], bool) and len(record["harness_sha256"]) == 16
    assert record["command"].startswith(f"python benchmarks/{script} ") and "--json" in record["command"]
    assert record["cpu"]["model"] and record["cpu"]["cores"] >= 1 and "jax" in record["versions"]
    assert record["date"].endswith("Z") and record["python"].count(".") == 2


@pytest.mark.torch
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_op_profile_runs(tmp_path, precision, compile_caches):
    """The per-op-class profile (tiny model): its census counts every conv and GroupNorm of the model
    once, and each class has a time on both sides."""
    from flax.traverse_util import flatten_dict

    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    root = FIXTURES.parent.parent
    out = tmp_path / "ops.json"
    _run_script(root, root / "benchmarks" / "op_profile.py", "--preset", "tiny", "--size", "16", "--repeats", "1",
                "--precision", precision, "--json", out, "--allow-dirty", env=compile_caches)  # fmt: skip
    record = json.loads(out.read_text())
    _assert_provenance(record, "op_profile.py")
    assert record["compile_caches_inherited"] == ["TORCHINDUCTOR_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"]
    assert record["precision"] == precision and record[f"jax-{precision}_kernels"] in ("native", "xla")
    params = flatten_dict(FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0).params)
    convs = sum(k[-1] == "kernel" and v.ndim == 4 for k, v in params.items())
    norms = sum(k[-2].startswith("norm") and k[-1] == "scale" for k in params)
    census = [n for counts in record["census"].values() for op, n in counts if op[0] in ("conv", "upconv")]
    assert sum(census) == convs  # every conv once, over encode and decode
    assert sum(n for counts in record["census"].values() for op, n in counts if op[0] == "groupnorm+swish") == norms
    classes = {(c["call"], c["class"]) for c in record["classes"]}
    assert {
        ("encode", "conv3x3"),
        ("decode", "groupnorm+swish"),
        ("encode", "rest"),
        ("decode", "whole call"),
    } <= classes
    assert all(c["jax_s"] > 0 and c["torch_s"] > 0 for c in record["classes"] if c["class"] not in ("rest",))


def test_cli_startup_benchmark_runs(tmp_path):
    root = FIXTURES.parent.parent
    out = tmp_path / "startup.json"
    _run_script(root, root / "benchmarks" / "cli_startup.py", "--rounds", "1", "--json", out, "--allow-dirty")
    report = json.loads(out.read_text())
    assert [row["command"] for row in report["rows"]] == ["python -c pass", "vqgan-flax --help", "vqgan-flax --version"]
    assert all(row["min_s"] <= row["median_s"] <= row["max_s"] and len(row["seconds"]) == 1 for row in report["rows"])
    _assert_provenance(report, "cli_startup.py")
