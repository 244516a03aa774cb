"""Other projects' interfaces on our model: LWM's ``VQGAN`` (``lwm``; also reachable as
``vqgan_flax.vqgan.VQGAN``). vqgan-jax's ``VQModel`` is ``hub.modeling.VQModel``.

May import: data, hub, models, conversion, utils.
"""
