"""The vqgan-flax command line, end to end on a tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from utils import FIXTURES

from vqgan_flax import FlaxVQGANModel, VQGANConfig, VQGANImageProcessor
from vqgan_flax.cli import main
from vqgan_flax.data.image_io import load_image, to_uint8
from vqgan_flax.evaluation.metrics import chroma_mse, chroma_psnr, psnr, ssim
from vqgan_flax.utils.files import atomic_write


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(20, 24), (16, 16), (30, 18)]):
        coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize(size[::-1], Image.Resampling.BILINEAR).save(folder / f"img{i}.png")
    return str(folder)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_then_decode_equals_python_api(tiny, images, tmp_path, capsys):
    code, out, _ = _run(capsys, "encode", images, "--out", tmp_path / "t.npz", "--model", tiny, "--quiet",
                        "--batch-size", 2)  # fmt: skip
    assert code == 0 and "wrote 3 x 8x8 tokens" in out
    record = np.load(tmp_path / "t.npz")
    assert record["tokens"].shape == (3, 8, 8) and tuple(record["grid_shape"]) == (8, 8)
    assert str(record["model"]) == tiny and len(record["files"]) == 3
    model = FlaxVQGANModel.from_pretrained(tiny)
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    expected = np.asarray(model.encode(np.stack([load_image(f, 16) for f in files])).indices).reshape(3, 8, 8)
    np.testing.assert_array_equal(record["tokens"], expected)

    code, out, _ = _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "dec", "--model", tiny, "--quiet")
    assert code == 0
    decoded = np.asarray(Image.open(tmp_path / "dec" / "img0.png"))
    np.testing.assert_array_equal(decoded, to_uint8(model.decode_code(expected[:1]))[0])


def test_reconstruct_writes_pngs_and_correct_metrics(tiny, images, tmp_path, capsys):
    code, out, _ = _run(capsys, "reconstruct", images, "--out", tmp_path / "rec", "--model", tiny, "--quiet")
    assert code == 0 and out.splitlines()[-1].startswith("mean ") and "PSNR" in out
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert len(metrics["images"]) == 3
    assert sorted(row["key"] for row in metrics["images"]) == ["img0.png", "img1.png", "img2.png"]
    for row in metrics["images"]:
        side = np.asarray(Image.open(tmp_path / "rec" / "side_by_side" / row["key"]))
        recon = np.asarray(Image.open(tmp_path / "rec" / "reconstructions" / row["key"]))
        assert side.shape == (16, 32, 3)
        np.testing.assert_array_equal(side[:, 16:], recon)
        assert row["psnr"] == pytest.approx(psnr(side[:, :16], recon))
        assert row["ssim"] == pytest.approx(ssim(side[:, :16], recon))
    assert metrics["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in metrics["images"]]))


def test_replicate_uses_all_devices_with_the_same_result(tiny, images, tmp_path, capsys):
    for flag in ([], ["--replicate"]):
        out = tmp_path / f"t{len(flag)}.npz"
        assert (
            _run(capsys, "encode", images, "--out", out, "--model", tiny, "--quiet", "--batch-size", 3, *flag)[0] == 0
        )
        assert (
            _run(capsys, "decode", out, "--out", tmp_path / f"d{len(flag)}", "--model", tiny, "--quiet", *flag)[0] == 0
        )
    np.testing.assert_array_equal(np.load(tmp_path / "t0.npz")["tokens"], np.load(tmp_path / "t1.npz")["tokens"])
    for name in ("img0.png", "img2.png"):
        a = np.asarray(Image.open(tmp_path / "d0" / name), np.int16)
        b = np.asarray(Image.open(tmp_path / "d1" / name), np.int16)
        assert np.abs(a - b).max() <= 1  # float32 on 1 vs 8 devices; rounding to uint8 may differ by 1


def test_info(tiny, capsys):
    code, out, _ = _run(capsys, "info", tiny, "--size", 32)
    assert code == 0
    assert "codebook 32 x 8" in out and "downsampling factor: 2" in out and "256 (16x16) at 32x32" in out


@pytest.mark.parametrize(
    "make, argv, message",
    [
        (None, ["encode", "{tmp}/missing.png", "--out", "{tmp}/t.npz"], "missing.png: no such file or folder"),
        (lambda t: (t / "bad.png").write_text("not an image"), ["encode", "{tmp}/bad.png", "--out", "{tmp}/t.npz"],
         "cannot identify image file"),
        (lambda t: (t / "bad.npz").write_text("garbage"), ["decode", "{tmp}/bad.npz", "--out", "{tmp}/d"],
         "bad.npz: not a token file"),
        (lambda t: np.savez(t / "oob.npz", tokens=np.full((1, 8, 8), 32)),
         ["decode", "{tmp}/oob.npz", "--out", "{tmp}/d"], "token 32 is outside the model's codebook [0, 32)"),
        (lambda t: np.savez(t / "flat.npz", tokens=np.zeros((1, 64), np.int32)),
         ["decode", "{tmp}/flat.npz", "--out", "{tmp}/d"], "expected an integer 'tokens' array of shape (N, h, w)"),
    ],
)  # fmt: skip
def test_bad_inputs_give_one_line_and_exit_1(tiny, tmp_path, capsys, make, argv, message):
    if make:
        make(tmp_path)
    code, _, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv], "--model", tiny, "--quiet")
    assert code == 1
    assert err.count("\n") == 1 and message in err, err


def test_model_with_missing_weights(tiny, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((FIXTURES / "vqganjax" / "checkpoint" / "config.json").read_bytes())
    code, _, err = _run(capsys, "info", broken)
    assert code == 1 and err.count("\n") == 1 and "flax_model.msgpack" in err


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "tokens.npz"

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), crash)
    assert os.listdir(tmp_path) == []


def test_train_command_and_console_script(tmp_path, images):
    """The installed `vqgan-flax` entry point trains a few steps and the result loads."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")
    result = subprocess.run(
        [script, "train", "--data", str(data), "--output", str(tmp_path / "run"), "--config", "tiny", "--steps", "2",
         "--batch-size", "8", "--crop-size", "32", "--disc-start", "1", "--log-every", "1", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained to step 2" in result.stdout
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logs] == [1, 2] and logs[1]["disc_factor"] == 1.0
    assert FlaxVQGANModel.from_pretrained(tmp_path / "run" / "model").config.ch == 32


def test_metrics_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-9)
    expected = structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    # skimage crops the filter radius before averaging, as our valid-region filter does: equal to rounding.
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


def test_chroma_psnr_matches_pillows_ycbcr():
    from PIL import Image

    rng = np.random.default_rng(3)
    a = rng.integers(30, 226, (40, 36, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    # Pillow's YCbCr is JPEG's full-range BT.601 rounded to integers: equal up to that rounding.
    planes = [np.asarray(Image.fromarray(x).convert("YCbCr"), np.float64)[..., 1:] for x in (a, b)]
    expected = 10 * np.log10(255.0**2 / np.mean((planes[0] - planes[1]) ** 2))
    assert chroma_psnr([a, a], [b, b]) == pytest.approx(expected, abs=0.05)
    grey_shift = np.clip(a.astype(int) + 9, 0, 255).astype(np.uint8)
    assert chroma_mse(a[:8, :8], grey_shift[:8, :8]) < 1e-12  # a luminance change has no colour error
    red = a.copy()
    red[..., 0] = np.clip(red[..., 0].astype(int) - 51, 0, 255)
    moved = 0.2 * (a[..., 0] >= 51) + (a[..., 0] / 255) * (a[..., 0] < 51)
    assert chroma_mse(a, red) == pytest.approx(np.mean(moved**2) * (0.168736**2 + 0.25) / 2, rel=1e-9)
    assert chroma_psnr([a], [a]) == float("inf")
    grey = np.repeat(a[..., :1], 3, axis=-1)
    assert chroma_psnr([grey], [np.clip(grey.astype(int) + 3, 0, 255).astype(np.uint8)]) == float("inf")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB images of one shape; got \(40, 36, 3\) and \(40, 36\)"):
        chroma_mse(a, a[..., 0])
    with pytest.raises(ValueError, match="equally long, non-empty lists of images; got 2 and 1"):
        chroma_psnr([a, a], [a])


def test_train_fine_tunes_an_existing_model(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(data / "a.png")
    code, _, err = _run(capsys, "train", "--data", data, "--output", tmp_path / "ft", "--init-from", tiny,
                          "--steps", 1, "--batch-size", 8, "--crop-size", 32, "--quiet",
                          "--min-scale", 0.5, "--colour-jitter", 0.1, "--tint", 0.1, "--channel-shuffle",
                          "--chroma-weight", 2.5, "--colour-anchor-weight", 0.5, "--ssim-weight", 0.1)  # fmt: skip
    assert code == 0, err
    trained = json.loads((tmp_path / "ft" / "training_config.json").read_text())
    assert (trained["chroma_weight"], trained["colour_anchor_weight"], trained["ssim_weight"]) == (2.5, 0.5, 0.1)
    start = FlaxVQGANModel.from_pretrained(tiny).params["decoder"]["conv_out"]["kernel"]
    tuned = FlaxVQGANModel.from_pretrained(tmp_path / "ft" / "model").params["decoder"]["conv_out"]["kernel"]
    assert 0 < float(np.abs(np.asarray(tuned) - np.asarray(start)).max()) < 0.01  # one small step from the start
    # Augmentation values are refused by the parser, before the (here missing) model is loaded.
    for option, value, message in (("--tint", 1.5, "tint must be in [0, 1); got 1.5"),
                                   ("--colour-jitter", -0.1, "colour-jitter must be in [0, 1); got -0.1"),
                                   ("--min-scale", 0, "min-scale must be in (0, 1]; got 0"),
                                   ("--tint", "red", "'red' is not a number"),
                                   ("--ssim-weight", "nan", "nan is not a finite number"),
                                   ("--ssim-weight", -1, "-1 is below the minimum 0.0")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["train", "--data", str(data), "--output", str(tmp_path / "bad"), "--init-from",
                  str(tmp_path / "missing"), option, str(value)])  # fmt: skip
        err = capsys.readouterr().err
        assert f"argument {option}: {message}" in err and "missing" not in err


def test_second_process_reuses_compiled_programs(tiny, images, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "VQGAN_FLAX_CACHE_DIR": str(cache)}
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")
    entries = []
    for run in range(2):
        argv = [script, "encode", images, "--out", str(tmp_path / f"t{run}.npz"), "--model", tiny, "--quiet"]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        entries.append({name: os.stat(cache / name).st_mtime_ns for name in os.listdir(cache)})
    assert any(name.startswith("jit_apply") for name in entries[0])
    # A miss would compile and (re)write its entry; the second process only read the cache.
    assert entries[1] == entries[0]


def test_bucket_size_rounds_chunks_up_to_powers_of_two():
    from vqgan_flax.cli import bucket_size

    assert [bucket_size(n, 8) for n in (1, 2, 3, 5, 7, 8)] == [1, 2, 4, 8, 8, 8]
    assert bucket_size(5, 6) == 6
    for bad in (0, 9):
        with pytest.raises(ValueError, match=f"chunk of {bad} items"):
            bucket_size(bad, 8)


def test_ragged_last_chunk_reuses_the_compiled_batch_shape(tiny):
    from vqgan_flax.cli import Runner

    model = FlaxVQGANModel.from_pretrained(tiny)
    pixels = np.random.default_rng(1).uniform(-1, 1, (7, 32, 32, 3)).astype(np.float32)
    processor = VQGANImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    runner = Runner(model, replicate=False, batch_size=4, processor=processor)
    tokens = np.concatenate([runner.encode(pixels[:4], (16, 16)), runner.encode(pixels[4:], (16, 16))])
    np.testing.assert_array_equal(tokens, np.asarray(model.encode(pixels).indices).reshape(7, 16, 16))
    (encode,) = [fn for key, fn in model.compiled.items() if key[0] == "encode"]
    assert encode._cache_size() == 2  # batch 4 (both chunks) and batch 7 (the reference call)
    images = np.concatenate([runner.decode(tokens[:4]), runner.decode(tokens[4:])])
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, to_uint8(model.decode_code(tokens)))


def test_convert_through_the_entry_point_as_the_readme_shows_it(tmp_path):
    """`vqgan-flax convert --checkpoint ... --config ... --output ...` (argparse used to refuse its options)."""
    script = os.path.join(os.path.dirname(sys.executable), "vqgan-flax")
    taming = FIXTURES / "taming_vq"
    result = subprocess.run(
        [script, "convert", "--checkpoint", str(taming / "last.ckpt"), "--config", str(taming / "model.yaml"),
         "--output", str(tmp_path / "converted")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout
    # What the entry point wrote is what the Python API converts: the yaml's architecture, the same weights.
    from vqgan_flax.conversion import convert_taming_checkpoint

    config = VQGANConfig.from_taming_yaml(taming / "model.yaml")
    convert_taming_checkpoint(taming / "last.ckpt", tmp_path / "python", config)
    converted, expected = (FlaxVQGANModel.from_pretrained(tmp_path / n) for n in ("converted", "python"))
    fields = [{k: v for k, v in m.config.to_dict().items() if not k.startswith("_")} for m in (converted, expected)]
    assert fields[0] == fields[1] and converted.config.n_embed == 64
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(converted.params), jax.tree.leaves(expected.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=600)
    assert version.returncode == 0 and version.stdout.strip() == f"vqgan-flax {__import__('vqgan_flax').__version__}"


def test_ctrl_c_is_one_line_and_status_130(tiny, images, tmp_path, capsys, monkeypatch):
    import vqgan_flax.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.Runner, "encode", interrupted)
    code, _, err = _run(capsys, "encode", images, "--out", tmp_path / "t.npz", "--model", tiny, "--quiet")
    assert code == 130 and err == "vqgan-flax encode: interrupted\n"
    assert not (tmp_path / "t.npz").exists()


def test_decode_uses_the_model_recorded_in_the_token_file(tiny, images, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other"
    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=1).save_pretrained(other)
    monkeypatch.chdir(tmp_path)  # the model is recorded as an absolute path
    code, _, _ = _run(capsys, "encode", images, "--out", "t.npz", "--model", os.path.relpath(other), "--quiet")
    assert code == 0 and str(np.load("t.npz")["model"]) == str(other)
    monkeypatch.chdir(images)
    assert _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "recorded", "--quiet")[0] == 0
    assert _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "given", "--model", other, "--quiet")[0] == 0
    shutil.copytree(other, tmp_path / "copy")  # the same weights elsewhere: the same model
    code, _, _ = _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "copied", "--model", tmp_path / "copy")
    assert code == 0
    for name in os.listdir(tmp_path / "recorded"):
        assert (tmp_path / "copied" / name).read_bytes() == (tmp_path / "recorded" / name).read_bytes()
    # Other weights (seed 0, not 1) would decode the tokens into other pixels: refused, nothing written.
    code, _, err = _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "wrong", "--model", tiny, "--quiet")
    digest = str(np.load(tmp_path / "t.npz")["model_digest"])
    assert code == 1 and f"model_digest={digest!r}" in err and "other weights" in err, err
    assert not (tmp_path / "wrong").exists()
    for name in ("img0.png", "img1.png"):
        recorded = np.asarray(Image.open(tmp_path / "recorded" / name))
        np.testing.assert_array_equal(recorded, np.asarray(Image.open(tmp_path / "given" / name)))
    np.savez(tmp_path / "gone.npz", tokens=np.zeros((1, 8, 8), np.int32), model=np.asarray(str(tmp_path / "gone")))
    code, _, err = _run(capsys, "decode", tmp_path / "gone.npz", "--out", tmp_path / "g", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert f"gone.npz was made with model '{tmp_path / 'gone'}', which does not load here" in err


def test_pixel_range_comes_from_the_model_folder(tiny, images, tmp_path, capsys):
    """A model that takes [0, 1] (DALL·E-mini's fine-tuned VQGAN) says so in preprocessor_config.json."""
    zero_one = tmp_path / "zero_one"
    FlaxVQGANModel.from_pretrained(tiny).save_pretrained(zero_one)
    VQGANImageProcessor(pixel_range=(0.0, 1.0), size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
                        ).save_pretrained(zero_one)  # fmt: skip
    assert _run(capsys, "encode", images, "--out", tmp_path / "t.npz", "--model", zero_one, "--quiet")[0] == 0
    model = FlaxVQGANModel.from_pretrained(zero_one)
    processor = VQGANImageProcessor.from_pretrained(zero_one)
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    pixels01 = processor([Image.open(f) for f in files])["pixel_values"]
    assert pixels01.min() >= 0.0 and pixels01.max() <= 1.0
    expected = np.asarray(model.encode(pixels01).indices).reshape(3, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "t.npz")["tokens"], expected)
    assert _run(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "dec", "--quiet")[0] == 0
    decoded = np.asarray(Image.open(tmp_path / "dec" / "img0.png"))
    np.testing.assert_array_equal(decoded, processor.postprocess(model.decode_code(expected[:1]))[0])
    # --pixel-range overrides the folder; decode then follows what the token file records.
    code, _, _ = _run(capsys, "encode", images, "--out", tmp_path / "r.npz", "--model", zero_one, "--quiet",
                      "--pixel-range", "-1", "1")  # fmt: skip
    assert code == 0 and np.load(tmp_path / "r.npz")["pixel_range"].tolist() == [-1.0, 1.0]
    plain = np.asarray(model.encode(np.stack([load_image(f, 16) for f in files])).indices).reshape(3, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "r.npz")["tokens"], plain)
    (zero_one / "preprocessor_config.json").write_text('{"pixel_range": [1, 0]}')
    code, _, err = _run(capsys, "encode", images, "--out", tmp_path / "u.npz", "--model", zero_one, "--quiet")
    assert code == 1 and "preprocessor_config.json: not a usable image processor config" in err
    assert "pixel_range must be (low, high) with low < high" in err
