"""benchmarks/report.py and vqgan_flax.evaluation.provenance on made-up records: refusals, ratios,
verdicts, noise flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import report
from utils import FIXTURES

from vqgan_flax.evaluation import provenance

ROOT = FIXTURES.parent.parent

HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _speed_record(jax_seconds, torch_seconds, skipped=None, ours="jax-float32"):
    """Rounds at batch 1: ours and PyTorch systems, seconds per round for encode and decode."""
    measurements = []
    for round_index in range(len(jax_seconds)):
        for system, seconds in ((ours, jax_seconds), *torch_seconds.items()):
            encode, decode = seconds[round_index]
            measurements.append({"round": round_index, "system": system, "batch": 1, "encode_s": encode,
                                 "decode_s": decode, "first_encode_s": 9.0, "first_decode_s": 9.0,
                                 "per_image_loop": False})  # fmt: skip
    return {"measurements": measurements, "skipped": skipped or {}}


def test_ratios_use_the_fastest_peer_of_each_round():
    record = _speed_record(
        jax_seconds=[(1.0, 2.0), (1.0, 2.0)],
        torch_seconds={
            "torch-eager-float32": [(1.5, 1.0), (0.5, 1.0)],
            "torch-compile-float32": [(0.8, 3.0), (2.0, 3.0)],
        },
    )
    ours = next(r for r in report.speed_rows(record) if r["system"] == "jax-float32")
    assert ours["encode_ratio"] == [0.8, 0.5] and ours["decode_ratio"] == [0.5, 0.5]
    assert ours["decode_peer"] == "torch-eager-float32"
    [target] = report.speed_targets(record, gpu=False)
    assert "**not met**" in target and "0.65 (0.50–0.80)x" in target


def test_a_ratio_whose_range_crosses_one_is_flagged():
    record = _speed_record(
        jax_seconds=[(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)],
        torch_seconds={"torch-compile-float32": [(0.9, 2.0), (1.2, 2.0), (1.1, 2.0)]},
    )
    table = report.speed_table(record)
    assert "1.10 (0.90–1.20)x ⚠" in table and "2.00 (2.00–2.00)x |" in table
    assert "**met**" in report.speed_targets(record, gpu=False)[0]


def test_gpu_target_is_judged_in_bf16_only():
    seconds = [(1.0, 1.0)] * 3
    bf16 = _speed_record(seconds, {"torch-compile-bfloat16": [(1.4, 1.6)] * 3}, ours="jax-bfloat16")
    [line] = report.speed_targets(bf16, gpu=True)
    assert "GPU bfloat16 ≥ 1.5×" in line and "**not met**" in line  # encode 1.4x < 1.5x
    assert "**met**" in report.speed_targets(bf16, gpu=False)[0]  # the CPU target is 1.0x
    skipped = {"jax-xla-float32": "the CPU kernels are CPU-only"}  # skipping the XLA-ops row skips no precision
    f32 = _speed_record(seconds, {"torch-compile-float32": [(1.0, 1.0)] * 3}, skipped=skipped)
    [line] = report.speed_targets(f32, gpu=True)
    assert line.startswith("- GPU float32 (no target): encode batch 1 1.00") and "met" not in line


def test_run_deadline_stops_before_measuring_and_says_so(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--systems", "jax-float32",
                           "--batch-sizes", "1", "--deadline-s", "1e-9", "--json", str(out), "--allow-dirty"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["measurements"] == []
    assert record["stopped"].startswith("--deadline-s 1e-09: stopped before round 0 batch 1 jax-float32")


def test_run_records_a_failing_worker_and_goes_on(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--systems", "jax-float32",
                           "--batch-sizes", "1", "--rounds", "2", "--preset", "no-such-preset", "--json", str(out),
                           "--allow-dirty"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["measurements"] == [] and list(record["failed"]) == ["jax-float32 batch 1"]
    assert record["failed"]["jax-float32 batch 1"].startswith("round 0: ") and "no-such-preset" in proc.stderr
    assert proc.stderr.count("benchmark worker jax-float32 batch 1 failed") == 1  # not retried in round 1


def test_skipped_precision_is_said_not_judged():
    record = _speed_record([(1.0, 1.0)], {"torch-eager-float32": [(1.0, 1.0)]},
                           skipped={"jax-bfloat16": "this CPU has no bf16 units"})  # fmt: skip
    lines = report.speed_targets(record, gpu=False)
    assert any(line.startswith("- bfloat16: skipped — this CPU has no bf16 units") for line in lines)


def test_memory_verdict_fails_for_an_encoder_that_holds_its_pixels():
    rows = [
        {"case": "decode 1024x1024", "seconds": 1.0, "peak_rss_mb": 2000.0},
        {"case": "encode 8 images", "images": 8, "seconds": 1.0, "peak_rss_mb": 700.0},
        {"case": "encode 512 images", "images": 512, "seconds": 1.0, "peak_rss_mb": 700.0 + 0.75 * 504},
    ]
    from memory import streaming

    record = {"rows": rows, "streaming": streaming(rows)}
    assert record["streaming"]["mb_per_extra_image"] == pytest.approx(0.75)
    assert "0.7500 MB — **not met**" in "\n".join(report.memory_lines(record))
    rows[2]["peak_rss_mb"] = 705.0
    record["streaming"] = streaming(rows)
    assert "0.0099 MB — **met**" in "\n".join(report.memory_lines(record))


def test_long_run_memory_verdict_tells_a_plateau_from_a_leak():
    def record(trace):
        return {"memory_env": {}, "memory": [{"n": trace[-1][0], "peak_rss_mb": max(r for _, r in trace),
                                              "trace": trace}]}  # fmt: skip

    plateau = [[8 * i, 1150 + min(i, 30) * 4] for i in range(1, 101)]  # +120 MB over 30 batches, then flat
    assert "**met**" in report.tokenization_memory_lines(record(plateau))[-1]
    leak = [[8 * i, 1150 + i * 3.0] for i in range(1, 101)]  # 3 MB per batch of 8, all the way
    assert "**not met**" in report.tokenization_memory_lines(record(leak))[-1]


def test_records_without_a_clean_known_commit_are_refused(tmp_path):
    good = {"commit": HEAD, "dirty": False}
    for name, record, message in (
        ("dirty.json", {**good, "dirty": True}, "dirty checkout"),
        ("old.json", {k: v for k, v in good.items() if k != "dirty"}, "without provenance"),
        ("foreign.json", {**good, "commit": "0" * 40}, "not in this checkout's history"),
    ):
        (tmp_path / name).write_text(json.dumps(record))
        with pytest.raises(SystemExit, match=f"{name}.*{message}"):
            report.load(name, str(tmp_path))
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert report.load("good.json", str(tmp_path)) == good


def test_provenance_header_and_dirty_refusal(monkeypatch, tmp_path):
    header = provenance.provenance(str(ROOT / "benchmarks" / "run.py"), ["--json", "x.json"])
    assert header["commit"] == HEAD and header["command"] == "python benchmarks/run.py --json x.json"
    assert header["cpu"]["cores"] >= 1 and header["versions"]["jax"] and header["gpu"] is None
    monkeypatch.setattr(provenance, "tree_state", lambda: (HEAD, True))
    with pytest.raises(SystemExit, match="refusing to write out.json: tracked files differ"):
        provenance.check_can_record("out.json", allow_dirty=False)
    provenance.check_can_record("out.json", allow_dirty=True)  # allowed, and recorded as dirty
    provenance.check_can_record(None, allow_dirty=False)  # nothing written: nothing to refuse
    provenance.write_record(str(tmp_path / "r.json"), {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1} and not (tmp_path / "r.json.partial").exists()
    assert provenance.cpu_has_bf16_units({"isa": ["avx512f", "amx_bf16"]})
    assert not provenance.cpu_has_bf16_units({"isa": ["avx512f"]})


def test_a_record_names_the_tree_at_the_start_and_what_changed_during_the_run(monkeypatch, tmp_path):
    """A commit or an edit made while a harness measures must not be credited to the record: its
    commit is the one at check_can_record, and files changed since are listed and refused."""
    monkeypatch.setattr(provenance, "_STARTED", None)  # restored after the test
    changed_since = provenance.changed_since
    monkeypatch.setattr(provenance, "tree_state", lambda: (HEAD, False))
    provenance.check_can_record("out.json", allow_dirty=False)
    monkeypatch.setattr(provenance, "tree_state", lambda: ("f" * 40, True))  # committed and edited since
    header = provenance.provenance(str(ROOT / "benchmarks" / "run.py"), [])
    assert (header["commit"], header["dirty"]) == (HEAD, False)
    for changed, refused in ((["README.md"], False), (["README.md", "vqgan_flax/models/blocks.py"], True), ([], False)):
        monkeypatch.setattr(provenance, "changed_since", lambda commit, changed=changed: changed)
        provenance.write_record(str(tmp_path / "r.json"), header)
        record = json.loads((tmp_path / "r.json").read_text())
        assert record.get("changed_during_run", []) == changed
        if refused:
            with pytest.raises(SystemExit, match="r.json: vqgan_flax/models/blocks.py changed while the harness ran"):
                report.load("r.json", str(tmp_path))
        else:
            assert report.load("r.json", str(tmp_path)) == record
    assert changed_since(HEAD) == sorted(
        subprocess.run(["git", "diff", "--name-only", HEAD], cwd=ROOT, capture_output=True, text=True).stdout.split()
    )
    # A harness that saves after every measurement (run.py) has changed its own record by the
    # second save; that is not a change to the code that ran.
    monkeypatch.setattr(provenance, "ROOT", str(tmp_path))
    monkeypatch.setattr(provenance, "changed_since", lambda commit: ["r.json", "vqgan_flax/models/blocks.py"])
    provenance.write_record(str(tmp_path / "r.json"), header)
    assert json.loads((tmp_path / "r.json").read_text())["changed_during_run"] == ["vqgan_flax/models/blocks.py"]


def test_a_copy_git_cannot_read_counts_as_dirty(monkeypatch):
    monkeypatch.setattr(provenance, "_git", lambda *argv: "")  # no git, or not a checkout
    assert provenance.tree_state() == ("unknown", True)


def test_kernel_trace_classes_and_summary():
    import kernel_trace

    names = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
        "cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8": "matmul",
        "input_reduce_fusion_3": "reduction",
        "loop_multiply_fusion_2": "elementwise",
        "triton_poi_fused_add_convolution_silu_4": "convolution",  # inductor names the op it fuses into
        "transpose_fusion": "copy/transpose",
        "mystery": "other",
    }
    assert {name: kernel_trace.kernel_class(name) for name in names} == names
    summary = kernel_trace.summarize({"loop_add_fusion": 30.0, "input_reduce_fusion": 10.0, "x": 20.0}, calls=2, top=2)
    assert summary == {"total_us": 30.0, "classes": {"elementwise": 15.0, "other": 10.0, "reduction": 5.0},
                       "kernels": {"loop_add_fusion": 15.0, "x": 10.0}}  # fmt: skip


def test_gpu_tables_in_milliseconds_and_kernel_classes():
    record = {**_speed_record([(0.0031, 0.004)], {"torch-compile-bfloat16": [(0.0062, 0.008)]}, ours="jax-bfloat16"),
              "gpu": "NVIDIA H200"}  # fmt: skip
    table = report.speed_table(record)
    assert (
        "| encode ms | decode ms |" in table and "| jax-bfloat16 | 1 | 3.10 (3.10–3.10) | 4.00 (4.00–4.00) |" in table
    )
    assert "2.00 (2.00–2.00)x" in table
    summary = {"total_us": 6400.0, "classes": {"convolution": 4550.0, "reduction": 1850.0}}
    kernels = {"jax": {"encode": summary, "decode": summary}}
    lines = report.gpu_kernel_lines(kernels)
    assert lines[0] == "| side | call | kernels ms | convolution | reduction |"
    assert lines[2] == "| ours | encode | 6.40 | 4.55 | 1.85 |" and len(lines) == 4


def test_speed_block_header_and_what_the_harness_left_out():
    record = {**_speed_record([(1.0, 1.0)], {"torch-compile-float32": [(1.0, 1.0)]}), "preset": "tiny", "size": 32,
              "repeats": 3, "command": "python benchmarks/run.py", "date": "2026-11-29T00:00:00Z", "commit": HEAD,
              "dirty": False, "python": "3.12", "versions": {}, "cpu": {"model": "x", "cores": 2, "isa": []},
              "gpu": None, "tf32": None, "stopped": "--deadline-s 9: stopped before round 1",
              "failed": {"torch-eager-float32 batch 1": "round 0: boom"}}  # fmt: skip
    lines = report.speed_block("**CPU**", record)
    assert (
        lines[0].startswith("**CPU** — 2026-11-29") and "; tiny at 32², 1 round × 3 calls. Command: `python" in lines[0]
    )
    assert "TF32" not in lines[0] and "Stopped early: --deadline-s 9: stopped before round 1." in lines
    assert "Failed: torch-eager-float32 batch 1 (round 0: boom)." in lines
    gpu = report.speed_block("**GPU**", {**record, "gpu": "NVIDIA H200", "tf32": False, "stopped": None, "failed": {}})
    assert ", TF32 off on both sides. Command" in gpu[0] and not any(line.startswith("Stopped") for line in gpu)


def test_a_follow_up_on_another_cpu_says_how_its_isa_differs():
    amx = {"cpu": {"isa": ["amx_bf16", "avx512_bf16", "avx512f"]}}
    plain = {"cpu": {"isa": ["avx512_bf16", "avx512f", "avx512_fp16"]}}
    assert report.isa_difference(amx, amx) == ""
    assert report.isa_difference(plain, amx) == ", on a CPU without amx_bf16 and with avx512_fp16"
    assert report.isa_difference(amx, plain) == ", on a CPU without avx512_fp16 and with amx_bf16"


def test_a_tie_between_round_winners_goes_to_the_lower_median():
    # Each of three peers won one round: the one with the lowest median decode time is named.
    times = {"torch-a": [1.0, 3.0, 3.0], "torch-b": [3.0, 1.0, 3.0], "torch-c": [2.5, 2.5, 1.0]}
    measurements = [{"system": s, "batch": 1, "decode_s": t} for s, ts in times.items() for t in ts]
    assert report._usual_winner(["torch-a", "torch-b", "torch-c"], measurements, 1, "decode") == "torch-c"
    assert report._usual_winner(["torch-a", "torch-b", "torch-b"], measurements, 1, "decode") == "torch-b"


def test_compile_caches_are_one_per_run_unless_the_caller_names_them(monkeypatch, tmp_path):
    import harness

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # set but empty: not a folder, not kept
    env, inherited = harness.compile_caches(str(tmp_path))
    assert inherited == [] and env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/inductor")
    env, inherited = harness.compile_caches(str(tmp_path))
    assert inherited == ["TORCHINDUCTOR_CACHE_DIR"] and env["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/inductor"
    # the table says so, since round 0's first call may then be warm
    record = _speed_record([(1.0, 1.0)], {"torch-compile-float32": [(1.0, 1.0)]})
    assert "(enc / dec) |" in report.speed_table(record)
    record["compile_caches_inherited"] = inherited
    assert "(enc / dec, caller's compile caches) |" in report.speed_table(record)
