"""Helpers the tests import (``from utils import ...``): fixture paths, comparisons, the random
LPIPS weights, and the PyTorch-reference guard. Session setup (environment, JAX flags, pytest
hooks and fixtures) stays in conftest.py."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SCRIPTS = pathlib.Path(__file__).parent.parent / "scripts"
TAMING_CASES = ("taming_vq", "taming_gumbel", "taming_vq_nonsquare")
ATOL = RTOL = 1e-4


def fake_hub_cache(root: pathlib.Path, repo_id: str, revisions: dict, tags: dict = ()) -> pathlib.Path:
    """huggingface_hub's cache layout under ``root``: ``models--org--name/{refs/<branch>,
    snapshots/<commit>/...}``, one made-up commit per ``{branch: folder}`` (the n-th is n in 40 hex
    digits); ``tags`` maps more refs (tags) onto those branches' commits."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commits = {}
    for number, (branch, folder) in enumerate(revisions.items()):
        commits[branch] = f"{number + 1:040x}"
        shutil.copytree(folder, repo / "snapshots" / commits[branch])
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commits[branch])
    for tag, branch in dict(tags).items():
        (repo / "refs" / tag).write_text(commits[branch])
    return root


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nchw_to_nhwc(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).transpose(0, 2, 3, 1)


def assert_close(actual, expected, name: str = "", atol: float = ATOL, rtol: float = RTOL) -> None:
    actual, expected = np.asarray(actual, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=name)


def assert_case_parity(model, case: pathlib.Path, suffix: str) -> None:
    """A converted model against a family case (``inputs.npz`` / ``expected.npz`` of one input,
    ``suffix`` ``""`` or ``"_nonsquare"``): indices exact; latents, quantized latents, decode and
    decode_code within the parity tolerance."""
    pixels = nchw_to_nhwc(np.load(case / "inputs.npz")[f"pixel_values{suffix}"])
    expected = np.load(case / "expected.npz")
    encoded = model.encode(pixels)
    np.testing.assert_array_equal(encoded.indices, expected[f"indices{suffix}"].reshape(len(pixels), -1))
    assert_close(encoded.latents, nchw_to_nhwc(expected[f"z{suffix}"]), "z")
    assert_close(encoded.quant_states, nchw_to_nhwc(expected[f"quant{suffix}"]), "quant")
    assert_close(model.decode(encoded.quant_states), nchw_to_nhwc(expected[f"reconstruction{suffix}"]), "decode")
    decoded = nchw_to_nhwc(expected[f"decoded_from_indices{suffix}"])
    assert_close(model.decode_code(expected[f"indices{suffix}"]), decoded, "decode_code")


def assert_cli_runs(model, tmp_path: pathlib.Path, capsys, info_line: str, size: int = 32) -> None:
    """The command line on ``model`` (saved to a folder): encode of three PNGs gives the model's
    own tokens, decode writes three PNGs, reconstruct runs in bfloat16, info prints ``info_line``."""
    from PIL import Image

    from vqgan_flax import VQGANImageProcessor

    folder, images = tmp_path / "model", tmp_path / "images"
    model.save_pretrained(folder)
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(random_png(i, (size, size + 16)))
    code, _, err = run_cli(capsys, "encode", images, "--out", tmp_path / "t.npz", "--model", folder, "--size", size)
    assert code == 0, err
    processor = VQGANImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor([Image.open(images / f"{i}.png") for i in range(3)], return_tensors="np")["pixel_values"]
    grid = size // model.config.downsampling_factor
    direct = np.asarray(model.encode(pixels).indices).reshape(3, grid, grid)
    np.testing.assert_array_equal(np.load(tmp_path / "t.npz")["tokens"], direct)
    code, _, err = run_cli(capsys, "decode", tmp_path / "t.npz", "--out", tmp_path / "decoded", "--quiet")
    assert code == 0 and len(list((tmp_path / "decoded").glob("*.png"))) == 3, err
    code, _, err = run_cli(capsys, "reconstruct", images, "--out", tmp_path / "r", "--model", folder, "--size", size,
                           "--dtype", "bfloat16", "--quiet")  # fmt: skip
    assert code == 0 and (tmp_path / "r" / "metrics.json").is_file(), err
    code, out, _ = run_cli(capsys, "info", folder, "--size", size)
    assert code == 0 and info_line in out, out


TORCH_SKIP_REASON = (
    "needs PyTorch and the taming reference: torch==2.13.0 is a CPU build for Python 3.11 only, so the "
    "live PyTorch comparisons run on the legacy stack"
)


def random_lpips_state_dict(seed: int = 0) -> dict:
    """A taming/lpips LPIPS state dict (VGG16 convs OIHW, non-negative linear heads) of random numbers."""
    rng = np.random.default_rng(seed)
    widths = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256)]
    widths += [(17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    shapes = {index: (out_ch, in_ch) for index, in_ch, out_ch in widths}
    slices = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    state = {}
    for index, (out_ch, in_ch) in shapes.items():
        state[f"net.slice{slices[index]}.{index}.weight"] = rng.normal(0, (9 * in_ch) ** -0.5, (out_ch, in_ch, 3, 3))
        state[f"net.slice{slices[index]}.{index}.bias"] = np.zeros(out_ch)
    for k, channels in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = np.abs(rng.normal(0, 0.1, (1, channels, 1, 1)))
    return state


def require_torch_reference(*also: str) -> None:
    """Skip the calling test (or module) when torch or taming's modules (or the modules named in
    ``also``) do not import; with ``VQGAN_FLAX_REQUIRE_TORCH=1`` (the legacy stack in CI, where they
    are installed) fail instead, so a broken install never hides behind a skip."""
    try:
        import taming.modules.diffusionmodules.model  # noqa: F401
        import torch

        for name in also:
            importlib.import_module(name)
    except ImportError as error:
        if os.environ.get("VQGAN_FLAX_REQUIRE_TORCH") == "1":
            pytest.fail(f"VQGAN_FLAX_REQUIRE_TORCH=1 but the PyTorch reference does not import: {error}", pytrace=False)
        pytest.skip(f"{TORCH_SKIP_REASON} ({error})", allow_module_level=True)
    # Parity with the reference wants exact, repeatable PyTorch kernels on the 2 cores CI has.
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|\.\d+)$")


def same_output(printed: str, shown: str, rel: float = 1e-3, abs_tol: float = 1e-6) -> bool:
    """Whether ``printed`` matches ``shown`` token by token (punctuation split off numbers)."""

    def tokens(text: str) -> list:
        return re.findall(r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?|[^\s\d(),\[\]]+|[(),\[\]]", text)

    got, want = tokens(printed), tokens(shown)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if NUMBER.match(a) and NUMBER.match(b):
            x, y = float(a.replace(",", "")), float(b.replace(",", ""))
            if abs(x - y) > max(abs_tol, rel * abs(y)):
                return False
        elif a != b:
            return False
    return True


def run_cli(capsys, *argv):
    """``vqgan-flax ARGV...`` in this process: ``(exit status, stdout, stderr)``."""
    from vqgan_flax.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def random_png(seed: int, size=(20, 24)) -> bytes:
    """A PNG of seeded random RGB noise, ``size`` (height, width): test images whose tokens differ."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
