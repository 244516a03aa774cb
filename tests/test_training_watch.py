"""Watching a run (issue 35): `vqgan-flax train --val-data` scores the held-out images every
--val-every steps and at the end (PSNR, SSIM, code usage in log.jsonl), saves a grid of their
reconstructions, and with --tensorboard writes event files holding the same scalars."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from utils import run_cli

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.train.watch import RunWriter, ValidationSet, sample_grid, to_uint8, validate


def _folder(path, count, seed, size=(28, 20)):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def _events(folder):
    """``(tag -> [(step, value)], image tag -> [step])`` of the TensorBoard event files in
    ``folder``, read as TFRecords (length, its CRC, the Event proto, its CRC) with tensorboardX's proto."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars, images = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append(event.step)
                else:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, images


@pytest.mark.one_stack  # numpy scoring and event files over the trainer both stacks test
def test_validation_scores_grids_and_tensorboard_events(tmp_path, capsys):
    data, held_out, run = _folder(tmp_path / "d", 2, 0), _folder(tmp_path / "v", 3, 1), tmp_path / "run"
    argv = ["train", "--data", data, "--val-data", held_out, "--output", run, "--config", "tiny", "--steps", 4,
            "--batch-size", 8, "--crop-size", 16, "--disc-start", 2, "--disc-num-layers", 1, "--disc-ndf", 16,
            "--log-every", 1, "--val-every", 2, "--tensorboard", "--quiet"]  # fmt: skip
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scores = [line for line in lines if "val_psnr" in line]
    assert [line["step"] for line in scores] == [2, 4]
    for line in scores:
        assert 0 < line["val_psnr"] < 60 and -1 <= line["val_ssim"] <= 1
        assert 1 <= line["val_perplexity"] <= 32 and 0 <= line["val_dead_code_share"] < 1
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["step-0000002.png", "step-0000004.png"]
    assert Image.open(run / "samples" / grids[0]).size == (3 * 16, 2 * 16)  # 3 originals over 3 reconstructions
    scalars, images = _events(run / "tensorboard")
    assert [step for step, _ in scalars["val/psnr"]] == [2, 4]
    assert [value for _, value in scalars["val/psnr"]] == pytest.approx([s["val_psnr"] for s in scores], rel=1e-5)
    assert len(scalars["train/nll_loss"]) == 4 and images == {"val/reconstructions": [2, 4]}


def test_validate_scores_a_model_on_the_held_out_centre_crops(tmp_path):
    """The held-out images are resized and centre-cropped; validate's PSNR is the evaluation's on
    the model's reconstructions; the grid puts originals over reconstructions."""
    held_out = ValidationSet([np.full((30, 20, 3), 200, np.uint8), np.zeros((16, 40, 3), np.uint8)], 16)
    assert held_out.images.shape == (2, 16, 16, 3) and int(held_out.images[0].min()) == 200
    np.testing.assert_allclose(held_out.pixels()[1], -1.0)
    model = FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0)
    scores = validate(model, model.params, held_out, batch_size=1)
    direct = to_uint8(model(held_out.pixels()).reconstruction)
    np.testing.assert_array_equal(scores["reconstructions"], direct)
    from vqgan_flax.evaluation.metrics import psnr

    assert scores["val_psnr"] == pytest.approx(np.mean([psnr(a, b) for a, b in zip(held_out.images, direct)]))
    grid = sample_grid(held_out.images, scores["reconstructions"])
    assert grid.shape == (32, 32, 3) and np.array_equal(grid[:16, :16], held_out.images[0])
    with pytest.raises(ValueError, match="no validation images"):
        ValidationSet([], 16)
    writer = RunWriter(str(tmp_path / "w"))
    writer.log({"step": 1, "loss": 0.5})
    assert writer.samples(1, grid).endswith("samples/step-0000001.png") and writer.events is None
    writer.close()
    assert json.loads((tmp_path / "w" / "log.jsonl").read_text()) == {"step": 1, "loss": 0.5}
