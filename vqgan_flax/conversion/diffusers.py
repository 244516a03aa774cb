"""diffusers' ``VQModel`` (aMUSEd's VQ, MUSE-style VQGANs) to taming's names and our config.

diffusers keeps taming's blocks under its own names: an encoder level is
``encoder.down_blocks.{i}`` holding ``resnets.{j}`` (``conv_shortcut`` is taming's
``nin_shortcut``), ``attentions.{j}`` and ``downsamplers.0``; the middle is ``mid_block``
(``resnets.0``, ``attentions.0``, ``resnets.1``); the decoder's ``up_blocks.{k}`` run from the
lowest resolution up (taming's level ``n - 1 - k``); attention projections are ``Linear``
layers (``to_q``/``to_k``/``to_v``/``to_out.0``, or before diffusers 0.14 ``query``/``key``/
``value``/``proj_attn``), taming's 1x1 convolutions. The quantizer is taming's VectorQuantizer2
(β = 0.25, taming's placement). A model is a folder: ``config.json`` (``_class_name`` VQModel)
beside ``diffusion_pytorch_model.safetensors`` (or ``.bin``), often a pipeline's ``vqvae/``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..models.configuration import VQGANConfig
from ..utils.files import read_json_object
from .common import ConversionError

WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DOWN_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
UP_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
# config.json fields that do not change the network's outputs: how latents are scaled for a
# diffusion model, dtype advice, how decode treats unquantized input, the nominal sample size.
_IGNORED = {"scaling_factor", "force_upcast", "lookup_from_codebook", "sample_size"}
_FIELDS = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
           "layers_per_block", "act_fn", "latent_channels", "num_vq_embeddings", "norm_num_groups",
           "vq_embed_dim", "norm_type", "mid_block_add_attention"}  # fmt: skip

_LEVEL = re.compile(
    r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\."
)
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.")
_RENAMES = {"conv_shortcut.": "nin_shortcut.", "group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.",
            "to_v.": "v.", "to_out.0.": "proj_out.", "query.": "q.", "key.": "k.", "value.": "v.",
            "proj_attn.": "proj_out."}  # fmt: skip
_OUTER = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}


def is_diffusers_state(state: Dict[str, Any]) -> bool:
    """Whether the key names are diffusers' (``encoder.down_blocks...``)."""
    return any(key.startswith("encoder.down_blocks.") for key in state)


def diffusers_key_to_taming(key: str, levels: int) -> str:
    """taming's name of a diffusers ``VQModel`` key (``levels``: the model's level count); keys
    outside the model's blocks are returned unchanged."""
    for old, new in _OUTER.items():
        if key.startswith(old):
            return new + key[len(old) :]
    match = _LEVEL.match(key)
    if match:
        part, _, index, kind, item = match.groups()
        level = int(index) if part == "encoder" else levels - 1 - int(index)
        where = f"{part}.{'down' if part == 'encoder' else 'up'}.{level}."
        if kind in ("downsamplers", "upsamplers"):
            head = where + ("downsample." if kind == "downsamplers" else "upsample.") if item == "0" else None
        else:
            head = where + f"{'block' if kind == 'resnets' else 'attn'}.{item}."
        return key if head is None else head + _rename(key[match.end() :])
    match = _MID.match(key)
    if match:
        part, kind, item = match.groups()
        name = {("resnets", "0"): "block_1", ("resnets", "1"): "block_2", ("attentions", "0"): "attn_1"}.get(
            (kind, item)
        )
        return key if name is None else f"{part}.mid.{name}." + _rename(key[match.end() :])
    return key


def _rename(rest: str) -> str:
    for old, new in _RENAMES.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def diffusers_to_taming_state(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The state dict under taming's names; attention ``Linear`` weights (C, C) become taming's
    1x1 convolution weights (C, C, 1, 1)."""
    levels = 1 + max(
        (int(m.group(3)) for k in state for m in [_LEVEL.match(k)] if m and m.group(1) == "decoder"), default=-1
    )
    renamed: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = diffusers_key_to_taming(key, levels)
        attention = (".attn." in name or ".attn_1." in name) and name.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        )
        if attention and np.ndim(value) == 2:
            value = np.reshape(value, (*np.shape(value), 1, 1))
        if name in renamed:
            raise ConversionError(f"two keys of the checkpoint are taming's {name} (one is {key})")
        renamed[name] = value
    return renamed


def locate_diffusers_model(path: str) -> Tuple[str, Optional[str]]:
    """``(weights file, config.json or None)`` of a diffusers model given as its folder, a
    pipeline folder with ``vqvae/``, or its weights file (its config.json read when beside it)."""
    if os.path.isdir(path):
        folder = path
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(path, "vqvae")):
            folder = os.path.join(path, "vqvae")
        found = [os.path.join(folder, name) for name in WEIGHTS_NAMES if os.path.isfile(os.path.join(folder, name))]
        if not found:
            names = " or ".join(WEIGHTS_NAMES)
            raise ConversionError(f"{folder}: not a regular file, nor a diffusers VQModel folder (no {names})")
        config = os.path.join(folder, "config.json")
        return found[0], config if os.path.isfile(config) else None
    config = os.path.join(os.path.dirname(path), "config.json")
    return path, config if os.path.isfile(config) else None


def _positive_ints(document: Dict[str, Any], name: str, source: str) -> List[int]:
    value = document.get(name)
    if not isinstance(value, list) or not value or any(type(v) is not int or v < 1 for v in value):
        raise ConversionError(f"{source}: {name}={value!r} must be a non-empty list of positive integers")
    return value


def config_from_diffusers(path: str, resolution: int = 256) -> VQGANConfig:
    """Our config from a diffusers ``VQModel`` ``config.json``; ``resolution`` places attention
    where levels attend (``AttnDownEncoderBlock2D``). What our model cannot be (another
    activation, spatial norm, attention in an encoder level but not its decoder level, an
    unknown field) is refused, naming the field."""
    document = read_json_object(path, "a diffusers config")
    if document.get("_class_name", "VQModel") != "VQModel":
        raise ConversionError(f"{path}: _class_name={document['_class_name']!r}; expected 'VQModel'")
    unknown = sorted(k for k in document if not k.startswith("_") and k not in _FIELDS | _IGNORED)
    if unknown:
        raise ConversionError(f"{path}: fields this converter does not know: {', '.join(unknown)}")
    for name, expected in (("act_fn", "silu"), ("norm_type", "group")):
        if document.get(name, expected) != expected:
            raise ConversionError(f"{path}: {name}={document[name]!r} is not supported (only {expected!r})")
    widths = _positive_ints(document, "block_out_channels", path)
    if any(w % widths[0] for w in widths):
        raise ConversionError(f"{path}: block_out_channels={widths}: each must be a multiple of the first")
    attends = []
    for name, kinds in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        types = document.get(name, [])
        if not isinstance(types, list) or len(types) != len(widths) or any(t not in kinds for t in types):
            raise ConversionError(
                f"{path}: {name}={types!r} must list {len(widths)} of {', '.join(kinds)} (one per block_out_channels)"
            )
        attends.append([kinds[t] for t in types])
    if attends[0] != attends[1][::-1]:
        raise ConversionError(f"{path}: encoder levels attending {attends[0]} but decoder levels {attends[1][::-1]}")
    latent = document.get("latent_channels", 3)
    fields = dict(
        ch=widths[0],
        ch_mult=[w // widths[0] for w in widths],
        num_res_blocks=document.get("layers_per_block", 1),
        attn_resolutions=[resolution >> i for i, on in enumerate(attends[0]) if on],
        resolution=resolution,
        in_channels=document.get("in_channels", 3),
        out_ch=document.get("out_channels", 3),
        z_channels=latent,
        embed_dim=document.get("vq_embed_dim") or latent,
        n_embed=document.get("num_vq_embeddings", 256),
        norm_num_groups=document.get("norm_num_groups", 32),
        mid_block_attention=document.get("mid_block_add_attention", True),
        quantizer="vq",
    )
    try:
        return VQGANConfig(**fields)
    except ValueError as err:
        raise ConversionError(f"{path}: {err}") from None


__all__ = (
    "config_from_diffusers",
    "diffusers_key_to_taming",
    "diffusers_to_taming_state",
    "is_diffusers_state",
    "locate_diffusers_model",
)
