"""taming-transformers (PyTorch) VQGAN state dicts to Flax parameters, and back.

Names map one to one (taming ``encoder.down.1.block.0.conv1.weight`` is Flax
``encoder/down_1/block_0/conv1/kernel``); conv kernels go OIHW → HWIO, norm ``weight`` → ``scale``,
embedding ``weight`` → ``embedding``. No PyTorch is needed except to write ``.pt`` files.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..models.configuration import VQGANConfig
from ..utils.files import atomic_write
from ..utils.transaction import check_apart
from ..utils.weights import read_folder_weights, save_model_folder
from .common import (
    ConversionError,
    check_weights,
    checkpoint_read_limit,
    describe_architecture,
    expected_param_shapes,
    raise_on_mismatch,
)
from .torch_pickle import PathLike, load_state_dict

FlatParams = Dict[Tuple[str, ...], np.ndarray]

# taming's module lists ("down.1", "block.0") are "down_1", "block_0" in Flax.
_LIST_ITEM = re.compile(r"(?<![^.])(down|up|block|attn)\.(\d+)(?=\.)")
_LEVEL = re.compile(r"(down|up)_(\d+)")
_LEVEL_ITEM = re.compile(r"(block|attn)_(\d+)")
# Flax leaf names that taming calls "weight".
_WEIGHT_LEAVES = ("kernel", "scale", "embedding")


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


def convert_taming_checkpoint(
    checkpoint: PathLike,
    output_dir: PathLike,
    config: VQGANConfig,
    weights_format: str = "safetensors",
) -> int:
    """Convert ``checkpoint`` and write a ``from_pretrained`` folder (``config.json`` and the
    weights, as ``FlaxVQGANModel.save_pretrained`` writes them); returns the number of dropped
    ``loss.*`` entries."""
    if weights_format not in ("safetensors", "msgpack"):
        raise ValueError(f"unknown weights format {weights_format!r}; expected 'safetensors' or 'msgpack'")
    check_apart(checkpoint, output_dir, "convert")
    expected = expected_param_shapes(config)
    state_dict = load_state_dict(checkpoint, max_bytes=checkpoint_read_limit(expected))
    source = os.fspath(checkpoint)
    params, dropped = convert_state_dict(state_dict, expected, source, describe_architecture(config))
    config.architectures = ["VQGANModel"]  # what save_pretrained records (transformers drops "Flax")
    save_model_folder(os.fspath(output_dir), config.save_pretrained, params, weights_format == "safetensors")
    return dropped


def export_to_taming(model: PathLike, output: PathLike, layout: str = "taming") -> Dict[str, np.ndarray]:
    """Write a local model folder's weights (or an LWM params pickle's) as a taming state dict:
    ``.safetensors``, or ``.pt``/``.pth``/``.ckpt`` (those need torch; ``.ckpt`` nests it under
    ``state_dict`` like Lightning). Every parameter of the architecture must be there with its shape.
    ``layout="llamagen"`` writes LlamaGen's names instead (a ``.pt`` nests them under ``model``, as
    LlamaGen's checkpoints do)."""
    from .lwm import load_lwm_checkpoint

    model = os.fspath(model)
    check_apart(model, output, f"export to {layout}")
    if os.path.isfile(model):
        config, params = load_lwm_checkpoint(model)
    else:
        config, params = VQGANConfig.from_pretrained(model), read_folder_weights(model)
    return export_params_to_taming(config, params, output, model, layout)


def export_params_to_taming(
    config: VQGANConfig, params: Dict, output: PathLike, source: str, layout: str = "taming"
) -> Dict[str, np.ndarray]:
    """[`export_to_taming`] for parameters in hand: checked against ``config`` (keys, shapes,
    finite floating weights, taming's 32 GroupNorm groups), converted and written to ``output``."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    if config.norm_num_groups != 32:
        # taming's Normalize has 32 groups, fixed: the weights would load and compute something else.
        raise ConversionError(
            f"{source}: norm_num_groups={config.norm_num_groups}; taming's GroupNorm always has 32 groups"
        )
    flat = flatten_dict(dict(params))
    if len(flat) and all(k[0] == "vqgan" for k in flat):  # transformers' base_model_prefix
        flat = {k[1:]: v for k, v in flat.items()}
    expected = expected_param_shapes(config)
    for path, value in flat.items():  # older vqgan-jax files keep GroupNorm scale/bias as (1, 1, 1, C)
        if path in expected and tuple(value.shape) == (1, 1, 1, *expected[path]):
            flat[path] = value.reshape(expected[path])
    missing = [f"{'/'.join(p)} {s}" for p, s in expected.items() if p not in flat]
    unexpected = [f"{'/'.join(p)} {tuple(v.shape)}" for p, v in flat.items() if p not in expected]
    mismatched = [
        f"{'/'.join(p)}: weights {tuple(v.shape)}, config expects {expected[p]}"
        for p, v in flat.items()
        if p in expected and tuple(v.shape) != expected[p]
    ]
    raise_on_mismatch(source, describe_architecture(config), missing, unexpected, mismatched)
    check_weights({"/".join(k): v for k, v in flat.items()}, source)
    if layout == "llamagen":
        from .llamagen import flax_to_llamagen

        state = flax_to_llamagen(unflatten_dict(flat), config)
    elif layout == "taming":
        state = flax_to_taming(unflatten_dict(flat))
    else:
        raise ConversionError(f"unknown layout {layout!r}; expected 'taming' or 'llamagen'")
    output = os.fspath(output)
    if os.path.lexists(output) and not os.path.isfile(output):
        raise ConversionError(f"{output}: exists and is not a regular file")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if output.endswith(".safetensors"):
        from safetensors.numpy import save

        data = save(state, metadata={"format": "pt"})
        atomic_write(output, lambda f: f.write(data))
    elif output.endswith((".pt", ".pth", ".ckpt")):
        try:
            import torch
        except ImportError:
            raise ConversionError(f"{output}: writing .pt/.pth/.ckpt needs torch; use a .safetensors name") from None
        tensors = {k: torch.from_numpy(v) for k, v in state.items()}
        wrapper = "model" if layout == "llamagen" else "state_dict" if output.endswith(".ckpt") else None
        atomic_write(output, lambda f: torch.save({wrapper: tensors} if wrapper else tensors, f))
    else:
        raise ConversionError(f"{output}: unknown extension; use .safetensors, .pt, .pth or .ckpt")
    return state
