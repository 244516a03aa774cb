"""The architecture of a taming-layout state dict, read from its tensor shapes.

Every member of the family (taming, LlamaGen after renaming, latent-diffusion, IBQ) stores the
same Encoder/Decoder blocks, so the shapes tell the channel width and multipliers, the blocks per
level, the latent and code sizes, the codebook size and which levels attend. They cannot tell the
training resolution (attention is placed by level here, so any resolution that puts it on the same
levels gives the same model), the GroupNorm groups (32 in every family), nor how the quantizer
measures distance (plain or l2-normalised): the family supplies those.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

import numpy as np

from ..models.configuration import VQGANConfig
from .common import ConversionError

_LEVEL_KEY = re.compile(r"encoder\.down\.(\d+)\.")
_BLOCK_KEY = re.compile(r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight")


def _shape(state: Dict[str, np.ndarray], key: str, source: str, ndim: int) -> tuple:
    if key not in state:
        raise ConversionError(
            f"{source}: cannot infer the architecture: no {key} (not a VQGAN of the taming family, or another "
            "family: give --from or --config)"
        )
    shape = tuple(np.shape(state[key]))
    if len(shape) != ndim:
        raise ConversionError(f"{source}: {key} has shape {shape}; a {ndim}-dimensional tensor was expected")
    return shape


def infer_taming_config(
    state: Dict[str, np.ndarray], source: str = "<state dict>", resolution: int = 256, **family: Any
) -> VQGANConfig:
    """The [`VQGANConfig`] of a state dict with taming's key names (``encoder.down.1.block.0...``):
    every shape-decided field from the shapes; ``resolution`` places attention (level ``i`` is at
    ``resolution // 2**i``); ``family`` gives what shapes cannot tell (``quantizer``,
    ``legacy_loss``, ``beta``). Whatever the shapes leave inconsistent is left to the conversion,
    which lists every mismatching tensor."""
    ch, in_channels = _shape(state, "encoder.conv_in.weight", source, 4)[:2]
    levels = sorted({int(m.group(1)) for key in state for m in [_LEVEL_KEY.match(key)] if m})
    if levels != list(range(len(levels))) or not levels:
        raise ConversionError(f"{source}: encoder levels {levels}: expected encoder.down.0 to encoder.down.N")
    blocks = sorted({int(m.group(1)) for key in state for m in [_BLOCK_KEY.fullmatch(key)] if m})
    if blocks != list(range(len(blocks))):
        raise ConversionError(f"{source}: encoder.down.0 has blocks {blocks}; expected block.0 to block.N")
    ch_mult: List[int] = []
    for level in levels:
        width = _shape(state, f"encoder.down.{level}.block.{len(blocks) - 1}.conv2.weight", source, 4)[0]
        if width % ch:
            raise ConversionError(f"{source}: encoder level {level} has {width} channels, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    attention = [level for level in levels if f"encoder.down.{level}.attn.0.q.weight" in state]
    if resolution >> (len(levels) - 1) < 1:
        raise ConversionError(f"{source}: resolution {resolution} is too small for {len(levels)} levels")
    z_channels = _shape(state, "decoder.conv_in.weight", source, 4)[1]
    encoder_out = _shape(state, "encoder.conv_out.weight", source, 4)[0]
    gumbel = "quantize.proj.weight" in state
    codebook = _shape(state, "quantize.embed.weight" if gumbel else "quantize.embedding.weight", source, 2)
    fields: Dict[str, Any] = dict(
        ch=ch,
        in_channels=in_channels,
        out_ch=_shape(state, "decoder.conv_out.weight", source, 4)[0],
        ch_mult=ch_mult,
        num_res_blocks=len(blocks),
        attn_resolutions=[resolution >> level for level in attention],
        resolution=resolution,
        z_channels=z_channels,
        double_z=encoder_out == 2 * z_channels and encoder_out != z_channels,
        embed_dim=_shape(state, "quant_conv.weight", source, 4)[0],
        n_embed=codebook[0],
        mid_block_attention="encoder.mid.attn_1.q.weight" in state,
        resamp_with_conv=len(levels) == 1 or "encoder.down.0.downsample.conv.weight" in state,
    )
    fields.update(family)
    if gumbel:
        fields["quantizer"] = "gumbel"
    try:
        return VQGANConfig(**fields)
    except ValueError as err:
        raise ConversionError(f"{source}: the shapes describe no valid architecture: {err}") from None


__all__ = ("infer_taming_config",)
