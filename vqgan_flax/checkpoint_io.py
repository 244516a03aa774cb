"""Kept for existing imports: the reader lives in ``vqgan_flax.conversion.torch_pickle`` (this
name is that module, private names and monkeypatching included)."""

import sys

from .conversion import torch_pickle

sys.modules[__name__] = torch_pickle
