"""Kept for existing imports: the LWM mapping lives in ``vqgan_flax.conversion.lwm`` (this name
is that module)."""

import sys

from .conversion import lwm

sys.modules[__name__] = lwm
