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

__all__ = [
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
