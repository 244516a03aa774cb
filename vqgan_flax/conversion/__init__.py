"""Checkpoints from other code bases to ours, and back, without torch and without running pickles.

    torch_pickle.py   PyTorch ``.ckpt``/``.pt`` zips and plain pickles read with an allow-list
                      (every tensor's metadata checked against its storage)
    taming.py         taming-transformers state dicts ⇄ Flax parameters (keys, OIHW ⇄ HWIO)
    llamagen.py       LlamaGen's VQ names ⇄ taming's; its checkpoints (EMA preferred)
    diffusers.py      diffusers' VQModel names ⇄ taming's; its config.json → our config
    lit_ema.py        LitEma's shadow weights in Lightning checkpoints (IBQ, latent-diffusion)
    layout.py         the architecture of a taming-layout state dict, from its tensor shapes
    families.py       one entry point: read any family, infer or take the config, convert
    lwm.py            LWM's auto-named Flax params pickle → our names
    common.py         what the mappings share: expected shapes, one error listing every
                      mismatch, the weight check, the reader's size limit

The command line (``vqgan-flax convert``) is ``cli/convert.py``. Parameter shapes come from the
Flax module (``models``), never from the model class: this part sits below the Hub/base layer,
which loads LWM pickles and checks weights through it.

May import: models, utils.
"""

from .common import *  # noqa: F403 (its __all__: the shared checks and errors)
from .common import __all__ as _common_names
from .families import FAMILIES, Conversion, convert_checkpoint, read_family_state
from .layout import infer_taming_config
from .lit_ema import has_ema, lit_ema_state
from .llamagen import flax_to_llamagen, llamagen_key_to_taming, read_llamagen_checkpoint, taming_key_to_llamagen
from .lwm import config_from_lwm, load_lwm_checkpoint, lwm_params_to_flax
from .taming import (
    convert_state_dict,
    convert_taming_checkpoint,
    export_params_to_taming,
    export_to_taming,
    flax_key_to_taming,
    flax_to_taming,
    taming_key_to_flax,
    taming_shape,
    taming_to_flax,
)
from .torch_pickle import CheckpointError, extract_state_dict, load_pickle, load_state_dict, load_torch_zip

__all__ = [
    *_common_names,
    "CheckpointError",
    "Conversion",
    "FAMILIES",
    "convert_checkpoint",
    "flax_to_llamagen",
    "has_ema",
    "lit_ema_state",
    "infer_taming_config",
    "llamagen_key_to_taming",
    "read_family_state",
    "read_llamagen_checkpoint",
    "taming_key_to_llamagen",
    "config_from_lwm",
    "convert_state_dict",
    "convert_taming_checkpoint",
    "export_params_to_taming",
    "export_to_taming",
    "extract_state_dict",
    "flax_key_to_taming",
    "flax_to_taming",
    "load_lwm_checkpoint",
    "load_pickle",
    "load_state_dict",
    "load_torch_zip",
    "lwm_params_to_flax",
    "taming_key_to_flax",
    "taming_shape",
    "taming_to_flax",
]
