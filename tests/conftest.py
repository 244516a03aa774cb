"""Shared test setup: exact float32 matmuls, fixture paths and comparison helpers."""

from __future__ import annotations

import os
import pathlib

# In-process CLI calls must not switch on a persistent compilation cache for the whole session.
os.environ["VQGAN_FLAX_CACHE_DIR"] = ""

# Eight CPU devices for the multi-device tests; must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax
import numpy as np
import pytest

# The parity tolerances (1e-4) assume true float32 matmuls/convs on every backend.
jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TAMING_CASES = ("taming_vq", "taming_gumbel", "taming_vq_nonsquare")
ATOL = RTOL = 1e-4


def nchw_to_nhwc(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).transpose(0, 2, 3, 1)


def assert_close(actual, expected, name: str = "", atol: float = ATOL, rtol: float = RTOL) -> None:
    actual, expected = np.asarray(actual, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=name)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
