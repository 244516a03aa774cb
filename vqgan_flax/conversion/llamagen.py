"""LlamaGen's VQ tokenizer (``tokenizer/tokenizer_image/vq_model.py``) to Flax parameters, and back.

LlamaGen keeps taming's blocks under its own names: an encoder level is
``encoder.conv_blocks.{i}`` holding ``res.{j}``, ``attn.{j}`` and ``downsample``; the middle is
``mid.0`` / ``mid.1`` / ``mid.2`` (block, attention, block); the decoder's ``conv_blocks.{k}`` run
from the lowest resolution up, so ``k`` is taming's level ``n - 1 - k``. Its quantizer compares
l2-normalised latents and codes (``codebook_l2_norm``, on in every released model), which the
shapes cannot tell: the conversion gives it ``quantizer="vq_l2"`` and LlamaGen's loss placement
(β on the commitment term). A training checkpoint holds ``model`` and, when trained with EMA,
``ema``; LlamaGen's own evaluation prefers ``ema``, and so does this. ``quantize.codebook_used``
(a usage statistic, not a weight) is dropped, and written back as zeros on export so that
LlamaGen's ``VQModel`` loads the file with ``strict=True``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models.configuration import VQGANConfig
from .common import ConversionError
from .torch_pickle import CheckpointError, PathLike, extract_state_dict, load_state_dict, load_torch_zip

# What LlamaGen's quantizer does that its tensors cannot show.
LLAMAGEN_FAMILY: Dict[str, Any] = {"quantizer": "vq_l2", "legacy_loss": False, "beta": 0.25}
# LlamaGen's VQModel registers this many usage slots (codebook_show_usage).
CODEBOOK_USED_SLOTS = 65536
BUFFERS = ("quantize.codebook_used",)

_LEVEL = re.compile(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)(\.\d+)?\.")
_MID = re.compile(r"(encoder|decoder)\.mid\.(\d+)\.")
_MID_NAMES = ("block_1", "attn_1", "block_2")
_TAMING_LEVEL = re.compile(r"(encoder\.down|decoder\.up)\.(\d+)\.(block|attn|downsample|upsample)(\.\d+)?\.")
_TAMING_MID = re.compile(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.")


def is_llamagen_state(state: Dict[str, Any]) -> bool:
    """Whether the key names are LlamaGen's (``encoder.conv_blocks...``)."""
    return any(key.startswith("encoder.conv_blocks.") for key in state)


def decoder_levels(state: Dict[str, Any]) -> int:
    """The number of levels, counted from the decoder's ``conv_blocks``."""
    found = {int(m.group(2)) for key in state for m in [_LEVEL.match(key)] if m and m.group(1) == "decoder"}
    return max(found) + 1 if found else 0


def llamagen_key_to_taming(key: str, levels: int) -> str:
    """taming's name of a LlamaGen key (``levels``: the model's level count); others unchanged."""
    match = _LEVEL.match(key)
    if match:
        part, index, kind, item = match.groups()
        level = int(index) if part == "encoder" else levels - 1 - int(index)
        name = {"res": "block"}.get(kind, kind)
        prefix = f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{name}{item or ''}."
        return prefix + key[match.end() :]
    match = _MID.match(key)
    if match and int(match.group(2)) < len(_MID_NAMES):
        return f"{match.group(1)}.mid.{_MID_NAMES[int(match.group(2))]}." + key[match.end() :]
    return key


def taming_key_to_llamagen(key: str, levels: int) -> str:
    """LlamaGen's name of a taming key; the inverse of [`llamagen_key_to_taming`]."""
    match = _TAMING_LEVEL.match(key)
    if match:
        where, index, kind, item = match.groups()
        part = where.split(".")[0]
        block = int(index) if part == "encoder" else levels - 1 - int(index)
        name = {"block": "res"}.get(kind, kind)
        return f"{part}.conv_blocks.{block}.{name}{item or ''}." + key[match.end() :]
    match = _TAMING_MID.match(key)
    if match:
        return f"{match.group(1)}.mid.{_MID_NAMES.index(match.group(2))}." + key[match.end() :]
    return key


def llamagen_to_taming_state(state: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
    """A LlamaGen state dict under taming's names, and how many buffers were dropped."""
    levels = decoder_levels(state)
    renamed = {llamagen_key_to_taming(k, levels): v for k, v in state.items() if k not in BUFFERS}
    if len(renamed) != len([k for k in state if k not in BUFFERS]):
        raise ConversionError("two LlamaGen keys map onto one taming name (a damaged state dict?)")
    return renamed, len(state) - len(renamed)


def read_llamagen_checkpoint(
    path: PathLike, max_bytes: Optional[int] = None, ema: bool = True
) -> Tuple[Dict[str, np.ndarray], str]:
    """The model state dict of a LlamaGen ``.pt`` (a training checkpoint: ``ema`` preferred unless
    ``ema=False``, else ``model``) or ``.safetensors``; and which entry it came from."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_state_dict(path), "safetensors"
    loaded = load_torch_zip(path, max_bytes)
    if isinstance(loaded, dict) and ema and isinstance(loaded.get("ema"), dict):
        return extract_state_dict(loaded["ema"], source=f"{path}: ema"), "ema"
    if isinstance(loaded, dict) and not ema and "model" not in loaded and "ema" in loaded:
        raise CheckpointError(f"{path}: holds only EMA weights ('ema'); --no-ema asks for the trained ones")
    entry = "model" if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict) else "state dict"
    return extract_state_dict(loaded, source=path), entry


def flax_to_llamagen(params: Dict[str, Any], config: VQGANConfig) -> Dict[str, np.ndarray]:
    """Flax parameters as a LlamaGen state dict (OIHW convs, LlamaGen's names, a zero
    ``codebook_used``) that LlamaGen's ``VQModel`` loads with ``strict=True``."""
    from .taming import flax_to_taming

    if config.quantizer != "vq_l2":
        raise ConversionError(
            f"quantizer={config.quantizer!r}: LlamaGen's VQModel normalises its codes (vq_l2); these weights would "
            "load there and compute something else"
        )
    state = {taming_key_to_llamagen(k, config.num_resolutions): v for k, v in flax_to_taming(params).items()}
    state["quantize.codebook_used"] = np.zeros(CODEBOOK_USED_SLOTS, np.float32)
    return state


__all__ = (
    "BUFFERS",
    "LLAMAGEN_FAMILY",
    "decoder_levels",
    "flax_to_llamagen",
    "is_llamagen_state",
    "llamagen_key_to_taming",
    "llamagen_to_taming_state",
    "read_llamagen_checkpoint",
    "taming_key_to_llamagen",
)
