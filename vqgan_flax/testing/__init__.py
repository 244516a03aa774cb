"""Helpers shared by the test suite and the benchmarks (like ``transformers.testing_utils``).

``taming_reference``: taming-transformers' PyTorch modules assembled as taming's VQModel, for
parity checks and PyTorch baselines; importing it needs the test extras (torch, taming).
``fixtures``: how ``tests/fixtures``' random Flax weights and inputs are drawn and how the fixture
generators in ``scripts/`` compare a remade case with the committed one (numpy and jax only).

May import: models.
"""
