"""vqgan-flax: taming-transformers' VQGAN image tokenizer in JAX/Flax."""

from .configuration_vqgan import PRESETS, VQGANConfig, list_presets
from .modeling_flax_vqgan import (
    AttnBlock,
    Decoder,
    Downsample,
    DownsamplingBlock,
    Encoder,
    FlaxVQGANModel,
    FlaxVQGANModule,
    FlaxVQGANPreTrainedModel,
    MidBlock,
    ResnetBlock,
    Upsample,
    UpsamplingBlock,
    VQModel,
)
from .modeling_outputs import VQGANEncoderOutput, VQGANOutput, indices_to_grid
from .quantizers import GumbelQuantizer, QuantizerOutput, VectorQuantizer

__version__ = "0.1.0"

import os as _os

# The small model this project trained and ships (see default_model/README.md): loads offline.
DEFAULT_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "default_model")

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "DownsamplingBlock",
    "Encoder",
    "FlaxVQGANModel",
    "FlaxVQGANModule",
    "FlaxVQGANPreTrainedModel",
    "GumbelQuantizer",
    "MidBlock",
    "QuantizerOutput",
    "ResnetBlock",
    "Upsample",
    "UpsamplingBlock",
    "VQGANConfig",
    "VQGANEncoderOutput",
    "VQGANOutput",
    "VQModel",
    "VectorQuantizer",
    "indices_to_grid",
    "list_presets",
]
