"""The VQGAN as math: its configuration and named presets, the blocks, the quantizers, the whole
Flax module with taming's initialisation, the typed outputs, and the checks of pixels and
indices a model is given. No loading, saving or Hub here.

May import: kernels, utils.
"""
