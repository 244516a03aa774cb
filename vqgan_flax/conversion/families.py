"""One entry point for checkpoints of every family: read, rename to taming's layout, take the
architecture from a config or from the shapes, convert, write a ``from_pretrained`` folder.

    family     key names                          what the family adds to the shapes
    taming     encoder.down.1.block.0...          nearest-neighbour VQ (or Gumbel: its tensors show it)
    llamagen   encoder.conv_blocks.1.res.0...     l2-normalised codes, β on the commitment term
    ibq        taming's (+ model_ema.*)           the code of the largest dot product
    ldm        taming's (+ model_ema.*)           nothing: latent-diffusion's VQ is taming's
    diffusers  encoder.down_blocks.1.resnets.0... nothing (its config.json, when present, decides)

``auto`` tells taming, LlamaGen and diffusers apart by their key names (a folder is a diffusers
model); IBQ has taming's names, so it must be named (latent-diffusion's VQ converts the same under
``auto``, ``taming`` and ``ldm``). EMA weights (LlamaGen's ``ema`` entry, LitEma's ``model_ema.*``)
are taken when present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models.configuration import VQGANConfig
from ..utils.transaction import check_apart
from ..utils.weights import save_model_folder
from .common import ConversionError, checkpoint_read_limit, describe_architecture, expected_param_shapes
from .diffusers import config_from_diffusers, diffusers_to_taming_state, is_diffusers_state, locate_diffusers_model
from .layout import infer_taming_config
from .lit_ema import lit_ema_state
from .llamagen import LLAMAGEN_FAMILY, is_llamagen_state, llamagen_to_taming_state, read_llamagen_checkpoint
from .taming import convert_state_dict
from .torch_pickle import PathLike, check_regular_file, load_state_dict

FAMILIES = ("auto", "taming", "llamagen", "ibq", "ldm", "diffusers")
# What each family's quantizer does that its tensors cannot show.
TRAITS: Dict[str, Dict[str, Any]] = {
    "taming": {"quantizer": "vq"},
    "llamagen": LLAMAGEN_FAMILY,
    "ibq": {"quantizer": "ibq", "beta": 0.25},
    "ldm": {"quantizer": "vq"},
    "diffusers": {"quantizer": "vq"},
}


@dataclass
class Conversion:
    """What [`convert_checkpoint`] did: the ``family`` it read, the ``config`` it wrote (inferred
    from the shapes when ``inferred``), the checkpoint ``entry`` the weights came from (``ema``,
    ``model``, ``state dict``, ``safetensors``) and how many non-model entries it ``dropped``
    (loss/discriminator weights, usage buffers); ``config_file``: the family's own config the
    architecture was read from (a diffusers ``config.json``), if any."""

    family: str
    config: VQGANConfig
    inferred: bool
    entry: str
    dropped: int
    config_file: Optional[str] = None


def _read_limit(path: str, config: Optional[VQGANConfig]) -> int:
    """What the reader may load: the architecture's bound where it is known; otherwise twice the
    file (a torch zip stores its tensors uncompressed) plus 256 MB, so a small file cannot make it
    read gigabytes."""
    if config is not None:
        return checkpoint_read_limit(expected_param_shapes(config))
    return 2 * os.path.getsize(path) + (256 << 20)


def read_family_state(
    checkpoint: PathLike, family: str = "auto", config: Optional[VQGANConfig] = None, ema: bool = True
) -> Tuple[str, Dict[str, np.ndarray], str, int]:
    """``(family, state dict under taming's names, entry, dropped)`` of ``checkpoint``."""
    if family not in FAMILIES:
        raise ConversionError(f"--from {family!r}: expected one of {', '.join(FAMILIES)}")
    path = os.fspath(checkpoint)
    if os.path.isdir(path) and family in ("auto", "diffusers"):
        path, family = locate_diffusers_model(path)[0], "diffusers"
    check_regular_file(path)  # before the read limit looks at its size
    limit = _read_limit(path, config)
    if family in ("auto", "llamagen"):
        state, entry = read_llamagen_checkpoint(path, limit, ema=ema)
    else:
        state = load_state_dict(path, max_bytes=limit)
        entry = "safetensors" if path.endswith(".safetensors") else "state dict"
    if family == "auto":
        family = "llamagen" if is_llamagen_state(state) else "diffusers" if is_diffusers_state(state) else "taming"
    if family == "diffusers":
        if not is_diffusers_state(state):
            raise ConversionError(f"{path}: --from diffusers, but no encoder.down_blocks.* keys (a taming layout?)")
        return family, diffusers_to_taming_state(state), entry, 0
    if family == "llamagen":
        if not is_llamagen_state(state):
            raise ConversionError(f"{path}: --from llamagen, but no encoder.conv_blocks.* keys (a taming layout?)")
        state, dropped = llamagen_to_taming_state(state)
        return family, state, entry, dropped
    for other, is_other, marker in (
        ("LlamaGen", is_llamagen_state, "conv_blocks"),
        ("diffusers", is_diffusers_state, "down_blocks"),
    ):
        if is_other(state):
            raise ConversionError(f"{path}: --from {family}, but its keys are {other}'s (encoder.{marker}.*)")
    kept, which = lit_ema_state(state, path, ema)
    return family, kept, "ema" if which == "ema" else entry, len(state) - len(kept)


def convert_checkpoint(
    checkpoint: PathLike,
    output_dir: PathLike,
    family: str = "auto",
    config: Optional[VQGANConfig] = None,
    resolution: int = 256,
    weights_format: str = "safetensors",
    ema: bool = True,
) -> Conversion:
    """Convert ``checkpoint`` of ``family`` to a ``from_pretrained`` folder at ``output_dir``. Without
    ``config`` the architecture comes from the tensor shapes, ``resolution`` placing attention
    (with ``family="ibq"`` a given config gets IBQ's quantizer).
    Every missing, unexpected or mis-shaped tensor is listed in one error."""
    if weights_format not in ("safetensors", "msgpack"):
        raise ValueError(f"unknown weights format {weights_format!r}; expected 'safetensors' or 'msgpack'")
    check_apart(checkpoint, output_dir, "convert")
    source = os.fspath(checkpoint)
    config_file = None
    if family == "diffusers" or (family == "auto" and os.path.isdir(source)):
        # Its weights file is read below; its config.json (if any, and no config given) here.
        checkpoint, found = locate_diffusers_model(source)
        family = "diffusers"
        if config is None and found:
            config, config_file = config_from_diffusers(found, resolution), found
    family, state, entry, dropped = read_family_state(checkpoint, family, config, ema)
    inferred = config is None
    if config is None:
        config = infer_taming_config(state, source, resolution, **TRAITS[family])
    elif family == "ibq" and config.quantizer != "ibq":  # a taming-style YAML cannot say it
        config = VQGANConfig.from_dict({**config.to_dict(), "quantizer": "ibq"})
    params, _ = convert_state_dict(state, expected_param_shapes(config), source, describe_architecture(config))
    config.architectures = ["VQGANModel"]
    save_model_folder(os.fspath(output_dir), config.save_pretrained, params, weights_format == "safetensors")
    return Conversion(family, config, inferred, entry, dropped, config_file)


__all__ = ("FAMILIES", "TRAITS", "Conversion", "convert_checkpoint", "read_family_state")
