"""Small helpers every part may use: keeping transformers' advice off stderr (``quiet``), optional
dependencies named in one line (``extras``), whole-or-nothing file writes (``files``), and our
weight files read and written (``weights``).

May import: nothing else of vqgan_flax.
"""
