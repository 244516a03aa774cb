"""The vqgan-jax and LWM fixtures (``tests/fixtures/vqganjax*``, ``tests/fixtures/lwm``), made by
those projects' own code.

    python scripts/make_flax_fixtures.py --vqgan-jax PATH --lwm PATH --out DIR     # every case into DIR/<case>/
    python scripts/make_flax_fixtures.py --vqgan-jax PATH --lwm PATH --check [--json FILE]

``--vqgan-jax``: a checkout of patil-suraj/vqgan-jax (the folder holding ``vqgan_jax/``); ``--lwm``: a
checkout of LargeWorldModel/LWM (the folder holding ``lwm/vqgan.py``). Neither is on PyPI, so this
runs where the two checkouts are (CI has neither) on the legacy stack, the one that made them, plus
``ml-collections``, which LWM's model file imports (later jax rounds ``jax.random.normal`` differently
in the last bits, so its weights would not come out bit for bit). Their commits and a hash of the
files that ran are printed and written to ``DIR/made_by.json`` (``--out``) or the record
(``--check --json``).

What runs is theirs: vqgan-jax's ``VQModel`` builds the model, ``save_pretrained`` writes the
checkpoint, ``from_pretrained`` reloads it and ``encode`` / ``decode`` / ``decode_code`` give the
outputs; LWM's ``lwm/vqgan.py`` runs unchanged, its ``VQGAN`` class loads the pickle and runs the
jitted encode and decode. Two things are supplied: LWM's helper package ``tux`` (the model file uses
two of its functions; the released ``tux`` imports wandb and a pjit that jax 0.10 no longer has) by
a minimal equivalent below, and the tiny config, which LWM's ``VQGAN`` cannot be given (it always
builds the default config), by wrapping ``VQGANConfig.get_default_config`` to apply it. The extra
arrays (``*z``, ``*_decoded_unclipped``) come from the references' own submodules.

``--check`` remakes each case in a scratch folder and holds the committed one to it: weights, inputs,
indices, configs bit for bit; float outputs to ``FLOAT_ATOL``; the old-layout checkpoint must still
be refused by vqgan-jax's ``from_pretrained``. Weights follow ``vqgan_flax.testing.fixtures
.draw_flax_params`` (a CI test holds the committed weights to it without the references).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import pathlib
import pickle
import shutil
import sys
import tempfile
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FLOAT_ATOL = 1e-5
VQGANJAX_SEED, LWM_SEED = 3, 4
VQGANJAX_CONFIG = {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [16], "z_channels": 16,
                   "embed_dim": 8, "n_embed": 64, "resolution": 32, "in_channels": 3, "out_ch": 3, "dropout": 0.0,
                   "double_z": False, "resamp_with_conv": True}  # fmt: skip
# LWM's attention block is broken upstream (it never reshapes back to 4-D): no attention anywhere.
LWM_CONFIG = {"resolution": 32, "num_channels": 3, "hidden_channels": 32, "channel_mult": [1, 2, 2],
              "num_res_blocks": 1, "attn_resolutions": [], "no_attn_mid_block": True, "z_channels": 8,
              "num_embeddings": 64, "quantized_embed_dim": 8, "dropout": 0.0, "resample_with_conv": True,
              "commitment_cost": 0.25}  # fmt: skip
VQGANJAX_INPUT, LWM_IMAGE, LWM_VIDEO = (2, 32, 32, 3), (2, 32, 32, 3), (1, 2, 32, 32, 3)


def import_vqgan_jax(checkout: pathlib.Path) -> types.ModuleType:
    """vqgan-jax's modeling module from ``checkout`` (ahead of anything installed)."""
    if not (checkout / "vqgan_jax" / "modeling_flax_vqgan.py").is_file():
        raise SystemExit(f"--vqgan-jax {checkout}: no vqgan_jax/modeling_flax_vqgan.py there; give the checkout's top")
    package = checkout / "vqgan_jax"
    spec = importlib.util.spec_from_file_location("vqgan_jax", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])  # fmt: skip
    assert spec is not None and spec.loader is not None
    sys.modules["vqgan_jax"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["vqgan_jax"])
    return importlib.import_module("vqgan_jax.modeling_flax_vqgan")


def import_lwm(checkout: pathlib.Path) -> types.ModuleType:
    """LWM's ``lwm/vqgan.py`` from ``checkout``, beside a minimal ``tux`` and with the tiny config
    applied wherever it builds its default one."""
    source = checkout / "lwm" / "vqgan.py"
    if not source.is_file():
        raise SystemExit(f"--lwm {checkout}: no lwm/vqgan.py there; give the checkout's top")
    from ml_collections import ConfigDict

    def function_args_to_config(fn):  # tux's: a ConfigDict of the function's keyword defaults
        return ConfigDict({name: p.default for name, p in inspect.signature(fn).parameters.items()
                           if p.default is not inspect.Parameter.empty})  # fmt: skip

    tux = types.ModuleType("tux")
    tux.function_args_to_config = function_args_to_config  # type: ignore[attr-defined]
    tux.open_file = open  # type: ignore[attr-defined]  # tux's, for local paths
    sys.modules["tux"] = tux
    spec = importlib.util.spec_from_file_location("lwm_vqgan", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = module.VQGANConfig.get_default_config.__func__
    tiny = {k: tuple(v) if isinstance(v, list) else v for k, v in LWM_CONFIG.items()}
    module.VQGANConfig.get_default_config = classmethod(
        lambda cls, updates=None: default(cls, {**tiny, **(updates or {})})
    )
    return module


def shapes_of(tree) -> dict:
    from flax.traverse_util import flatten_dict

    return {path: tuple(leaf.shape) for path, leaf in flatten_dict(dict(tree)).items()}


def make_vqganjax(vqgan_jax: types.ModuleType, out: pathlib.Path, old_layout: pathlib.Path) -> None:
    """The vqgan-jax case and its old-layout copy (GroupNorm parameters stored as (1, 1, 1, C))."""
    import jax.numpy as jnp
    from flax.serialization import msgpack_serialize
    from flax.traverse_util import unflatten_dict

    from vqgan_flax.testing.fixtures import draw_flax_params, uniform_inputs

    config_class = importlib.import_module("vqgan_jax.configuration_vqgan").VQGANConfig
    model = vqgan_jax.VQModel(config_class(**VQGANJAX_CONFIG), input_shape=(1, 32, 32, 3), seed=0)
    drawn = draw_flax_params(shapes_of(model.params), VQGANJAX_SEED, codebook="embedding")
    model.params = unflatten_dict({path: jnp.asarray(value) for path, value in drawn.items()})
    model.save_pretrained(out / "checkpoint")
    model = vqgan_jax.VQModel.from_pretrained(out / "checkpoint")
    (pixels,) = uniform_inputs(VQGANJAX_SEED, VQGANJAX_INPUT)
    quant_states, indices = model.encode(pixels)
    z = model.module.apply({"params": model.params}, pixels, method=lambda m, x: m.quant_conv(m.encoder(x)))
    expected = {"z": z, "quant_states": quant_states, "indices": indices, "decoded": model.decode_code(indices),
                "reconstruction": model.decode(quant_states)}  # fmt: skip
    np.savez(out / "inputs.npz", pixel_values=pixels)
    np.savez(out / "expected.npz", **{k: np.asarray(v) for k, v in expected.items()})

    (old_layout / "checkpoint").mkdir(parents=True, exist_ok=True)
    for name in ("inputs.npz", "expected.npz", "checkpoint/config.json"):
        shutil.copyfile(out / name, old_layout / name)
    old = {path: value.reshape(1, 1, 1, -1) if path[-1] == "scale" or "norm" in path[-2] else value
           for path, value in drawn.items()}  # fmt: skip
    (old_layout / "checkpoint" / "flax_model.msgpack").write_bytes(msgpack_serialize(unflatten_dict(old)))


def old_layout_refused(vqgan_jax: types.ModuleType, folder: pathlib.Path) -> str:
    """vqgan-jax's own ``from_pretrained`` on the old-layout checkpoint: its error, or ``""``."""
    try:
        vqgan_jax.VQModel.from_pretrained(folder / "checkpoint")
    except Exception as error:  # whichever error vqgan-jax and transformers raise
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return ""


def make_lwm(lwm: types.ModuleType, out: pathlib.Path) -> None:
    """The LWM case: the pickle LWM's ``VQGAN`` loads, and what its encode and decode return."""
    import jax

    from vqgan_flax.testing.fixtures import draw_flax_params, uniform_inputs

    module = lwm.VQGANModel(lwm.VQGANConfig.get_default_config())
    image_shape = jax.ShapeDtypeStruct(LWM_IMAGE, np.float32)
    shapes = shapes_of(jax.eval_shape(module.init, jax.random.PRNGKey(0), image_shape)["params"])
    drawn = draw_flax_params(shapes, LWM_SEED, codebook="embeddings")
    from flax.traverse_util import unflatten_dict

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vqgan", "wb") as f:
        pickle.dump(unflatten_dict(drawn), f)
    (out / "config.json").write_text(json.dumps(LWM_CONFIG, indent=2))
    inputs = dict(zip(("image", "video"), uniform_inputs(LWM_SEED, LWM_IMAGE, LWM_VIDEO)))
    wrapper = lwm.VQGAN(str(out / "vqgan"))
    params = {"params": wrapper.params}
    expected = {}
    for name, x in inputs.items():
        quantized, indices = wrapper.encode(x)
        frames = x.reshape(-1, *x.shape[-3:])  # LWM folds T into the batch
        z = module.apply(params, frames, method=lambda m, v: m.quant_conv(m.encoder(v)))
        codes = np.asarray(indices).reshape(-1, *indices.shape[-2:])
        unclipped = module.apply(params, codes, method=lambda m, i: m.decoder(m.post_quant_conv(m.quantize(None, i))))
        expected |= {f"{name}_quantized": quantized, f"{name}_indices": indices,
                     f"{name}_decoded": wrapper.decode(indices),
                     f"{name}_z": np.asarray(z).reshape(*x.shape[:-3], *z.shape[1:]),
                     f"{name}_decoded_unclipped": np.asarray(unclipped).reshape(x.shape)}  # fmt: skip
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "expected.npz", **{k: np.asarray(v) for k, v in expected.items()})


def compare_case(case: str, made: pathlib.Path, committed: pathlib.Path) -> tuple:
    """``(problems, largest float difference)`` between a remade case and the committed one."""
    from flax.serialization import msgpack_restore
    from flax.traverse_util import flatten_dict

    from vqgan_flax.testing.fixtures import compare_case_arrays, compare_trees

    problems, largest = compare_case_arrays(made, committed, FLOAT_ATOL)
    weights, config = ("vqgan", "config.json") if case == "lwm" else ("checkpoint/flax_model.msgpack",
                                                                       "checkpoint/config.json")  # fmt: skip
    load = pickle.loads if case == "lwm" else msgpack_restore  # the pickle: our own fixture or one we just wrote
    trees = [flatten_dict(load((folder / weights).read_bytes())) for folder in (made, committed)]
    problems += compare_trees(trees[0], trees[1], f"{case}/{weights}")
    if json.loads((made / config).read_text()) != json.loads((committed / config).read_text()):
        problems.append(f"{case}/{config} says something else")
    return problems, largest


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqgan-jax", required=True, type=pathlib.Path, help="a patil-suraj/vqgan-jax checkout")
    parser.add_argument("--lwm", required=True, type=pathlib.Path, help="a LargeWorldModel/LWM checkout")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=pathlib.Path, help="write every case into this folder")
    what.add_argument("--check", action="store_true", help="remake every case and compare with tests/fixtures")
    parser.add_argument("--json", help="with --check: write the result as a record (a clean tree only)")
    parser.add_argument("--allow-dirty", action="store_true", help="write the record from a dirty tree anyway")
    args = parser.parse_args(argv)
    if args.json and not args.check:
        parser.error("--json goes with --check")
    from vqgan_flax.evaluation import provenance
    from vqgan_flax.testing.fixtures import reference_source

    provenance.check_can_record(args.json, args.allow_dirty)
    vqgan_jax, lwm = import_vqgan_jax(args.vqgan_jax), import_lwm(args.lwm)
    made_by = {"vqgan-jax": reference_source(args.vqgan_jax, (args.vqgan_jax / "vqgan_jax").glob("*.py")),
               "lwm": reference_source(args.lwm, [args.lwm / "lwm" / "vqgan.py"])}  # fmt: skip
    print(json.dumps(made_by))
    if args.out:
        make_vqganjax(vqgan_jax, args.out / "vqganjax", args.out / "vqganjax_old_layout")
        make_lwm(lwm, args.out / "lwm")
        (args.out / "made_by.json").write_text(json.dumps(made_by, indent=2) + "\n")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        made = pathlib.Path(scratch)
        make_vqganjax(vqgan_jax, made / "vqganjax", made / "vqganjax_old_layout")
        make_lwm(lwm, made / "lwm")
        for case in ("vqganjax", "vqganjax_old_layout", "lwm"):
            problems, largest = compare_case(case, made / case, FIXTURES / case)
            if case == "vqganjax_old_layout":
                refused = old_layout_refused(vqgan_jax, FIXTURES / case)
                problems += [] if refused else ["vqgan-jax's from_pretrained loaded the old layout unchanged"]
            agree = f"weights, inputs, indices and config bit for bit, float outputs within {largest:.1e}"
            print(f"{case}: " + ("; ".join(problems) if problems else agree))
            results[case] = {"problems": problems, "largest_float_difference": largest}
    if args.json:
        record = {**provenance.provenance(__file__), "references": made_by, "float_atol": FLOAT_ATOL, "cases": results}
        provenance.write_record(args.json, record)
    return 1 if any(result["problems"] for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
