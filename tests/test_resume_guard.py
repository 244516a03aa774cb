"""Guarded resume (issue 35): a rerun of `vqgan-flax train` into a run folder with other settings
than the run was started with is refused, naming each field with its old and new value, and
touches no file; --allow-change accepts a named field; the same command resumes and the log goes
on; --steps may grow; the record keeps the architecture and the data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from utils import run_cli

from vqgan_flax.train.resume import FREE, ResumeRefused, check_resume, run_record


def _snapshot(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


@pytest.mark.one_stack  # the guard is plain Python over the record; the trainer is tested on both stacks
def test_a_changed_resume_is_refused_untouched_and_the_same_command_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", data, "--output", run, "--config", "tiny", "--batch-size", 8, "--crop-size", 16,
            "--disc-start", 1, "--disc-num-layers", 1, "--disc-ndf", 16, "--log-every", 1, "--quiet"]  # fmt: skip
    code, _, err = run_cli(capsys, *base, "--steps", 2)
    assert code == 0, err
    record = json.loads((run / "training_config.json").read_text())
    assert record["step"] == 2 and record["model_config"]["ch"] == 32 and record["data"]["images"] == 2
    before = _snapshot(run)
    # The case: a new learning rate, and --disc-start left out (its default would turn the GAN off).
    without_disc_start = [
        a for i, a in enumerate(base) if a != "--disc-start" and (i == 0 or base[i - 1] != "--disc-start")
    ]
    code, _, err = run_cli(capsys, *without_disc_start, "--steps", 4, "--learning-rate", 0.01)
    assert code == 1
    assert "resuming the run at step 2 with other settings" in err
    assert "disc_start: 1 -> 10000" in err and "learning_rate: 0.0001 -> 0.01" in err, err
    assert "--allow-change FIELD" in err and "nothing was written" in err
    assert _snapshot(run) == before, "a refused resume touched the run folder"
    code, _, err = run_cli(capsys, *base, "--steps", 3, "--crop-size", 24)
    assert code == 1 and "crop_size: 16 -> 24" in err and "data.crop_size: 16 -> 24" in err
    code, _, err = run_cli(capsys, *base, "--steps", 1)
    assert code == 1 and "steps: 2 -> 1" in err
    # The same command with more steps (and another log interval) resumes; the log goes on.
    code, _, err = run_cli(capsys, *base, "--steps", 4, "--log-every", 2)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4]
    # A named change is accepted, and recorded for the next resume.
    code, _, err = run_cli(capsys, *base, "--steps", 5, "--learning-rate", 0.002, "--allow-change", "learning-rate")
    assert code == 0, err
    assert json.loads((run / "training_config.json").read_text())["learning_rate"] == 0.002
    code, _, err = run_cli(capsys, *base, "--steps", 6, "--allow-change", "learning_rat")
    assert code == 1 and "--allow-change learning_rat: not a setting of a run" in err


def test_check_resume_compares_every_section_and_old_records(tmp_path):
    """An older run's record (training fields only) is compared on those; model and data changes
    are named by path; the logging intervals are free; nothing is written."""
    training = {"steps": 10, "learning_rate": 1e-4, "log_every": 5, "save_every": 100}
    model = {"ch": 32, "ch_mult": [1, 2], "transformers_version": "4.57.6", "_name_or_path": "x"}
    record = run_record(training, model, {"source": "/d", "images": 3})
    assert "transformers_version" not in record["model_config"] and "_name_or_path" not in record["model_config"]
    assert check_resume(str(tmp_path), record) is None  # no record: a fresh run
    (tmp_path / "training_config.json").write_text(json.dumps({**training, "step": 4}))
    assert check_resume(str(tmp_path), run_record(training, {"ch": 64}, {"images": 9}))["step"] == 4
    (tmp_path / "training_config.json").write_text(json.dumps({**record, "step": 4}))
    changed = run_record({**training, "log_every": 1, "save_every": 7}, {**model, "ch_mult": (1, 2)}, record["data"])
    assert check_resume(str(tmp_path), changed)["step"] == 4 and set(FREE) == {
        "log_every",
        "save_every",
        "val_every",
        "tensorboard",
    }
    other = run_record(training, {**model, "ch": 64}, {"source": "/e", "images": 3})
    with pytest.raises(ResumeRefused, match=r"data.source: '/d' -> '/e'; model_config.ch: 32 -> 64\. Give"):
        check_resume(str(tmp_path), other)
    assert check_resume(str(tmp_path), other, allow_change=["model_config", "data.source"])["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_config.json"]
