"""Session setup: environment (8 CPU devices, CPU kernels on), exact float32 matmuls, the torch
marker hook and shared fixtures. Helpers to import live in utils.py."""

from __future__ import annotations

import os
import pathlib
import sys

# In-process CLI calls must not switch on a persistent compilation cache for the whole session.
os.environ["VQGAN_FLAX_CACHE_DIR"] = ""

# Eight CPU devices for the multi-device tests; must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# With 8 devices "auto" would leave the CPU kernels (vqgan_flax/kernels/cpu.py) out; the suite
# runs the model through them, as a one-device user's CPU does (parity fixtures included).
os.environ.setdefault("VQGAN_FLAX_CPU_KERNELS", "on")

import jax
import pytest

# The parity tolerances (1e-4) assume true float32 matmuls/convs on every backend.
jax.config.update("jax_default_matmul_precision", "highest")

from utils import FIXTURES, require_torch_reference  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("torch"):
        require_torch_reference()
    # Tooling whose result cannot depend on the stack it runs on (scripts that drive a checkout,
    # tests that already run both interpreters), and per-family repeats of paths both stacks test
    # with the default model, run once: CI runs both suites in 35 minutes.
    if item.get_closest_marker("one_stack") and sys.version_info < (3, 12):
        pytest.skip("runs on the current stack only: it does not depend on the stack (CI time)")


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
