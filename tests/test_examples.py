"""The README's main job (`make demo`) runs and reports exact parity."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import FIXTURES


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
