"""LWM (Large World Model) VQGAN checkpoints: its config fields and auto-named parameter tree.

LWM's Flax modules are ``@nn.compact``, so its parameters carry Flax's automatic names
(``Conv_0``, ``GroupNorm_1``, ``DownsamplingBlock_2``, ...) in creation order. This module maps
them onto our (taming/vqgan-jax) names once, on load.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models.configuration import VQGANConfig
from ..utils.files import errors_naming, read_json_object
from .common import check_weights, describe_architecture, expected_param_shapes, raise_on_mismatch
from .torch_pickle import CheckpointError, PathLike, load_pickle

# LWM's VQGANConfig defaults (the published LWM vision tokenizer).
LWM_DEFAULTS: Dict[str, Any] = {
    "resolution": 256,
    "num_channels": 3,
    "hidden_channels": 128,
    "channel_mult": [1, 2, 2, 4, 6],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "no_attn_mid_block": True,
    "z_channels": 64,
    "num_embeddings": 8192,
    "quantized_embed_dim": 64,
    "dropout": 0.0,
    "resample_with_conv": True,
    "commitment_cost": 0.25,
}

# Per kind of module: LWM child name -> (our name, kind of the child). "{i}" copies the index.
_RENAMES: Dict[str, Dict[str, Tuple[str, str]]] = {
    "root": {
        "encoder": ("encoder", "encoder"),
        "decoder": ("decoder", "decoder"),
        "quant_conv": ("quant_conv", "leaf"),
        "post_quant_conv": ("post_quant_conv", "leaf"),
        "quantize": ("quantize", "quantize"),
    },
    "quantize": {"embeddings": ("embedding/embedding", "leaf")},
    "encoder": {
        "Conv_0": ("conv_in", "leaf"),
        "Conv_1": ("conv_out", "leaf"),
        "GroupNorm_0": ("norm_out", "leaf"),
        "MidBlock_0": ("mid", "mid"),
        r"DownsamplingBlock_(\d+)": ("down_{i}", "level"),
    },
    "decoder": {
        "Conv_0": ("conv_in", "leaf"),
        "Conv_1": ("conv_out", "leaf"),
        "GroupNorm_0": ("norm_out", "leaf"),
        "MidBlock_0": ("mid", "mid"),
        # LWM creates the decoder levels from the lowest resolution up: UpsamplingBlock_0 is
        # our up_{n-1} (taming's decoder.up[n-1]).
        r"UpsamplingBlock_(\d+)": ("up_{reversed}", "level"),
    },
    "level": {
        r"ResnetBlock_(\d+)": ("block_{i}", "resnet"),
        r"AttnBlock_(\d+)": ("attn_{i}", "attn"),
        "Downsample_0": ("downsample", "resample"),
        "Upsample_0": ("upsample", "resample"),
    },
    "mid": {
        "ResnetBlock_0": ("block_1", "resnet"),
        "AttnBlock_0": ("attn_1", "attn"),
        "ResnetBlock_1": ("block_2", "resnet"),
    },
    "resnet": {
        "GroupNorm_0": ("norm1", "leaf"),
        "Conv_0": ("conv1", "leaf"),
        "GroupNorm_1": ("norm2", "leaf"),
        "Conv_1": ("conv2", "leaf"),
        "Conv_2": ("nin_shortcut", "leaf"),
    },
    "attn": {
        "GroupNorm_0": ("norm", "leaf"),
        "Conv_0": ("q", "leaf"),
        "Conv_1": ("k", "leaf"),
        "Conv_2": ("v", "leaf"),
        "Conv_3": ("proj_out", "leaf"),
    },
    "resample": {"Conv_0": ("conv", "leaf")},
}


def config_from_lwm(lwm_config: Optional[Dict[str, Any]] = None) -> VQGANConfig:
    """Our config for LWM's config fields (missing fields take LWM's published defaults)."""
    fields = {**LWM_DEFAULTS, **(lwm_config or {})}
    unknown = set(fields) - set(LWM_DEFAULTS) - {"num_resolutions"}
    if unknown:
        raise ValueError(f"unknown LWM config fields {sorted(unknown)}")
    return VQGANConfig(
        ch=fields["hidden_channels"],
        ch_mult=list(fields["channel_mult"]),
        num_res_blocks=fields["num_res_blocks"],
        attn_resolutions=list(fields["attn_resolutions"]),
        mid_block_attention=not fields["no_attn_mid_block"],
        z_channels=fields["z_channels"],
        n_embed=fields["num_embeddings"],
        embed_dim=fields["quantized_embed_dim"],
        dropout=fields["dropout"],
        resamp_with_conv=fields["resample_with_conv"],
        beta=fields["commitment_cost"],
        in_channels=fields["num_channels"],
        out_ch=fields["num_channels"],
        resolution=fields["resolution"],
    )


def _our_name(kind: str, name: str, num_levels: int, prefix: Tuple[str, ...]) -> Tuple[Tuple[str, ...], str]:
    for pattern, (new_name, child_kind) in _RENAMES[kind].items():
        match = re.fullmatch(pattern, name)
        if match:
            index = int(match.group(1)) if match.groups() else 0
            return (*prefix, *new_name.format(i=index, reversed=num_levels - 1 - index).split("/")), child_kind
    raise CheckpointError(f"unexpected LWM parameter {'/'.join((*prefix, name))}")


def _rename(tree: Dict[str, Any], kind: str, num_levels: int, prefix: Tuple[str, ...], out: Dict) -> None:
    """Copy ``tree`` (an LWM module of ``kind``) into ``out`` under our flat parameter paths."""
    for name, child in tree.items():
        path, child_kind = _our_name(kind, name, num_levels, prefix)
        if child_kind != "leaf":
            _rename(child, child_kind, num_levels, path, out)
        elif isinstance(child, dict):  # a layer: {"kernel": ..., "bias": ...}
            out.update({(*path, leaf): value for leaf, value in child.items()})
        else:  # a bare array (the codebook)
            out[path] = child


def lwm_params_to_flax(lwm_params: Dict[str, Any], config: VQGANConfig, source: str = "<LWM params>") -> Dict:
    """Rename LWM's parameter tree to ours and check every shape against the architecture."""
    from flax.traverse_util import unflatten_dict

    if not isinstance(lwm_params, dict):
        raise CheckpointError(f"{source}: holds a {type(lwm_params).__name__}, not LWM's params dict")
    if "params" in lwm_params and len(lwm_params) == 1:
        lwm_params = lwm_params["params"]
    flat: Dict[Tuple[str, ...], Any] = {}
    try:
        _rename(lwm_params, "root", config.num_resolutions, (), flat)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    expected = expected_param_shapes(config)
    not_arrays = [f"{'/'.join(p)} ({type(v).__name__})" for p, v in flat.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        raise CheckpointError(f"{source}: entries that are not arrays: {not_arrays[:5]}")
    missing = [f"{'/'.join(p)} {s}" for p, s in expected.items() if p not in flat]
    unexpected = [f"{'/'.join(p)} {v.shape}" for p, v in flat.items() if p not in expected]
    mismatched = [
        f"{'/'.join(p)}: checkpoint {v.shape}, model expects {expected[p]}"
        for p, v in flat.items()
        if p in expected and v.shape != expected[p]
    ]
    raise_on_mismatch(source, describe_architecture(config), missing, unexpected, mismatched)
    check_weights({"/".join(p): v for p, v in flat.items()}, source)
    return unflatten_dict({p: np.asarray(v, dtype=np.float32) for p, v in flat.items()})


def load_lwm_checkpoint(path: PathLike, config: Optional[Dict[str, Any]] = None) -> Tuple[VQGANConfig, Dict]:
    """Load LWM's pickled params (never with plain ``pickle.load``) → ``(config, params)``.

    The architecture comes from ``config`` (LWM's field names), else from an LWM-style
    ``config.json`` beside the checkpoint, else from LWM's published defaults.
    """
    path = os.fspath(path)
    if config is None:
        config_file = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
        if os.path.lexists(config_file):
            config = read_json_object(config_file, "an LWM config")
        with errors_naming(config_file, "an LWM config"):
            vqgan_config = config_from_lwm(config)
    else:
        vqgan_config = config_from_lwm(config)
    return vqgan_config, lwm_params_to_flax(load_pickle(path), vqgan_config, source=path)
