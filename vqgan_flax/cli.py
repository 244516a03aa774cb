"""``vqgan-flax``: tokenize, detokenize, reconstruct, convert, inspect and train VQGANs.

Errors print one readable line and exit with status 1 (add ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .image_io import atomic_write, check_key, find_images, load_image, output_names, save_png, to_uint8
from .token_writers import FORMATS, INFO_DIR

# 2: adds 'keys' (input-relative names); version 1 files are still read.
TOKEN_FILE_VERSION = 2


def _default_model() -> str:
    from . import DEFAULT_MODEL

    return DEFAULT_MODEL


def _load_model(args: argparse.Namespace):
    import jax.numpy as jnp

    from .modeling_flax_vqgan import FlaxVQGANModel

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    kwargs = {"revision": args.revision} if args.revision else {}
    return FlaxVQGANModel.from_pretrained(_model_name(args), dtype=dtype, **kwargs)


def _model_name(args: argparse.Namespace) -> str:
    """The model as a token file records it: a local folder as an absolute path (the file may be
    decoded from another working directory), a Hub id as given."""
    model = args.model or _default_model()
    return os.path.abspath(model) if os.path.isdir(model) else model


def model_pixel_range(model: str, revision: Optional[str] = None) -> Tuple[float, float]:
    """The pixel range the model takes, from the ``preprocessor_config.json`` beside its weights
    (DALL·E-mini's fine-tuned VQGAN takes [0, 1]); (-1, 1), taming's range, where there is none."""
    if os.path.isdir(model):
        path = os.path.join(model, "preprocessor_config.json")
        if not os.path.isfile(path):
            return (-1.0, 1.0)
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        try:
            path = hf_hub_download(model, "preprocessor_config.json", revision=revision)
        except EntryNotFoundError:
            return (-1.0, 1.0)
    try:
        with open(path, encoding="utf-8") as f:
            low, high = json.load(f).get("pixel_range", (-1.0, 1.0))
        low, high = float(low), float(high)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: pixel_range must be [low, high] ({type(err).__name__}: {err})") from None
    if not low < high:
        raise ValueError(f"{path}: pixel_range [{low}, {high}] must have low < high")
    return (low, high)


def bucket_size(count: int, batch_size: int) -> int:
    """The batch shape a chunk of ``count`` items runs at: the next power of two, at most
    ``batch_size``. A ragged last chunk then reuses a compiled shape instead of compiling a new
    program (seconds for the f16 model) for a one-off size."""
    if not 0 < count <= batch_size:
        raise ValueError(f"chunk of {count} items does not fit batch size {batch_size}")
    return min(1 << (count - 1).bit_length(), batch_size)


class _Runner:
    """Encode/decode on one device, or on all local devices with ``--replicate`` (pmap); chunks
    are padded to [`bucket_size`] rows and the padding dropped."""

    def __init__(self, model: Any, replicate: bool, batch_size: int, pixel_range: Tuple[float, float]) -> None:
        from .parallel import replicate_params

        self.model = model
        self.pixel_range = pixel_range
        self.batch_size = batch_size
        self.replicated = replicate_params(model.params) if replicate else None

    def _padded(self, array: np.ndarray) -> np.ndarray:
        from .parallel import pad_batch

        return pad_batch(array, bucket_size(len(array), self.batch_size))[0]  # a multiple ≥ len: exactly that

    def encode(self, pixels: np.ndarray, grid: Sequence[int]) -> np.ndarray:
        """``pixels`` in [-1, 1], as [`load_image`] gives them, mapped to the model's range."""
        from .parallel import pmap_encode

        low, high = self.pixel_range
        if (low, high) != (-1.0, 1.0):
            pixels = low + (pixels + 1.0) * ((high - low) / 2.0)
        padded = self._padded(pixels)
        if self.replicated is None:
            indices = self.model.encode(padded).indices
        else:
            indices = pmap_encode(self.model, padded, self.replicated).indices
        return np.asarray(indices)[: len(pixels)].reshape(-1, *grid)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        from .parallel import pmap_decode_code

        padded = self._padded(tokens)
        if self.replicated is None:
            pixels = self.model.decode_code(padded)
        else:
            pixels = pmap_decode_code(self.model, padded, self.replicated)
        low, high = self.pixel_range
        pixels = np.asarray(pixels)[: len(tokens)]
        if (low, high) != (-1.0, 1.0):
            pixels = (pixels - low) * (2.0 / (high - low)) - 1.0
        return to_uint8(pixels)


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def check_output_file(path: str) -> None:
    """Refuse an ``--out`` file that cannot be written, before any work is done."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path}: is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--out {path}: folder {folder} is not writable")


def prepare_output_folder(path: str) -> None:
    """Create the ``--out`` folder (or accept an existing one), before any work is done."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--out {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {path}: cannot create the folder ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise PermissionError(f"--out {path}: folder is not writable")


def _save_png_under(folder: str, name: str, image: np.ndarray) -> None:
    path = os.path.join(folder, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(path, image)


def _image_job(args: argparse.Namespace):
    """Model, runner, input files and keys, image size and token grid of an encode/reconstruct
    command. The inputs and ``--out`` are checked before the model is loaded."""
    inputs = find_images(args.inputs)
    model = _load_model(args)
    size = args.size or model.config.resolution
    runner = _Runner(model, args.replicate, args.batch_size, model_pixel_range(_model_name(args), args.revision))
    return runner, inputs, size, model.config.latent_shape(size, size)


def _source_items(args: argparse.Namespace):
    """The items of ``encode``'s inputs, by ``--source`` (``auto``: ``.tar`` inputs are webdataset
    shards, a saved dataset folder or ``.parquet`` file is a Hugging Face dataset, anything else
    image files and folders). Missing inputs are refused here, before the model loads."""
    from .sources import file_items, hf_items, tar_items

    source = args.source
    if source == "auto":
        if all(re.search(r"\.tar(\.gz)?$", path) for path in args.inputs):
            source = "tar"
        elif len(args.inputs) == 1 and _looks_like_dataset(args.inputs[0]):
            source = "hf"
        else:
            source = "files"
    if source == "tar":
        return source, tar_items(args.inputs)
    if source == "hf":
        if len(args.inputs) != 1:
            raise ValueError(f"--source hf takes one dataset; got {len(args.inputs)} inputs")
        return source, hf_items(args.inputs[0], args.image_column, args.split, args.caption_column)
    return source, file_items(args.inputs)


def _looks_like_dataset(path: str) -> bool:
    markers = ("dataset_info.json", "dataset_dict.json", "state.json")
    return path.endswith(".parquet") or (
        os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in markers)
    )


def _check_format(args: argparse.Namespace) -> None:
    """The format is ``--format``'s, never the extension's: an ``--out`` whose extension names
    another format is a mistake, caught before any work."""
    if not 0 <= args.process_index < args.process_count:
        raise ValueError(f"--process-index {args.process_index} is not in [0, --process-count {args.process_count})")
    if args.process_count > 1 and args.format == "npz":
        raise ValueError("--process-count > 1 needs a sharded --format (parquet or jsonl): each process writes its own")
    extension = os.path.splitext(args.out.rstrip("/"))[1].lstrip(".").lower()
    if extension in FORMATS and extension != args.format:
        raise ValueError(
            f"--out {args.out} looks like {extension}, but --format is {args.format}; give --format {extension}"
        )
    if args.format == "npz":
        if args.out != "-":
            check_output_file(args.out)
    elif args.out == "-":
        raise ValueError(f"--out -: {args.format} output is a folder of shards; give a folder")
    else:
        prepare_output_folder(args.out)


def _hub_commit(model: str, revision: Optional[str]) -> Optional[str]:
    """The commit a Hub model resolved to (its snapshot folder's name); None for local folders."""
    if os.path.isdir(model):
        return None
    from huggingface_hub import hf_hub_download

    return os.path.basename(os.path.dirname(hf_hub_download(model, "config.json", revision=revision)))


def cmd_encode(args: argparse.Namespace) -> None:
    from . import __version__
    from .token_writers import NpzTokenWriter, ShardedTokenWriter
    from .tokenize_dataset import errors_jsonl, summary_lines, tokenize_items

    _check_format(args)
    source, items = _source_items(args)
    model = _load_model(args)
    size = args.size or model.config.resolution
    grid = model.config.latent_shape(size, size)
    pixel_range = model_pixel_range(_model_name(args), args.revision)
    runner = _Runner(model, args.replicate, args.batch_size, pixel_range)
    metadata = {
        "token_file_version": TOKEN_FILE_VERSION,
        "vqgan_flax_version": __version__,
        "model": _model_name(args),
        "revision": args.revision,
        "commit": _hub_commit(_model_name(args), args.revision),
        "n_embed": model.config.n_embed,
        "downsampling_factor": model.config.downsampling_factor,
        "grid": list(grid),
        "image_size": size,
        "pixel_range": list(pixel_range),
        "source": source,
    }
    if args.format == "npz":
        writer = NpzTokenWriter(args.out, metadata)
    else:
        writer = ShardedTokenWriter(args.out, args.format, metadata, args.shard_size, process=args.process_index)
    index, count, total = args.process_index, args.process_count, None
    if source == "files":  # a known number: partition here, so that the progress bar has a total
        items = list(items)[index::count]
        index, count, total = 0, 1, len(items)
    with _progress(total, "encode", not args.quiet) as bar:
        summary = tokenize_items(
            items, lambda pixels: runner.encode(pixels, grid), writer, size, args.batch_size, strict=args.strict,
            workers=args.workers, process_index=index, process_count=count,
            progress=bar.update,
        )  # fmt: skip
    where = ""
    if args.format != "npz":
        errors_file = os.path.join(args.out, INFO_DIR, f"errors-{writer.process:03d}.jsonl")
        if summary.errors:
            atomic_write(errors_file, lambda f: f.write(errors_jsonl(summary)))
            where = f" (all in {errors_file})"
        elif os.path.exists(errors_file):
            os.unlink(errors_file)  # an earlier run's failures: retried, and read this time
    if not summary.encoded and not summary.already_done and summary.errors:
        key, message = summary.errors[0]
        count = len(summary.errors)
        raise ValueError(f"none of the {count} item(s) could be read{where}; the first: {key}: {message}")
    writer.close()
    for line in summary_lines(summary, where):
        print(line, file=sys.stderr)
    done = f" ({summary.already_done} already there from an earlier run)" if summary.already_done else ""
    report = f"wrote {summary.encoded} x {grid[0]}x{grid[1]} tokens to {args.out}{done}"
    print(report, file=sys.stderr if args.out == "-" else sys.stdout)


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
            model = _load_model(args)
        except Exception as err:
            raise ValueError(
                f"{args.tokens} was made with model {recorded!r}, which does not load here ({err}); "
                "give --model to decode with another copy of it"
            ) from None
    else:
        if recorded and args.model != recorded:
            print(f"note: decoding with --model {args.model}; {args.tokens} was made with {recorded}", file=sys.stderr)
        model = _load_model(args)
    runner = _Runner(model, args.replicate, args.batch_size, model_pixel_range(_model_name(args), args.revision))
    check_token_range(record["tokens"], model.config.n_embed, args.tokens)
    tokens = record["tokens"]
    names = output_names(_token_keys(record))
    with _progress(len(tokens), "decode", not args.quiet) as bar:
        for start, chunk in _batches(tokens, args.batch_size):
            for k, image in enumerate(runner.decode(chunk)):
                _save_png_under(args.out, names[start + k], image)
            bar.update(len(chunk))
    print(f"wrote {len(tokens)} images to {args.out}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .metrics import psnr, ssim

    prepare_output_folder(args.out)
    runner, inputs, size, grid = _image_job(args)
    names = output_names([key for _, key in inputs])
    rows: List[dict] = []
    with _progress(len(inputs), "reconstruct", not args.quiet) as bar:
        for start, chunk in _batches(inputs, args.batch_size):
            originals = to_uint8(np.stack([load_image(path, size) for path, _ in chunk]))
            recons = runner.decode(runner.encode(originals.astype(np.float32) / 127.5 - 1.0, grid))
            for (path, key), name, original, recon in zip(chunk, names[start:], originals, recons):
                # Two trees, so that no input name can collide with a side-by-side name.
                _save_png_under(os.path.join(args.out, "reconstructions"), name, recon)
                _save_png_under(os.path.join(args.out, "side_by_side"), name, np.concatenate([original, recon], 1))
                rows.append({"image": path, "key": key, "psnr": psnr(original, recon), "ssim": ssim(original, recon)})
            bar.update(len(chunk))
    summary = {
        "images": rows,
        "mean_psnr": float(np.mean([r["psnr"] for r in rows])),
        "mean_ssim": float(np.mean([r["ssim"] for r in rows])),
        "model": _model_name(args),
        "image_size": size,
    }
    atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}")
    print(f"{'mean':<{width}}  PSNR {summary['mean_psnr']:6.2f} dB  SSIM {summary['mean_ssim']:.4f}  ({args.out})")


def cmd_info(args: argparse.Namespace) -> None:
    import jax

    model = _load_model(args)
    cfg = model.config
    size = args.size or cfg.resolution
    h, w = cfg.latent_shape(size, size)
    print(f"model:               {args.model or _default_model()}")
    print(f"quantizer:           {cfg.quantizer}, codebook {cfg.n_embed} x {cfg.embed_dim}")
    print(f"parameters:          {sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params)):,}")
    print(f"downsampling factor: {cfg.downsampling_factor}")
    print(f"tokens per image:    {h * w} ({h}x{w}) at {size}x{size}")
    print(f"architecture:        ch={cfg.ch} ch_mult={cfg.ch_mult} num_res_blocks={cfg.num_res_blocks} "
          f"attn_resolutions={cfg.attn_resolutions} z_channels={cfg.z_channels}")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from .configuration_vqgan import PRESETS, VQGANConfig
    from .lpips import lpips_params_from_state_dict
    from .modeling_flax_vqgan import FlaxVQGANModel
    from .training import ImageCrops, TrainingConfig, VQGANTrainer

    seed = args.seed or 0
    if args.init_from:
        model = FlaxVQGANModel.from_pretrained(args.init_from)
    elif args.config in PRESETS:
        model = FlaxVQGANModel(VQGANConfig.from_preset(args.config), seed=seed)
    elif args.config and args.config.endswith((".yaml", ".yml")):
        model = FlaxVQGANModel(VQGANConfig.from_taming_yaml(args.config), seed=seed)
    elif args.config:
        model = FlaxVQGANModel(VQGANConfig.from_json_file(args.config), seed=seed)
    else:
        raise ValueError("give --config PRESET|config.json|model.yaml or --init-from MODEL")
    fields = {f: getattr(args, f) for f in TrainingConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    config = TrainingConfig(**fields)
    lpips = None
    if args.lpips:
        from .checkpoint_io import load_state_dict

        lpips = lpips_params_from_state_dict(load_state_dict(args.lpips))
    trainer = VQGANTrainer(model, config, lpips_params=lpips)
    began = time.time()
    trainer.fit(ImageCrops.from_folder(args.data, config.crop_size, config.seed), args.output, progress=not args.quiet)
    print(
        f"trained to step {config.steps} in {time.time() - began:.0f} s; model in {os.path.join(args.output, 'model')}"
    )


def _number(kind: type, minimum: float, name: str):
    """An argparse type: ``kind`` values ≥ ``minimum`` (finite), refused by the parser otherwise."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (value >= minimum and value < float("inf")):
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum} for {name}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1, "a positive integer")
COUNT = _number(int, 0, "a count")
NON_NEGATIVE = _number(float, 0.0, "a non-negative number")


def _package_version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgan-flax", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="folder or Hub id (default: the shipped default model)")
        p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
        p.add_argument("--batch-size", type=POSITIVE_INT, default=8)
        p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--replicate", action="store_true", help="use all local devices (pmap; any batch size)")

    for name, func, help_text in (
        ("encode", cmd_encode, "images → tokens.npz"),
        ("reconstruct", cmd_reconstruct, "images → reconstructions, side-by-side PNGs, PSNR/SSIM"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "inputs",
            nargs="+",
            help="image files or folders" + (", .tar shards, a dataset" if name == "encode" else ""),
        )
        p.add_argument("--out", required=True)
        p.add_argument("--size", type=POSITIVE_INT, help="resize (shorter side) and center-crop to this size")
        model_options(p)
        p.set_defaults(func=func)
        if name == "encode":
            p.add_argument(
                "--format",
                choices=FORMATS,
                default="npz",
                help="npz: one file (--out -: standard output); parquet, jsonl (LWM): a folder of shards",
            )
            p.add_argument(
                "--source",
                choices=("auto", "files", "tar", "hf"),
                default="auto",
                help="files/folders, webdataset .tar shards, or a Hugging Face dataset (default: guessed)",
            )
            p.add_argument("--image-column", default="image", help="the image column of a Hugging Face dataset")
            p.add_argument("--caption-column", help="a text column to keep beside the tokens")
            p.add_argument("--split", help="the split of a Hugging Face dataset (default: its only one)")
            p.add_argument("--shard-size", type=POSITIVE_INT, default=10_000, help="rows per parquet/jsonl shard")
            p.add_argument("--workers", type=POSITIVE_INT, default=4, help="threads decoding images")
            p.add_argument("--strict", action="store_true", help="stop at the first unreadable item (default: skip it)")
            p.add_argument("--process-index", type=COUNT, default=0, help="this process's number (many hosts)")
            p.add_argument("--process-count", type=POSITIVE_INT, default=1, help="processes sharing the inputs")

    p = sub.add_parser("decode", help="tokens.npz → PNG images")
    p.add_argument("tokens")
    p.add_argument("--out", required=True)
    model_options(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="describe a model")
    p.add_argument("model", nargs="?")
    p.add_argument("--size", type=POSITIVE_INT)
    p.add_argument("--revision")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.set_defaults(func=cmd_info)

    from .convert_checkpoint import DESCRIPTION, add_arguments

    p = sub.add_parser("convert", help="taming checkpoint ↔ Flax folder", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=None)

    p = sub.add_parser("train", help="train or fine-tune on a folder of images")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config", help="preset name, config.json or taming model.yaml (new model)")
    p.add_argument("--init-from", help="fine-tune this model folder / Hub id")
    p.add_argument("--lpips", help="LPIPS weights (.safetensors/.pt state dict) for the perceptual term")
    p.add_argument("--quiet", action="store_true")
    for name in ("steps", "batch_size", "crop_size", "disc_num_layers", "disc_ndf", "save_every", "log_every"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=POSITIVE_INT)
    for name in ("disc_start", "seed", "codebook_restart_every"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=COUNT)
    for name in ("learning_rate", "disc_weight", "codebook_weight", "perceptual_weight", "ema_decay"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=NON_NEGATIVE)
    p.set_defaults(func=cmd_train)
    return parser


def enable_compilation_cache() -> Optional[str]:
    """Let later ``vqgan-flax`` processes reuse compiled programs (JAX's persistent cache).

    The folder is ``$VQGAN_FLAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/vqgan_flax/jax`` (default
    ``~/.cache``); an empty ``VQGAN_FLAX_CACHE_DIR`` turns the cache off.
    """
    folder = os.environ.get("VQGAN_FLAX_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "vqgan_flax", "jax")
    if not folder:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    # Our programs compile in about a second on CPU: cache them all, whatever their size.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    try:
        if args.command == "convert":
            from .convert_checkpoint import run

            return run(args)
        args.func(args)
    except KeyboardInterrupt:
        # Outputs are written atomically: what was finished stays, nothing half-written is left.
        print(f"vqgan-flax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line, unless --debug
        if args.debug:
            raise
        print(f"vqgan-flax {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
