"""vqgan-flax: taming-transformers' VQGAN image tokenizer in JAX/Flax."""

import os as _os

from .configuration_vqgan import PRESETS, VQGANConfig, list_presets
from .image_processing_vqgan import VQGANImageProcessor
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


def _register_auto_classes() -> None:
    """After ``import vqgan_flax``, AutoConfig / FlaxAutoModel resolve ``model_type: vqgan``."""
    from transformers import AutoConfig, FlaxAutoModel

    AutoConfig.register(VQGANConfig.model_type, VQGANConfig, exist_ok=True)
    FlaxAutoModel.register(VQGANConfig, FlaxVQGANModel, exist_ok=True)


_register_auto_classes()

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
    "VQGANImageProcessor",
    "VQGANOutput",
    "VQModel",
    "VectorQuantizer",
    "indices_to_grid",
    "list_presets",
]
