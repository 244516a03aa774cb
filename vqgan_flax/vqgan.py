"""LWM's import path, ``from vqgan_flax.vqgan import VQGAN`` (LWM's ``lwm/vqgan.py``): the class
lives in ``compat/lwm.py``."""

from .compat.lwm import VQGAN

__all__ = ["VQGAN"]
