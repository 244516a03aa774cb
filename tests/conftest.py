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


TORCH_SKIP_REASON = (
    "needs PyTorch and the taming reference: torch==2.13.0 is a CPU build for Python 3.11 only, so the "
    "live PyTorch comparisons run on the legacy stack"
)


def require_torch_reference() -> None:
    """Skip the calling test (or module) when torch or taming's modules do not import; with
    ``VQGAN_FLAX_REQUIRE_TORCH=1`` (the legacy stack in CI, where they are installed) fail instead,
    so a broken install never hides behind a skip."""
    try:
        import taming.modules.diffusionmodules.model  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        if os.environ.get("VQGAN_FLAX_REQUIRE_TORCH") == "1":
            pytest.fail(f"VQGAN_FLAX_REQUIRE_TORCH=1 but the PyTorch reference does not import: {error}", pytrace=False)
        pytest.skip(f"{TORCH_SKIP_REASON} ({error})", allow_module_level=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("torch"):
        require_torch_reference()


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A saved tiny-preset model folder (seed 0), shared read-only by the CLI and dataset tests."""
    from vqgan_flax import FlaxVQGANModel, VQGANConfig

    folder = tmp_path_factory.mktemp("tiny")
    FlaxVQGANModel(VQGANConfig.from_preset("tiny"), seed=0).save_pretrained(folder)
    return str(folder)
