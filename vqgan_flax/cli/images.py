"""``vqgan-flax decode``, ``reconstruct`` and ``info``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, List, Tuple

import numpy as np

from ..data.image_io import check_output_layout, find_images, open_rgb, output_names
from ..utils.files import atomic_write
from .common import (
    Runner,
    batches,
    check_output_folder,
    image_processor,
    load_model,
    model_name,
    prepare_output_folder,
    progress_bar,
    save_png_under,
)


def _image_job(args: argparse.Namespace):
    """Runner, input files and keys, and token grid of a reconstruct command. The inputs are
    checked before the model is loaded."""
    inputs = find_images(args.inputs)
    model = load_model(args)
    runner = Runner(model, args.replicate, args.batch_size, image_processor(args, model))
    return runner, inputs, model.config.latent_shape(*runner.processor.output_size)


def check_token_range(tokens: np.ndarray, n_embed: int, where: str) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= n_embed):
        bad = int(tokens.max() if tokens.max() >= n_embed else tokens.min())
        raise ValueError(f"{where}: token {bad} is outside the model's codebook [0, {n_embed})")


def _decode_model(args: argparse.Namespace, source: Any):
    """The model that made the tokens (as recorded: for a Hub model, at the recorded commit) unless
    ``--model`` names another; either way its weights must be the recorded ones (by digest)."""
    from ..data.readers import recorded_model

    recorded = recorded_model(source)
    if args.model is None and recorded:
        # The tokens mean something only to the model that made them; the record is untrusted
        # input: it may name a model folder or a Hub id, never a file to be read whole.
        if os.path.lexists(recorded[0]) and not os.path.isdir(recorded[0]):
            raise ValueError(f"{args.tokens}: its recorded model {recorded[0]!r} is a file, not a model folder or "
                             "Hub id; give --model")  # fmt: skip
        args.model, revision = recorded
        args.revision = args.revision or revision
        try:
            model = load_model(args)
        except Exception as err:
            raise ValueError(
                f"{args.tokens} was made with model {recorded[0]!r}, which does not load here ({err}); "
                "give --model to decode with another copy of it"
            ) from None
    else:
        model = load_model(args)
    return model


def _check_made_by(args: argparse.Namespace, source: Any, model: Any) -> None:
    """The tokens' recorded codebook, factor and weights (by digest) must be the model's."""
    from ..data.readers import recorded_model
    from ..hub.identity import model_digest

    for name in ("n_embed", "downsampling_factor"):
        made_with, value = source.metadata.get(name), getattr(model.config, name)
        if made_with is not None and made_with != value:
            raise ValueError(
                f"{args.tokens} was made by a model with {name}={made_with}; --model {args.model} has {value}"
            )
    digest = source.metadata.get("model_digest")
    if digest and model_digest(model) != digest:
        recorded = recorded_model(source)
        raise ValueError(
            f"{args.tokens} was made with model_digest={digest!r} ({recorded[0] if recorded else '?'}); "
            f"model {model_name(args)} has {model_digest(model)!r}: other weights, its tokens would decode wrong"
        )


def cmd_decode(args: argparse.Namespace) -> None:
    from ..data.readers import open_tokens

    check_output_folder(args.out)
    source = open_tokens(args.tokens)
    model = _decode_model(args, source)
    from ..data.processing import checked_pixel_range

    # As the tokens were made, whatever the folder says now.
    recorded = source.metadata.get("pixel_range") or None
    if recorded is not None and not args.pixel_range:
        recorded = checked_pixel_range(recorded, f"{args.tokens}: recorded pixel_range")
    processor = image_processor(args, model, recorded)
    _check_made_by(args, source, model)
    native = max(1, model.config.resolution // model.config.downsampling_factor) ** 2
    limit = args.max_tokens_per_frame or 16 * native
    frames = []
    for key, grid in source.rows():  # every row checked before anything is written
        check_token_range(grid, model.config.n_embed, f"{args.tokens}: {key}")
        if grid.shape[1] * grid.shape[2] > limit:
            raise ValueError(f"{args.tokens}: {key}: a {grid.shape[1]}x{grid.shape[2]} grid, more than "
                             f"{limit} tokens a frame for this model (--max-tokens-per-frame)")  # fmt: skip
        frames.append(len(grid))
    names = output_names(source.keys)
    written = []  # every file the run will write: a video's frames as NAME/0000.png, ...
    for name, count in zip(names, frames):
        written += [f"{os.path.splitext(name)[0]}/{k:04d}.png" for k in range(count)] if count > 1 else [name]
    check_output_layout(written, args.tokens)
    prepare_output_folder(args.out)
    runner = Runner(model, args.replicate, args.batch_size, processor)
    pending: List[Tuple[str, np.ndarray]] = []  # images of one grid shape, decoded together
    counts = {"images": 0, "videos": 0}

    def flush() -> None:
        for (name, _), image in zip(pending, runner.decode(np.concatenate([grid for _, grid in pending]))):
            save_png_under(args.out, name, image)
        counts["images"] += len(pending)
        bar.update(len(pending))
        pending.clear()

    with progress_bar(len(names), "decode", not args.quiet) as bar:
        for (_, grid), name in zip(source.rows(), names):
            if len(grid) > 1:  # a video: its frames as NAME/0000.png, ...
                folder = os.path.splitext(name)[0]
                for start in range(0, len(grid), args.batch_size):
                    for k, frame in enumerate(runner.decode(grid[start : start + args.batch_size])):
                        save_png_under(args.out, f"{folder}/{start + k:04d}.png", frame)
                counts["videos"] += 1
                bar.update(1)
                continue
            if pending and pending[0][1].shape != grid.shape:
                flush()
            pending.append((name, grid))
            if len(pending) == args.batch_size:
                flush()
        if pending:
            flush()
    videos = f" and {counts['videos']} videos" if counts["videos"] else ""
    print(f"wrote {counts['images']} images{videos} to {args.out}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from ..evaluation.metrics import psnr, ssim

    check_output_folder(args.out)
    runner, inputs, grid = _image_job(args)
    prepare_output_folder(args.out)
    processor = runner.processor
    names = output_names([key for _, key in inputs])
    rows: List[dict] = []
    with progress_bar(len(inputs), "reconstruct", not args.quiet) as bar:
        for start, chunk in batches(inputs, args.batch_size):
            originals = np.stack([np.asarray(processor.resize_crop(open_rgb(path)), np.uint8) for path, _ in chunk])
            recons = runner.decode(runner.encode(processor.to_pixel_values(originals), grid))
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
        "image_size": list(processor.output_size),
        "pixel_range": list(processor.pixel_range),
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
    processor = image_processor(args, model)
    height, width = processor.output_size
    h, w = cfg.latent_shape(height, width)
    facts = {
        "model": model_name(args),
        "quantizer": cfg.quantizer,
        "n_embed": cfg.n_embed,
        "embed_dim": cfg.embed_dim,
        "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params)),
        "downsampling_factor": cfg.downsampling_factor,
        "image_size": [height, width],
        "grid": [h, w],
        "pixel_range": list(processor.pixel_range),
        "architecture": {
            k: getattr(cfg, k) for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels")
        },
    }
    if args.json:
        print(json.dumps(facts, indent=2))
        return
    arch = " ".join(f"{k}={v}" for k, v in facts["architecture"].items())
    print(f"model:               {facts['model']}")
    print(f"quantizer:           {cfg.quantizer}, codebook {cfg.n_embed} x {cfg.embed_dim}")
    print(f"parameters:          {facts['parameters']:,}")
    print(f"downsampling factor: {cfg.downsampling_factor}")
    print(f"tokens per image:    {h * w} ({h}x{w}) at {height}x{width}")
    print(f"pixel range:         {facts['pixel_range']}")
    print(f"architecture:        {arch}")
