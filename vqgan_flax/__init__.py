"""vqgan-flax: taming-transformers' VQGAN image tokenizer in JAX/Flax.

The public names load on first use (PEP 562), so ``import vqgan_flax`` and ``vqgan-flax --help``
import neither JAX nor transformers; ``model_type: vqgan`` is registered with transformers' Auto
classes as soon as transformers is imported (see ``_auto.py``).
"""

import importlib as _importlib
import os as _os

from . import _auto
from .utils.quiet import quiet_transformers_advice as _quiet_transformers_advice

__version__ = "0.1.0"

# The small model this project trained and ships (see default_model/README.md): loads offline.
DEFAULT_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "default_model")

# Public name → the module that defines it.
_EXPORTS = {
    "PRESETS": "models.configuration",
    "VQGANConfig": "models.configuration",
    "list_presets": "models.configuration",
    "AttnBlock": "models.blocks",
    "Decoder": "models.blocks",
    "Downsample": "models.blocks",
    "DownsamplingBlock": "models.blocks",
    "Encoder": "models.blocks",
    "MidBlock": "models.blocks",
    "ResnetBlock": "models.blocks",
    "Upsample": "models.blocks",
    "UpsamplingBlock": "models.blocks",
    "FlaxVQGANModule": "models.module",
    "VQGANEncoderOutput": "models.outputs",
    "VQGANOutput": "models.outputs",
    "indices_to_grid": "models.outputs",
    "GumbelQuantizer": "models.quantizers",
    "QuantizerOutput": "models.quantizers",
    "VectorQuantizer": "models.quantizers",
    "FlaxHubModel": "hub.base",
    "FlaxVQGANModel": "hub.modeling",
    "FlaxVQGANPreTrainedModel": "hub.modeling",
    "VQModel": "hub.modeling",
    "VQGANImageProcessor": "data.processing",
    "VQGAN": "compat.lwm",  # LWM's interface (``vqgan_flax.vqgan.VQGAN`` stays, as in LWM)
}


def __getattr__(name: str):
    if name == "_register_auto_classes":
        return _auto.register
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vqgan_flax' has no attribute {name!r}")
    # transformers 5 without PyTorch prints "PyTorch was not found. Models won't be available"
    # while its modules load (more than once): true, and irrelevant to a Flax library.
    with _quiet_transformers_advice():
        value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})


_auto.register_when_transformers_loads()

__all__ = ["DEFAULT_MODEL", *sorted(_EXPORTS)]
