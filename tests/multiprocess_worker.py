"""One process of the two-process encode_dataset test (run by test_parallel.py, not by pytest)."""

import os
import sys

process_id, num_processes, port, model_dir, items_dir, out_dir = sys.argv[1:7]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes), process_id=int(process_id))

from vqgan_flax import FlaxVQGANModel  # noqa: E402
from vqgan_flax.data.distributed import encode_dataset  # noqa: E402

assert jax.device_count() == 4 * int(num_processes) and jax.local_device_count() == 4
items = sorted(os.path.join(items_dir, name) for name in os.listdir(items_dir))
model = FlaxVQGANModel.from_pretrained(model_dir)
print(encode_dataset(items, model, out_dir, image_size=16, batch_size_per_device=1))
jax.distributed.shutdown()
