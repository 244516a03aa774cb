"""``vqgan-flax decode``, ``reconstruct`` and ``info``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

import numpy as np

from ..image_io import atomic_write, check_key, find_images, load_image, output_names, to_uint8
from .common import (
    Runner,
    batches,
    default_model,
    load_model,
    model_name,
    model_pixel_range,
    prepare_output_folder,
    progress_bar,
    save_png_under,
)


def _image_job(args: argparse.Namespace):
    """Model, runner, input files and keys, image size and token grid of an encode/reconstruct
    command. The inputs and ``--out`` are checked before the model is loaded."""
    inputs = find_images(args.inputs)
    model = load_model(args)
    size = args.size or model.config.resolution
    runner = Runner(model, args.replicate, args.batch_size, model_pixel_range(model_name(args), args.revision))
    return runner, inputs, size, model.config.latent_shape(size, size)


def read_token_file(path: str, n_embed: Optional[int] = None) -> dict:
    """Load and validate a token file written by ``vqgan-flax encode`` (token values against the
    codebook too when ``n_embed`` is given)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as err:
        raise ValueError(f"{path}: not a token file ({type(err).__name__}: {err})") from None
    if "tokens" not in record or record["tokens"].ndim != 3 or record["tokens"].dtype.kind not in "iu":
        raise ValueError(f"{path}: expected an integer 'tokens' array of shape (N, h, w)")
    tokens = record["tokens"]
    if "keys" in record:
        keys = record["keys"]
        if keys.shape != (len(tokens),) or keys.dtype.kind != "U":
            raise ValueError(
                f"{path}: 'keys' must hold one string per token grid ({len(tokens)}); got {keys.dtype} {keys.shape}"
            )
        for i, key in enumerate(keys.tolist()):
            check_key(key, f"{path}: keys[{i}]")
    for name in ("model", "revision"):
        if name in record and (record[name].shape != () or record[name].dtype.kind != "U"):
            raise ValueError(f"{path}: '{name}' must be one string; got {record[name].dtype} {record[name].shape}")
    if n_embed is not None:
        check_token_range(tokens, n_embed, path)
    return record


def check_token_range(tokens: np.ndarray, n_embed: int, path: str) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= n_embed):
        bad = int(tokens.max() if tokens.max() >= n_embed else tokens.min())
        raise ValueError(f"{path}: token {bad} is outside the model's codebook [0, {n_embed})")


def _token_keys(record: dict) -> List[str]:
    """Names for the images of a token file: its keys; for version 1 files the input file names,
    or the index where those are missing or repeat."""
    count = len(record["tokens"])
    if "keys" in record:
        return record["keys"].tolist()
    names = [os.path.basename(str(f)) for f in record.get("files", [])]
    if len(names) == count and len(set(names)) == count and all(names):
        return names
    return [f"{i:06d}" for i in range(count)]


def cmd_decode(args: argparse.Namespace) -> None:
    prepare_output_folder(args.out)
    record = read_token_file(args.tokens)
    recorded = str(record["model"]) if "model" in record else None
    if args.model is None and recorded:
        # The tokens mean something only to the model that made them.
        args.model = recorded
        args.revision = args.revision or str(record.get("revision", "")) or None
        try:
            model = load_model(args)
        except Exception as err:
            raise ValueError(
                f"{args.tokens} was made with model {recorded!r}, which does not load here ({err}); "
                "give --model to decode with another copy of it"
            ) from None
    else:
        if recorded and args.model != recorded:
            print(f"note: decoding with --model {args.model}; {args.tokens} was made with {recorded}", file=sys.stderr)
        model = load_model(args)
    runner = Runner(model, args.replicate, args.batch_size, model_pixel_range(model_name(args), args.revision))
    check_token_range(record["tokens"], model.config.n_embed, args.tokens)
    tokens = record["tokens"]
    names = output_names(_token_keys(record))
    with progress_bar(len(tokens), "decode", not args.quiet) as bar:
        for start, chunk in batches(tokens, args.batch_size):
            for k, image in enumerate(runner.decode(chunk)):
                save_png_under(args.out, names[start + k], image)
            bar.update(len(chunk))
    print(f"wrote {len(tokens)} images to {args.out}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ..metrics import psnr, ssim

    prepare_output_folder(args.out)
    runner, inputs, size, grid = _image_job(args)
    names = output_names([key for _, key in inputs])
    rows: List[dict] = []
    with progress_bar(len(inputs), "reconstruct", not args.quiet) as bar:
        for start, chunk in batches(inputs, args.batch_size):
            originals = to_uint8(np.stack([load_image(path, size) for path, _ in chunk]))
            recons = runner.decode(runner.encode(originals.astype(np.float32) / 127.5 - 1.0, grid))
            for (path, key), name, original, recon in zip(chunk, names[start:], originals, recons):
                # Two trees, so that no input name can collide with a side-by-side name.
                save_png_under(os.path.join(args.out, "reconstructions"), name, recon)
                save_png_under(os.path.join(args.out, "side_by_side"), name, np.concatenate([original, recon], 1))
                rows.append({"image": path, "key": key, "psnr": psnr(original, recon), "ssim": ssim(original, recon)})
            bar.update(len(chunk))
    summary = {
        "images": rows,
        "mean_psnr": float(np.mean([r["psnr"] for r in rows])),
        "mean_ssim": float(np.mean([r["ssim"] for r in rows])),
        "model": model_name(args),
        "image_size": size,
    }
    atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}")
    print(f"{'mean':<{width}}  PSNR {summary['mean_psnr']:6.2f} dB  SSIM {summary['mean_ssim']:.4f}  ({args.out})")


def cmd_info(args: argparse.Namespace) -> None:
    import jax

    model = load_model(args)
    cfg = model.config
    size = args.size or cfg.resolution
    h, w = cfg.latent_shape(size, size)
    print(f"model:               {args.model or default_model()}")
    print(f"quantizer:           {cfg.quantizer}, codebook {cfg.n_embed} x {cfg.embed_dim}")
    print(f"parameters:          {sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params)):,}")
    print(f"downsampling factor: {cfg.downsampling_factor}")
    print(f"tokens per image:    {h * w} ({h}x{w}) at {size}x{size}")
    print(f"architecture:        ch={cfg.ch} ch_mult={cfg.ch_mult} num_res_blocks={cfg.num_res_blocks} "
          f"attn_resolutions={cfg.attn_resolutions} z_channels={cfg.z_channels}")  # fmt: skip
