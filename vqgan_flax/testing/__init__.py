"""Helpers shared by the test suite and the benchmarks (like ``transformers.testing_utils``).

``taming_reference``: taming-transformers' PyTorch modules assembled as taming's VQModel, for
parity checks and PyTorch baselines; importing it needs the test extras (torch, taming).

May import: models.
"""
