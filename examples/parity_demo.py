"""Convert the bundled taming checkpoints, load the bundled vqgan-jax ones, and show that our
outputs equal what the reference implementations produced for the same inputs.

    python examples/parity_demo.py --output build/demo
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")  # true float32 on every backend

from vqgan_flax import FlaxVQGANModel, VQGANConfig  # noqa: E402
from vqgan_flax.conversion import convert_taming_checkpoint  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TOLERANCE = 1e-4


def _nhwc(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1)


def taming_case(name: str, output: pathlib.Path) -> dict:
    folder = FIXTURES / name
    config = VQGANConfig.from_taming_yaml(folder / "model.yaml")
    dropped = convert_taming_checkpoint(folder / "last.ckpt", output / name, config)
    model = FlaxVQGANModel.from_pretrained(output / name)
    x = _nhwc(np.load(folder / "inputs.npz")["pixel_values"])
    expected = np.load(folder / "expected.npz")
    encoded = model.encode(x)
    return {
        "case": name,
        "source": f"taming {config.quantizer} (converted, {dropped} loss.* keys dropped)",
        "input": "x".join(map(str, x.shape[1:3])),
        "z": encoded.latents - _nhwc(expected["z"]),
        "quant": encoded.quant_states - _nhwc(expected["quant"]),
        "indices": np.asarray(encoded.indices) == expected["indices"].reshape(x.shape[0], -1),
        "decode": model.decode(encoded.quant_states) - _nhwc(expected["reconstruction"]),
        "decode_code": model.decode_code(expected["indices"]) - _nhwc(expected["decoded_from_indices"]),
    }


def vqganjax_case(name: str) -> dict:
    folder = FIXTURES / name
    model = FlaxVQGANModel.from_pretrained(folder / "checkpoint")
    x = np.load(folder / "inputs.npz")["pixel_values"]
    expected = np.load(folder / "expected.npz")
    encoded = model.encode(x)
    return {
        "case": name,
        "source": "vqgan-jax checkpoint (loaded as is)",
        "input": "x".join(map(str, x.shape[1:3])),
        "z": encoded.latents - expected["z"],
        "quant": encoded.quant_states - expected["quant_states"],
        "indices": np.asarray(encoded.indices) == expected["indices"],
        "decode": model.decode(encoded.quant_states) - expected["reconstruction"],
        "decode_code": model.decode_code(expected["indices"]) - expected["decoded"],
    }


def summarise(row: dict) -> dict:
    summary = {k: row[k] for k in ("case", "source", "input")}
    for key in ("z", "quant", "decode", "decode_code"):
        summary[f"max_abs_diff_{key}"] = float(np.max(np.abs(row[key])))
    summary["indices_equal"] = f"{int(row['indices'].sum())}/{row['indices'].size}"
    summary["ok"] = bool(row["indices"].all()) and all(
        summary[f"max_abs_diff_{k}"] <= TOLERANCE for k in ("z", "quant", "decode", "decode_code")
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="build/demo", help="where converted models and report.json go")
    args = parser.parse_args()
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = [taming_case(n, output) for n in ("taming_vq", "taming_gumbel", "taming_vq_nonsquare")]
    rows += [vqganjax_case(n) for n in ("vqganjax", "vqganjax_old_layout")]
    summaries = [summarise(r) for r in rows]
    header = f"{'case':<22}{'input':>7}{'max|Δz|':>10}{'max|Δquant|':>13}{'indices':>10}{'max|Δdecode|':>14}"
    print(header + f"{'max|Δdecode_code|':>19}  ok")
    for s in summaries:
        print(
            f"{s['case']:<22}{s['input']:>7}{s['max_abs_diff_z']:>10.1e}{s['max_abs_diff_quant']:>13.1e}"
            f"{s['indices_equal']:>10}{s['max_abs_diff_decode']:>14.1e}{s['max_abs_diff_decode_code']:>19.1e}"
            f"  {'yes' if s['ok'] else 'NO'}"
        )
    (output / "report.json").write_text(json.dumps(summaries, indent=2))
    print(
        f"\nreference: outputs of taming-transformers / vqgan-jax for the same weights and inputs; "
        f"tolerance {TOLERANCE:g}. Converted models and report.json in {output} ({time.time() - start:.0f} s)."
    )
    return 0 if all(s["ok"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
