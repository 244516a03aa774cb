"""vqgan-flax: taming-transformers' VQGAN image tokenizer in JAX/Flax."""

import os as _os

from ._quiet import quiet_transformers_advice as _quiet_transformers_advice

# transformers 5 without PyTorch prints "PyTorch was not found. Models won't be available" while
# its modules load (more than once): true, and irrelevant to a Flax library.
with _quiet_transformers_advice():
    from .configuration_vqgan import PRESETS, VQGANConfig, list_presets
    from .image_processing_vqgan import VQGANImageProcessor
    from .modeling_flax_base import FlaxHubModel
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
    from .vqgan import VQGAN  # LWM's interface (``vqgan_flax.vqgan.VQGAN`` stays, as in LWM)

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """After ``import vqgan_flax``, AutoConfig and AutoImageProcessor (and FlaxAutoModel, where the
    installed transformers still has it) resolve ``model_type: vqgan``."""
    from transformers import AutoConfig, AutoImageProcessor

    from .modeling_flax_base import _transformers_flax_base

    AutoConfig.register(VQGANConfig.model_type, VQGANConfig, exist_ok=True)
    # Keyword accepted by both transformers 4.57 and 5.x (their positional parameters differ).
    try:
        AutoImageProcessor.register(VQGANConfig, slow_image_processor_class=VQGANImageProcessor, exist_ok=True)
    except ImportError:
        # Some transformers 5.x releases (5.17 seen) make AutoImageProcessor a placeholder that
        # demands torch/torchvision; VQGANImageProcessor itself needs neither, so only the Auto
        # lookup is lost there and importing vqgan_flax must still work.
        pass
    if _transformers_flax_base() is not None:
        from transformers import FlaxAutoModel

        FlaxAutoModel.register(VQGANConfig, FlaxVQGANModel, exist_ok=True)


with _quiet_transformers_advice():
    _register_auto_classes()

# The small model this project trained and ships (see default_model/README.md): loads offline.
DEFAULT_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "default_model")

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "VQGAN",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "DownsamplingBlock",
    "Encoder",
    "FlaxHubModel",
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
