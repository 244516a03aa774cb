"""The taming fixtures (``tests/fixtures/taming_*``), made by taming-transformers' own models.

    python scripts/make_taming_fixtures.py --taming PATH --out DIR    # every case into DIR/<case>/
    python scripts/make_taming_fixtures.py --taming PATH --check      # remake each case, compare with tests/fixtures

``PATH`` is the ``taming`` package to run: the PyPI package taming-transformers-rom1504 0.0.6 (the
legacy stack's, ``.venv/lib/python3.11/site-packages/taming``) or the ``taming/`` folder of a
checkout; its version or git commit and a hash of its files are printed and written to
``DIR/made_by.json``. It needs torch and pytorch-lightning (``taming.models.vqgan`` subclasses
``LightningModule``). Two things of taming's are not run: ``taming.main`` (it imports torchvision,
which does not import beside torch 2.13) is replaced by the one function ``vqgan.py`` takes from
it, ``instantiate_from_config``; the loss is built as an identity module (its LPIPS weights are a
download, and the outputs do not use it). Everything the outputs go through — Encoder, quantizer,
Decoder, the 1x1 convs — is taming's ``VQModel`` / ``GumbelVQ``.

``--check`` holds the committed fixtures to this script: the weights in each ``last.ckpt`` and
``model.safetensors``, the inputs and the code indices must come out bit for bit, the YAML must
say the same, and the float outputs must agree to ``FLOAT_ATOL`` (far inside the 1e-4 the parity
tests allow): PyTorch's CPU kernels round differently with the CPU and the thread count, so the
machine that made the fixtures reproduced them bit for bit, another one only to float32 rounding
(its largest difference is printed). The parts of ``last.ckpt`` that only make it look like a real taming checkpoint
(loss entries, optimizer states, the callback keyed by a class) are written but not compared.
How the weights are drawn and what each array means: ``tests/fixtures/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
LOSS = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
        "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 10000, "disc_weight": 0.8,
                   "codebook_weight": 1.0}}  # fmt: skip
GUMBEL_TEMPERATURE = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                      "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9,
                                 "lr_min": 1.0e-06}}  # fmt: skip
FLOAT_ATOL = 1e-5
# case: (taming class, seed, ddconfig changes, model params, input (B, C, H, W), writes model.safetensors)
CASES = {
    "taming_vq": ("VQModel", 0, {"ch_mult": [1, 2, 2], "attn_resolutions": [16], "z_channels": 16, "resolution": 32},
                  {"embed_dim": 8, "n_embed": 64}, (2, 3, 32, 32), True),
    "taming_gumbel": ("GumbelVQ", 1, {"ch_mult": [1, 2], "attn_resolutions": [8], "z_channels": 16, "resolution": 16},
                      {"kl_weight": 1.0e-08, "temperature_scheduler_config": GUMBEL_TEMPERATURE, "embed_dim": 16,
                       "n_embed": 64}, (2, 3, 16, 16), False),
    "taming_vq_nonsquare": ("VQModel", 2, {"ch_mult": [1, 2, 2], "attn_resolutions": [], "z_channels": 4,
                                           "resolution": 32}, {"embed_dim": 4, "n_embed": 32}, (2, 3, 32, 48), False),
}  # fmt: skip


def import_taming(path: pathlib.Path) -> types.ModuleType:
    """Import the ``taming`` package at ``path`` (ahead of any installed one), with ``taming.main``
    reduced to ``instantiate_from_config``."""
    if not (path / "models" / "vqgan.py").is_file():
        raise SystemExit(f"--taming {path}: no models/vqgan.py there; give the folder of the taming package")
    # The package at path, not whichever taming is installed: its submodules load from its __path__.
    init = path / "__init__.py"
    spec = importlib.util.spec_from_file_location("taming", init, submodule_search_locations=[str(path)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"--taming {path}: cannot import a package from its __init__.py")
    taming = importlib.util.module_from_spec(spec)
    sys.modules["taming"] = taming
    spec.loader.exec_module(taming)

    def instantiate_from_config(config: dict):
        if config["target"] == LOSS["target"]:
            return importlib.import_module("torch").nn.Identity()
        module, name = config["target"].rsplit(".", 1)
        return getattr(importlib.import_module(module), name)(**config.get("params", {}))

    main = types.ModuleType("taming.main")
    main.instantiate_from_config = instantiate_from_config  # type: ignore[attr-defined]
    sys.modules["taming.main"] = main
    return taming


def made_by(path: pathlib.Path) -> dict:
    """The reference's version or commit, and a hash of its Python files."""
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*.py")):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    # A commit only for a checkout of taming itself (not for a repository the package sits inside).
    top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    commit = None
    if top.returncode == 0 and pathlib.Path(top.stdout.strip()).resolve() in (path.resolve(), path.resolve().parent):
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    version = None
    for info in path.parent.glob("taming_transformers*.dist-info"):
        version = info.name.removesuffix(".dist-info")
    return {"taming": str(path), "commit": commit.strip() if commit else None, "package": version,
            "sources_sha256": digest.hexdigest()[:16]}  # fmt: skip


def model_yaml(case: str) -> dict:
    kind, _, ddchanges, params, _, _ = CASES[case]
    ddconfig = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0,
                **ddchanges}  # fmt: skip
    return {"model": {"base_learning_rate": 4.5e-06, "target": f"taming.models.vqgan.{kind}",
                      "params": {**params, "ddconfig": ddconfig, "lossconfig": LOSS}}}  # fmt: skip


def make_case(case: str, out: pathlib.Path) -> None:
    """Build the case's model with taming, draw its weights, run it, write its files into ``out``."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from vqgan_flax.testing.fixtures import uniform_inputs
    from vqgan_flax.testing.taming_reference import randomize_

    kind, seed, _, _, shape, with_safetensors = CASES[case]
    config = model_yaml(case)
    target = importlib.import_module("taming.models.vqgan")
    model = randomize_(getattr(target, kind)(**config["model"]["params"]), seed)
    torch.use_deterministic_algorithms(True)
    (pixels,) = uniform_inputs(seed, shape)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(torch.from_numpy(pixels)))
        if kind == "GumbelVQ":  # the noise-free path (taming draws Gumbel noise even in eval mode)
            logits = model.quantize.proj(z)
            indices = logits.argmax(dim=1)
            quant = model.quantize.embed(indices).permute(0, 3, 1, 2)
            from_indices = quant
            extra = {"logits": logits.numpy()}
        else:
            quant, _, (_, _, flat) = model.quantize(z)
            indices = flat.reshape(shape[0], *z.shape[2:])
            from_indices = model.quantize.get_codebook_entry(flat.reshape(-1), (shape[0], *z.shape[2:], z.shape[1]))
            extra = {}
        expected = {"z": z.numpy(), **extra, "quant": quant.numpy(), "indices": indices.numpy().astype(np.int64),
                    "reconstruction": model.decode(quant).numpy(),
                    "decoded_from_indices": model.decode(from_indices).numpy()}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "inputs.npz", pixel_values=pixels)
    np.savez(out / "expected.npz", **expected)
    (out / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    if with_safetensors:
        save_file(dict(state), str(out / "model.safetensors"))
    torch.save(lightning_checkpoint(state, seed), out / "last.ckpt")


def lightning_checkpoint(state: OrderedDict, seed: int) -> dict:
    """A checkpoint shaped like taming's: the model's state dict plus loss entries, optimizer states
    and a callback keyed by its class (so ``torch.load(weights_only=True)`` refuses it, as it refuses
    real taming checkpoints)."""
    import torch
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    gen = torch.Generator().manual_seed(1000 + seed)
    loss = {"loss.logvar": torch.zeros(()),
            "loss.perceptual_loss.scaling_layer.shift": torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1),
            "loss.perceptual_loss.scaling_layer.scale": torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1),
            "loss.perceptual_loss.lin0.model.1.weight": torch.rand(1, 64, 1, 1, generator=gen),
            "loss.discriminator.main.0.weight": 0.02 * torch.randn(64, 3, 4, 4, generator=gen),
            "loss.discriminator.main.0.bias": torch.zeros(64)}  # fmt: skip
    adam = {"state": {0: {"step": torch.tensor(12345.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
            "param_groups": [{"lr": 4.5e-06, "betas": (0.5, 0.9), "eps": 1e-08, "weight_decay": 0,
                              "params": [0]}]}  # fmt: skip
    return {"epoch": 7, "global_step": 12345, "pytorch-lightning_version": "1.0.8",
            "state_dict": OrderedDict({**state, **loss}), "optimizer_states": [adam, adam], "lr_schedulers": [],
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5),
                                            "best_model_path": "logs/checkpoints/last.ckpt"}}}  # fmt: skip


def compare(made: pathlib.Path, committed: pathlib.Path) -> tuple:
    """``(problems, largest float difference)`` between a remade case and the committed one."""
    import torch
    import yaml

    from vqgan_flax.testing.fixtures import compare_case_arrays

    problems, largest = compare_case_arrays(made, committed, FLOAT_ATOL)
    if yaml.safe_load((made / "model.yaml").read_text()) != yaml.safe_load((committed / "model.yaml").read_text()):
        problems.append("model.yaml says something else")
    mine = torch.load(made / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    theirs = torch.load(committed / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for key in [k for k in theirs if not k.startswith("loss.")]:
        if key not in mine or not torch.equal(mine[key], theirs[key]):
            problems.append(f"last.ckpt: weight {key} differs")
    if (committed / "model.safetensors").exists():
        from safetensors.numpy import load_file

        mine, theirs = load_file(made / "model.safetensors"), load_file(committed / "model.safetensors")
        if mine.keys() != theirs.keys() or any(not np.array_equal(mine[k], theirs[k]) for k in theirs):
            problems.append("model.safetensors differs")
    return problems, largest


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taming", required=True, type=pathlib.Path, help="the taming package folder to run")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=pathlib.Path, help="write every case into this folder")
    what.add_argument("--check", action="store_true", help="remake every case and compare with tests/fixtures")
    args = parser.parse_args(argv)
    import_taming(args.taming)
    provenance = made_by(args.taming)
    print(json.dumps(provenance))
    if args.out:
        for case in CASES:
            make_case(case, args.out / case)
        (args.out / "made_by.json").write_text(json.dumps(provenance, indent=2) + "\n")
        return 0
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        for case in CASES:
            make_case(case, pathlib.Path(scratch) / case)
            problems, largest = compare(pathlib.Path(scratch) / case, FIXTURES / case)
            agree = f"weights, inputs and indices bit for bit, float outputs within {largest:.1e}"
            print(f"{case}: " + ("; ".join(problems) if problems else agree))
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sys.exit(main())
