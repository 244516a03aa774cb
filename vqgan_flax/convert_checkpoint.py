"""Convert taming-transformers (PyTorch) VQGAN checkpoints to Flax folders, and back.

    python -m vqgan_flax.convert_checkpoint --checkpoint last.ckpt --config model.yaml --output DIR
    python -m vqgan_flax.convert_checkpoint --to-taming DIR --output taming.safetensors

Names map one to one (taming ``encoder.down.1.block.0.conv1.weight`` is Flax
``encoder/down_1/block_0/conv1/kernel``); conv kernels go OIHW → HWIO, norm ``weight`` → ``scale``,
embedding ``weight`` → ``embedding``. No PyTorch is needed except to write ``.pt`` files.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .checkpoint_io import CheckpointError, PathLike, load_state_dict
from .configuration_vqgan import PRESETS, VQGANConfig

FlatParams = Dict[Tuple[str, ...], np.ndarray]

# taming's module lists ("down.1", "block.0") are "down_1", "block_0" in Flax.
_LIST_ITEM = re.compile(r"(?<![^.])(down|up|block|attn)\.(\d+)(?=\.)")
_LEVEL = re.compile(r"(down|up)_(\d+)")
_LEVEL_ITEM = re.compile(r"(block|attn)_(\d+)")
# Flax leaf names that taming calls "weight".
_WEIGHT_LEAVES = ("kernel", "scale", "embedding")


class ConversionError(ValueError):
    """The checkpoint does not match the architecture: names every missing, unexpected or
    mis-shaped key."""


def expected_param_shapes(config: VQGANConfig, model: Any = None) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Shapes of every Flax parameter for ``config``: the ``params_shape_tree`` (``jax.eval_shape``
    of the init, no compute) of ``model``, or of a new ``FlaxVQGANModel(config, _do_init=False)``."""
    from flax.traverse_util import flatten_dict

    from .modeling_flax_vqgan import FlaxVQGANModel

    model = model or FlaxVQGANModel(config, _do_init=False)
    return {k: tuple(v.shape) for k, v in flatten_dict(model.params_shape_tree).items()}


def taming_key_to_flax(key: str, expected: Dict[Tuple[str, ...], Any]) -> Optional[Tuple[str, ...]]:
    """Flax path of a taming state-dict key, or None if the architecture has no such parameter."""
    module_path, _, leaf = key.rpartition(".")
    path = tuple(_LIST_ITEM.sub(r"\1_\2", module_path + ".").rstrip(".").split("."))
    candidates = _WEIGHT_LEAVES if leaf == "weight" else (leaf,)
    for candidate in candidates:
        if (*path, candidate) in expected:
            return (*path, candidate)
    return None


def flax_key_to_taming(path: Tuple[str, ...]) -> str:
    """taming state-dict key of a Flax parameter path."""
    parts = list(path[:-1])
    for i, part in enumerate(parts):
        # Only the level lists (encoder.down, decoder.up) and their block/attn lists are indexed;
        # the mid block's own names (block_1, attn_1) are taming's literal attribute names.
        if i > 0 and parts[i - 1] in ("encoder", "decoder") and _LEVEL.fullmatch(part):
            parts[i] = _LEVEL.sub(r"\1.\2", part)
        elif i > 0 and _LEVEL.fullmatch(path[i - 1]) and _LEVEL_ITEM.fullmatch(part):
            parts[i] = _LEVEL_ITEM.sub(r"\1.\2", part)
    leaf = "weight" if path[-1] in _WEIGHT_LEAVES else path[-1]
    return ".".join([*parts, leaf])


def taming_shape(path: Tuple[str, ...], flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Shape the taming tensor of a Flax parameter has (convs are OIHW there)."""
    if path[-1] == "kernel" and len(flax_shape) == 4:
        height, width, in_channels, out_channels = flax_shape
        return (out_channels, in_channels, height, width)
    return tuple(flax_shape)


def _to_flax_array(value: np.ndarray, leaf: str) -> np.ndarray:
    # PyTorch convs are (out, in, kh, kw); Flax's are (kh, kw, in, out).
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(value, dtype=np.float32)


def taming_to_flax(
    state_dict: Dict[str, np.ndarray], config: VQGANConfig, source: str = "<state dict>"
) -> Tuple[Dict[str, Any], int]:
    """Convert a taming state dict to a nested Flax parameter dict for ``config``.

    ``loss.*`` entries (discriminator, LPIPS) are dropped; their count is returned beside the
    params. Anything else must map onto exactly one parameter with the right shape.
    """
    return convert_state_dict(state_dict, expected_param_shapes(config), source, describe_architecture(config))


def convert_state_dict(
    state_dict: Dict[str, np.ndarray],
    expected: Dict[Tuple[str, ...], Tuple[int, ...]],
    source: str = "<state dict>",
    architecture: str = "",
) -> Tuple[Dict[str, Any], int]:
    """Map taming keys onto the Flax parameters whose flat paths and shapes are ``expected``
    (any module: the full model, or e.g. a bare Encoder); see [`taming_to_flax`]."""
    from flax.traverse_util import unflatten_dict

    dropped = [k for k in state_dict if k.startswith("loss.")]
    flat: FlatParams = {}
    seen = set()
    unexpected: List[str] = []
    mismatched: List[str] = []
    for key, value in state_dict.items():
        if key.startswith("loss."):
            continue
        path = taming_key_to_flax(key, expected)
        if path is None:
            unexpected.append(f"{key} {tuple(value.shape)}")
            continue
        seen.add(path)
        wanted = taming_shape(path, expected[path])
        if tuple(value.shape) != wanted:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {wanted}")
            continue
        flat[path] = value
    missing = [f"{flax_key_to_taming(p)} {taming_shape(p, expected[p])}" for p in expected if p not in seen]
    raise_on_mismatch(source, architecture, missing, unexpected, mismatched)
    check_weights({flax_key_to_taming(path): value for path, value in flat.items()}, source)
    flat = {path: _to_flax_array(np.asarray(value), path[-1]) for path, value in flat.items()}
    return unflatten_dict(flat), len(dropped)


def raise_on_mismatch(
    source: str, architecture: str, missing: List[str], unexpected: List[str], mismatched: List[str]
) -> None:
    """One error listing every missing key, unexpected key and shape mismatch (if there are any)."""
    if not (unexpected or mismatched or missing):
        return
    lines = [f"{source} does not match the architecture ({architecture or 'given parameter shapes'}):"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            lines.append(f"  {len(items)} {title}: " + "; ".join(sorted(items)))
    raise ConversionError("\n".join(lines))


def check_weights(named: Dict[str, Any], source: str) -> None:
    """Refuse weights a model would silently compute garbage with: non-floating dtypes (an int8 or
    bool tensor where a float belongs) and NaN/inf values. Names the first offending tensor."""
    import jax.numpy as jnp

    for name, value in named.items():
        array = np.asarray(value)
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise ConversionError(f"{source}: weight {name} has dtype {array.dtype}, expected floating point")
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ConversionError(f"{source}: weight {name} holds {bad} non-finite values (NaN/inf)")


def flax_to_taming(params: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Convert Flax parameters to a taming state dict (numpy, OIHW convs) that taming's modules
    load with ``strict=True``."""
    from flax.traverse_util import flatten_dict

    state: Dict[str, np.ndarray] = {}
    for path, value in flatten_dict(dict(params)).items():
        value = np.array(value, dtype=np.float32)  # an owned, writable copy (torch.from_numpy wants one)
        if path[-1] == "kernel" and value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        state[flax_key_to_taming(path)] = value
    return state


def describe_architecture(config: VQGANConfig) -> str:
    """One line naming the fields that decide the parameter shapes (for error messages)."""
    return (
        f"quantizer={config.quantizer}, ch={config.ch}, ch_mult={config.ch_mult}, "
        f"num_res_blocks={config.num_res_blocks}, attn_resolutions={config.attn_resolutions}, "
        f"resolution={config.resolution}, z_channels={config.z_channels}, embed_dim={config.embed_dim}, "
        f"n_embed={config.n_embed}"
    )


def checkpoint_read_limit(expected: Dict[Tuple[str, ...], Tuple[int, ...]]) -> int:
    """Bytes a taming checkpoint for these parameter shapes may make the reader load: 8x the
    model in float32 (a Lightning file adds the discriminator, LPIPS and two Adam moments per
    weight) plus 256 MB, so a small file cannot inflate into gigabytes."""
    return 8 * 4 * sum(int(np.prod(shape)) for shape in expected.values()) + (256 << 20)


def convert_taming_checkpoint(
    checkpoint: PathLike,
    output_dir: PathLike,
    config: VQGANConfig,
    weights_format: str = "safetensors",
) -> int:
    """Convert ``checkpoint`` and write a ``from_pretrained`` folder; returns the number of
    dropped ``loss.*`` entries."""
    from .modeling_flax_vqgan import FlaxVQGANModel

    if weights_format not in ("safetensors", "msgpack"):
        raise ValueError(f"unknown weights format {weights_format!r}; expected 'safetensors' or 'msgpack'")
    model = FlaxVQGANModel(config, _do_init=False)
    expected = expected_param_shapes(config, model)
    state_dict = load_state_dict(checkpoint, max_bytes=checkpoint_read_limit(expected))
    source = os.fspath(checkpoint)
    params, dropped = convert_state_dict(state_dict, expected, source, describe_architecture(config))
    model.save_pretrained(output_dir, params=params, safe_serialization=weights_format == "safetensors")
    return dropped


def export_to_taming(model_dir: PathLike, output: PathLike) -> Dict[str, np.ndarray]:
    """Write a Flax folder's weights as a taming state dict: ``.safetensors``, or ``.pt``/``.pth``/
    ``.ckpt`` (those need torch; ``.ckpt`` nests it under ``state_dict`` like Lightning)."""
    from .modeling_flax_vqgan import FlaxVQGANModel

    _model, params = FlaxVQGANModel.from_pretrained(model_dir, _do_init=False)
    state = flax_to_taming(params)
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if output.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(state, output, metadata={"format": "pt"})
    elif output.endswith((".pt", ".pth", ".ckpt")):
        try:
            import torch
        except ImportError:
            raise ConversionError(f"{output}: writing .pt/.pth/.ckpt needs torch; use a .safetensors name") from None
        tensors = {k: torch.from_numpy(v) for k, v in state.items()}
        torch.save({"state_dict": tensors} if output.endswith(".ckpt") else tensors, output)
    else:
        raise ConversionError(f"{output}: unknown extension; use .safetensors, .pt, .pth or .ckpt")
    return state


def _config_from_args(args: argparse.Namespace) -> VQGANConfig:
    overrides: Dict[str, Any] = {}
    for name in ("ch", "num_res_blocks", "resolution", "z_channels", "n_embed", "embed_dim", "quantizer"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("ch_mult", "attn_resolutions"):
        if getattr(args, name) is not None:
            text = getattr(args, name).strip()
            overrides[name] = [int(v) for v in text.split(",") if v.strip()] if text else []
    if args.config:
        return VQGANConfig.from_taming_yaml(args.config, **overrides)
    if args.preset:
        return VQGANConfig.from_preset(args.preset, **overrides)
    if not overrides:
        raise ConversionError("give the architecture: --config model.yaml, --preset NAME, or architecture flags")
    return VQGANConfig(**overrides)


DESCRIPTION = "Convert a taming-transformers VQGAN checkpoint to a Flax folder (or back with --to-taming)."


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's options, shared by ``python -m vqgan_flax.convert_checkpoint`` and
    ``vqgan-flax convert``."""
    parser.add_argument("--checkpoint", help="taming .ckpt / .pt / .pth / .safetensors file")
    parser.add_argument(
        "--to-taming", metavar="MODEL", help="export this Flax folder (or LWM params pickle) to a taming state dict"
    )
    parser.add_argument("--lwm", metavar="PICKLE", help="an LWM params pickle (LWM's vqgan file) to a Flax folder")
    parser.add_argument("--output", required=True, help="output folder (or file with --to-taming)")
    parser.add_argument("--config", help="taming model.yaml describing the architecture")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a published taming architecture")
    parser.add_argument("--format", default="safetensors", choices=("safetensors", "msgpack"), dest="weights_format")
    arch = parser.add_argument_group("architecture flags (override --config/--preset)")
    for name, kind in (("ch", int), ("num_res_blocks", int), ("resolution", int), ("z_channels", int)):
        arch.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    arch.add_argument("--n-embed", dest="n_embed", type=int)
    arch.add_argument("--embed-dim", dest="embed_dim", type=int)
    arch.add_argument("--ch-mult", dest="ch_mult", help="comma-separated, e.g. 1,1,2,2,4")
    arch.add_argument("--attn-resolutions", dest="attn_resolutions", help="comma-separated, e.g. 16")
    arch.add_argument("--quantizer", help="vq or gumbel")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(prog="python -m vqgan_flax.convert_checkpoint", description=DESCRIPTION)
    )


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed options say; errors print one line and give status 1."""
    try:
        if args.to_taming:
            state = export_to_taming(args.to_taming, args.output)
            print(f"wrote {len(state)} tensors to {args.output}")
            return 0
        if args.lwm:
            from .modeling_flax_vqgan import FlaxVQGANModel

            model = FlaxVQGANModel.from_pretrained(args.lwm)
            model.save_pretrained(args.output, safe_serialization=args.weights_format == "safetensors")
            print(f"wrote {args.output} ({args.weights_format}) from the LWM pickle {args.lwm}")
            return 0
        if not args.checkpoint:
            raise ConversionError("give --checkpoint FILE (or --to-taming MODEL_DIR)")
        config = _config_from_args(args)
        dropped = convert_taming_checkpoint(args.checkpoint, args.output, config, args.weights_format)
    except (CheckpointError, ConversionError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dropped {dropped} loss.* entries (discriminator/LPIPS); wrote {args.output} ({args.weights_format})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
