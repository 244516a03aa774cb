"""Hub ids (``org/name``) through every entry point that takes a model, from a faked offline cache
(huggingface_hub's own layout, read by huggingface_hub itself), on the real model class: each
loads bit-identically to the folder it was made from."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from PIL import Image
from utils import fake_hub_cache, run_cli

from vqgan_flax import VQGAN, FlaxVQGANModel, VQGANConfig, VQGANImageProcessor, VQModel
from vqgan_flax.hub.resolve import commit_of, is_hub_id, resolve_model

REPO = "acme/vqgan-tiny"
MAIN, V2 = f"{1:040x}", f"{2:040x}"  # the commits fake_hub_cache makes up


def _tree_equal(a, b) -> None:
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, x), (_, y) in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture(scope="module")
def hub(tiny, tmp_path_factory):
    """Branch main (tag v1.0): the tiny model with a processor config at 16 px; branch v2: other
    weights (seed 1) in the subfolder ``weights``."""
    root = tmp_path_factory.mktemp("hub")
    main_folder = root / "main"
    shutil.copytree(tiny, main_folder)
    VQGANImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(main_folder)
    other = root / "v2" / "weights"
    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=1).save_pretrained(other, safe_serialization=False)
    home = root / "home"
    fake_hub_cache(home / "hub", REPO, {"main": main_folder, "v2": root / "v2"}, tags={"v1.0": "main"})
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    return SimpleNamespace(home=home, cache=home / "hub", main=main_folder, other=other, images=images)


@pytest.fixture
def offline(hub, monkeypatch):
    """``HF_HOME`` at the faked cache and ``HF_HUB_OFFLINE=1``, as huggingface_hub reads them."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


@pytest.mark.parametrize("revision", [None, "main", "v1.0", MAIN])
def test_hub_id_loads_like_its_folder(offline, revision):
    kwargs = {} if revision is None else {"revision": revision}
    model = FlaxVQGANModel.from_pretrained(REPO, **kwargs)
    _tree_equal(model.params, FlaxVQGANModel.from_pretrained(offline.main).params)
    assert model.source.hub_id == REPO and model.source.commit == MAIN and model.source.revision == revision
    assert commit_of(model.source.folder) == MAIN


def test_branch_subfolder_and_do_init_false(offline):
    """DALL·E-mini's own call: ``VQModel.from_pretrained(id, _do_init=False)`` returns (model, params)."""
    model, params = VQModel.from_pretrained(REPO, revision="v2", subfolder="weights", _do_init=False)
    _tree_equal(params, FlaxVQGANModel.from_pretrained(offline.other).params)
    assert model.source.commit == V2 and model.source.folder.endswith(os.path.join(V2, "weights"))


def test_cache_dir_and_local_files_only_without_the_environment(hub):
    model = FlaxVQGANModel.from_pretrained(REPO, cache_dir=hub.cache, local_files_only=True, revision="v1.0")
    _tree_equal(model.params, FlaxVQGANModel.from_pretrained(hub.main).params)


def test_lwm_wrapper_takes_a_hub_id(offline):
    pixels = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    from_hub, from_folder = VQGAN(REPO), VQGAN(str(offline.main))
    np.testing.assert_array_equal(np.asarray(from_hub.encode(pixels)[1]), np.asarray(from_folder.encode(pixels)[1]))
    assert from_hub.model.source.commit == MAIN


@pytest.mark.parametrize(
    "name, message",
    [
        ("./acme/vqgan-tiny", r"\./acme/vqgan-tiny: no such model folder"),
        ("/no/such/vqgan", r"/no/such/vqgan: no such model folder"),
        ("~/no-such-vqgan", r"~/no-such-vqgan: no such model folder"),
        ("acme/vqgan-tiny/extra", r"acme/vqgan-tiny/extra: no such model folder"),
        ("acme/absent", r"Hub model 'acme/absent' \(revision 'main'\): config.json is not in the Hub cache"),
        (REPO + "@v3", r"no such model folder"),
    ],
)
def test_mistyped_names_are_refused_in_one_line(offline, name, message):
    with pytest.raises(OSError, match=message) as caught:
        FlaxVQGANModel.from_pretrained(name)
    assert "\n" not in str(caught.value)


def test_a_missing_revision_names_it(offline):
    with pytest.raises(OSError, match=r"Hub model 'acme/vqgan-tiny' \(revision 'v9'\): config.json is not in the Hub"):
        FlaxVQGANModel.from_pretrained(REPO, revision="v9")


def test_which_names_are_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("org/name", "gpt2", "dalle-mini/vqgan_imagenet_f16_16384", "a.b/c_d-e"):
        assert is_hub_id(name), name
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local").mkdir()
    for name in ("./x", "/x", "~/x", "a/b/c", "../x", "org/local", "a--b/c", "x.", "a b/c", ""):
        assert not is_hub_id(name), name


def test_online_path_downloads_each_file_once_pinned_to_one_commit(hub, monkeypatch):
    """With the network on (huggingface_hub's download function replaced, so nothing leaves this
    machine): config.json first, then every other file at the commit it resolved to."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    snapshot = hub.cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / MAIN
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"] or "main", kwargs["local_files_only"], kwargs["token"]))
        assert kwargs["force_download"] is True and kwargs["cache_dir"] == "/somewhere"
        path = snapshot / (kwargs.get("subfolder") or "") / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = FlaxVQGANModel.from_pretrained(REPO, token="hf_x", force_download=True, cache_dir="/somewhere")
    assert calls == [
        (REPO, "config.json", "main", False, "hf_x"),
        (REPO, "flax_model.msgpack", MAIN, False, "hf_x"),
        (REPO, "preprocessor_config.json", MAIN, False, "hf_x"),
    ]
    _tree_equal(model.params, FlaxVQGANModel.from_pretrained(hub.main).params)
    assert resolve_model(str(hub.main)).folder == str(hub.main) and len(calls) == 3  # folders never download


def test_cli_commands_take_a_hub_id(offline, tmp_path, capsys, monkeypatch):
    """``info``, ``encode --model``, ``decode`` of a token file that records a Hub id (no --model),
    ``reconstruct --model`` and ``train --init-from``: the Hub id gives what its folder gives."""
    code, out, err = run_cli(capsys, "info", REPO, "--json")
    assert code == 0, err
    facts = json.loads(out)
    assert facts["model"] == REPO and facts["image_size"] == [16, 16]  # its preprocessor_config.json

    hub_tokens, folder_tokens = tmp_path / "hub.npz", tmp_path / "folder.npz"
    assert run_cli(capsys, "encode", offline.images, "--model", REPO, "--out", hub_tokens, "--quiet")[0] == 0
    assert run_cli(capsys, "encode", offline.images, "--model", offline.main, "--out", folder_tokens, "--quiet")[0] == 0
    hub_record, folder_record = np.load(hub_tokens), np.load(folder_tokens)
    np.testing.assert_array_equal(hub_record["tokens"], folder_record["tokens"])
    assert str(hub_record["model"]) == REPO and str(hub_record["commit"]) == MAIN
    assert str(hub_record["model_digest"]) == str(folder_record["model_digest"])  # one model, two places

    monkeypatch.chdir(tmp_path)  # decode finds the model by the Hub id recorded in the file
    assert run_cli(capsys, "decode", hub_tokens, "--out", tmp_path / "from_hub", "--quiet")[0] == 0
    assert run_cli(capsys, "decode", folder_tokens, "--out", tmp_path / "from_folder", "--quiet")[0] == 0
    for name in ("img0.png", "img1.png"):
        assert (tmp_path / "from_hub" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()

    code, out, err = run_cli(capsys, "reconstruct", offline.images, "--model", REPO, "--out", tmp_path / "r", "--quiet")
    assert code == 0 and json.loads((tmp_path / "r" / "metrics.json").read_text())["model"] == REPO, err

    import vqgan_flax.train.trainer as training

    started = {}
    monkeypatch.setattr(training.VQGANTrainer, "fit", lambda self, data, output, **options: started.update(m=self))
    code, _, err = run_cli(capsys, "train", "--data", offline.images, "--output", tmp_path / "t", "--init-from", REPO,
                        "--revision", "v1.0", "--steps", 1, "--crop-size", 32, "--quiet")  # fmt: skip
    assert code == 0, err
    assert started["m"].model.source.commit == MAIN
    _tree_equal(started["m"].model.params, FlaxVQGANModel.from_pretrained(offline.main).params)


def test_console_script_reads_hf_home_offline(hub, tmp_path):
    """The environment users set (``HF_HOME``, ``HF_HUB_OFFLINE=1``), read by a fresh process; an
    unreachable endpoint, so a download attempt would fail instead of passing unnoticed."""
    env = {**os.environ, "HF_HOME": str(hub.home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_CACHE", None)
    script = pathlib.Path(sys.executable).parent / "vqgan-flax"
    result = subprocess.run([str(script), "info", REPO, "--revision", "v1.0"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"model:               {REPO}" in result.stdout and "16x16" in result.stdout
    absent = subprocess.run([str(script), "info", "acme/absent"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)  # fmt: skip
    assert absent.returncode == 1 and absent.stderr.count("\n") == 1
    assert "config.json is not in the Hub cache" in absent.stderr and "HF_HUB_OFFLINE=1" in absent.stderr
