"""What a newcomer meets in the first hour: the output format read from ``--out``, missing extras
named at once, files that honour the umask, the shipped model's processor config, refused runs
that leave nothing behind, one token shard decoded, help text with one default per option, a
command line that starts without JAX or transformers, and docs that name only flags that exist."""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image
from utils import run_cli

import vqgan_flax
from vqgan_flax import FlaxVQGANModel
from vqgan_flax.cli import build_parser
from vqgan_flax.cli.common import HelpFormatter
from vqgan_flax.cli.encode import output_format
from vqgan_flax.utils.extras import MissingExtra, require

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_format_follows_out(tmp_path):
    (tmp_path / "existing").mkdir()
    assert output_format("-", None) == "npz"
    assert output_format(str(tmp_path / "t.npz"), None) == "npz"
    assert output_format(str(tmp_path / "tokdir") + "/", None) == "parquet"
    assert output_format(str(tmp_path / "tokdir"), None) == "parquet"
    assert output_format(str(tmp_path / "existing"), None) == "parquet"
    assert output_format(str(tmp_path / "lwm.jsonl"), None) == "jsonl"
    assert output_format(str(tmp_path / "x.parquet"), None) == "parquet"
    assert output_format(str(tmp_path / "tokdir"), "jsonl") == "jsonl"
    with pytest.raises(ValueError, match=r"cannot tell the format from \.bin; give --format"):
        output_format(str(tmp_path / "t.bin"), None)
    with pytest.raises(ValueError, match=r"looks like npz, but --format is parquet"):
        output_format(str(tmp_path / "t.npz"), "parquet")
    with pytest.raises(ValueError, match=r"tokdir/: is a folder, and npz output is one file"):
        output_format(str(tmp_path / "tokdir") + "/", "npz")
    with pytest.raises(ValueError, match=r"--out -: jsonl output is a folder of shards"):
        output_format("-", "jsonl")


def test_encode_into_a_folder_writes_parquet(tiny, photos, tmp_path, capsys):
    """``encode photos/ --out tokdir/`` (no --format) used to encode everything as npz, then fail
    with 'Not a directory'."""
    code, out, err = run_cli(capsys, "encode", photos, "--out", f"{tmp_path / 'tokdir'}/", "--model", tiny, "--quiet")
    assert code == 0 and "wrote 2 x 8x8 tokens" in out, err
    assert sorted(os.listdir(tmp_path / "tokdir")) == [".vqgan_flax", "part-000-00000.parquet"]


def test_a_format_mismatch_is_refused_before_the_model_loads(photos, tmp_path, capsys):
    code, _, err = run_cli(capsys, "encode", photos, "--out", tmp_path / "t.npz", "--format", "parquet",
                        "--model", tmp_path / "no-such-model")  # fmt: skip
    assert code == 1 and "looks like npz, but --format is parquet" in err and "no-such-model" not in err
    assert os.listdir(tmp_path) == []


def test_missing_extras_fail_at_once_naming_the_install(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(
        MissingExtra, match=r'reading videos needs av, which is not installed: pip install "vqgan-flax\[video\]"'
    ):
        require("av")
    clips = tmp_path / "clips"  # an image and a video: the video used to become one skipped item, exit 0
    clips.mkdir()
    (clips / "b.mp4").write_bytes(b"\x00" * 64)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(clips / "a.png")
    code, _, err = run_cli(capsys, "encode", clips, "--media", "auto", "--out", tmp_path / "v.npz",
                        "--model", tmp_path / "no-such-model")  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and 'pip install "vqgan-flax[video]"' in err, err
    assert not (tmp_path / "v.npz").exists()
    # Images only: PyAV is not needed, and not asked for.
    assert require("datasets") is None and "datasets" in sys.modules
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "saved").mkdir()  # a saved dataset (parquet files are read without datasets)
    (tmp_path / "saved" / "state.json").write_text("{}")
    code, _, err = run_cli(capsys, "encode", tmp_path / "saved", "--source", "hf", "--out", tmp_path / "h.npz")
    assert code == 1 and 'pip install "vqgan-flax[datasets]"' in err, err


def test_every_writer_honours_the_umask(tiny, photos, tmp_path, capsys):
    previous = os.umask(0o002)  # group-writable: neither 0600 (mkstemp, save_file) nor a fixed 0644
    try:
        model = FlaxVQGANModel.from_pretrained(tiny)
        model.save_pretrained(tmp_path / "safe", safe_serialization=True)
        model.save_pretrained(tmp_path / "msgpack", safe_serialization=False)
        taming = ROOT / "tests" / "fixtures" / "taming_vq"
        assert run_cli(capsys, "convert", "--checkpoint", taming / "last.ckpt", "--config", taming / "model.yaml",
                    "--output", tmp_path / "converted")[0] == 0  # fmt: skip
        assert (
            run_cli(capsys, "convert", "--to-taming", tmp_path / "safe", "--output", tmp_path / "t.safetensors")[0] == 0
        )
        assert run_cli(capsys, "encode", photos, "--out", tmp_path / "t.npz", "--model", tiny, "-q")[0] == 0
        assert run_cli(capsys, "encode", photos, "--out", tmp_path / "shards", "--model", tiny, "-q")[0] == 0
        from vqgan_flax.train.trainer import TrainingConfig, VQGANTrainer

        trainer = VQGANTrainer(model, TrainingConfig(crop_size=32, disc_weight=0.0))
        trainer.save(trainer.init_state(), str(tmp_path / "run"))
    finally:
        os.umask(previous)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 14
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o664, f"{path}: {oct(path.stat().st_mode & 0o777)}"


def test_the_shipped_model_has_its_processor_config():
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(vqgan_flax.DEFAULT_MODEL)
    assert isinstance(processor, vqgan_flax.VQGANImageProcessor)
    config = vqgan_flax.VQGANConfig.from_pretrained(vqgan_flax.DEFAULT_MODEL)
    assert processor.output_size == (config.resolution, config.resolution) and processor.pixel_range == [-1.0, 1.0]
    with open(ROOT / "pyproject.toml", "rb") as f:
        shipped = tomllib.load(f)["tool"]["setuptools"]["package-data"]["vqgan_flax"]
    assert "default_model/*" in shipped  # preprocessor_config.json is installed with the package


def test_refused_runs_leave_nothing_behind(tiny, photos, tmp_path, capsys):
    np.savez(tmp_path / "far.npz", tokens=np.full((1, 4, 4), 999, np.int32), keys=np.asarray(["a"]))
    code, _, err = run_cli(capsys, "decode", tmp_path / "far.npz", "--out", tmp_path / "out", "--model", tiny)
    assert code == 1 and "token 999 is outside the model's codebook [0, 32)" in err
    missing = tmp_path / "no-such-model"
    for argv in (["decode", tmp_path / "far.npz", "--out", tmp_path / "out2"],
                 ["encode", photos, "--out", tmp_path / "shards"],
                 ["reconstruct", photos, "--out", tmp_path / "recon"]):  # fmt: skip
        code, _, err = run_cli(capsys, *argv, "--model", missing)
        assert code == 1 and "no-such-model: no such model folder" in err, err
    assert sorted(os.listdir(tmp_path)) == ["far.npz"]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_decode_reads_one_token_shard(tiny, photos, tmp_path, capsys, fmt):
    assert (
        run_cli(capsys, "encode", photos, "--out", tmp_path / "shards", "--format", fmt, "--model", tiny, "-q")[0] == 0
    )
    shard = tmp_path / "shards" / f"part-000-00000.{fmt}"
    code, out, err = run_cli(capsys, "decode", shard, "--out", tmp_path / "one", "-q")  # the model as recorded
    assert code == 0 and "wrote 2 images" in out, err
    assert run_cli(capsys, "decode", tmp_path / "shards", "--out", tmp_path / "all", "-q")[0] == 0
    for name in ("p0.png", "p1.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_option_has_help_with_one_default():
    parser = build_parser()
    formatter = HelpFormatter("vqgan-flax")
    checked = 0
    for name, sub in [("vqgan-flax", parser), *_subparsers(parser)]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            text = formatter._expand_help(action)
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert text and text.strip(), f"{where}: no help"
            assert text.count("(default") <= 1, f"{where}: {text}"
            has_value = action.default is not None and action.default is not False
            if has_value and action.option_strings:
                assert "default" in text, f"{where} defaults to {action.default!r} without saying so"
            checked += 1
    assert checked > 80
    help_text = dict(_subparsers(parser))["train"].format_help()
    assert "TrainingConfig's field" not in help_text and "(default: 10000)" in help_text  # --disc-start


def test_the_command_line_starts_without_jax_or_transformers():
    """What makes ``vqgan-flax --help`` / ``--version`` take seconds is importing JAX, flax or
    transformers; neither is imported to build the parser (``benchmarks/cli_startup.py`` times it)."""
    code = (
        "import sys\n"
        "from vqgan_flax.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'transformers', 'torch', 'PIL') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    version = subprocess.run([sys.executable, "-m", "vqgan_flax.cli", "--version"], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)  # fmt: skip
    assert version.stdout.strip() == f"vqgan-flax {vqgan_flax.__version__}" and version.stderr == ""


def test_auto_classes_resolve_vqgan_in_either_import_order(tiny):
    """``import vqgan_flax`` no longer imports transformers; AutoConfig still resolves ``vqgan``
    whether transformers is imported before or after it, or only through our own modules."""
    checks = (
        "from transformers import AutoConfig, AutoImageProcessor\n"
        f"assert AutoConfig.from_pretrained({tiny!r}).model_type == 'vqgan'\n"
        f"print(type(AutoImageProcessor.from_pretrained({str(vqgan_flax.DEFAULT_MODEL)!r})).__name__)\n"
    )
    orders = ("import vqgan_flax\n", "import transformers, vqgan_flax\n", "import vqgan_flax.models.configuration\n",
              "from vqgan_flax.cli.common import load_model\n")  # fmt: skip
    for before in orders:
        result = subprocess.run([sys.executable, "-c", before + checks], capture_output=True, text=True, timeout=300,
                                cwd=ROOT)  # fmt: skip
        assert result.returncode == 0 and result.stdout.strip() == "VQGANImageProcessor", before + result.stderr


def _documented_flags():
    """``(file, command, flag)`` for each flag on a ``vqgan-flax COMMAND ...`` line of the docs:
    inline code and the lines of code blocks (continuations joined)."""
    pages = [ROOT / "README.md", ROOT / "vqgan_flax" / "default_model" / "README.md"]
    for page in [*pages, *sorted(ROOT.glob("docs/**/*.md"))]:
        text = page.read_text()
        lines = re.findall(r"`(vqgan-flax [^`]+)`", text)
        in_block = False
        for line in text.replace("\\\n", " ").splitlines():
            if line.startswith("```"):
                in_block = not in_block
            elif in_block:
                lines.append(line)
        for line in lines:
            match = re.match(r"\s*vqgan-flax (\w+)(.*)", line)
            if match:
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2).split("#")[0]):
                    yield page.name, match.group(1), flag


def test_docs_name_only_flags_the_commands_have():
    commands = dict(_subparsers(build_parser()))
    found = list(_documented_flags())
    assert len(found) > 30
    for page, command, flag in found:
        assert command in commands, f"{page}: vqgan-flax {command} is no command"
        options = {s for action in commands[command]._actions for s in action.option_strings}
        assert flag in options, f"{page}: vqgan-flax {command} has no {flag}"
