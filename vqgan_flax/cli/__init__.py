"""``vqgan-flax``: tokenize, detokenize, reconstruct, convert, inspect and train VQGANs.

Errors print one readable line and exit with status 1 (add ``--debug`` for the traceback).

May import: compat, train, evaluation, data, hub, conversion, models, kernels, utils, and the package
root (its version and default model).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from . import encode, images, train
from .common import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE_INT,
    TOKEN_FILE_VERSION,
    HelpFormatter,
    Runner,
    add_model_options,
    bucket_size,
    check_output_file,
    image_processor,
    prepare_output_folder,
)
from .images import check_token_range


def _package_version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgan-flax", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:  # every --help shows the defaults
        return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)

    encode.add_arguments(command("encode", help="images, videos, shards or a dataset → tokens"))
    encode.add_verify_arguments(command("verify", help="check a token folder: every process done, each input once"))

    p = command("reconstruct", help="images → reconstructions, side-by-side PNGs, PSNR/SSIM")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for reconstructions/, side_by_side/ and metrics.json")
    p.add_argument("--size", type=POSITIVE_INT, help="resize (shorter side) and center-crop to this size")
    add_model_options(p)
    p.set_defaults(func=images.cmd_reconstruct)

    p = command("decode", help="tokens.npz → PNG images")
    p.add_argument("tokens", help="a token .npz, or a folder of parquet/jsonl token shards")
    p.add_argument("--out", required=True, help="folder for the PNG images")
    p.add_argument("--max-tokens-per-frame", type=POSITIVE_INT,
                   help="refuse larger grids (default: 16 times the model's own grid, 4 times its side)")  # fmt: skip
    add_model_options(p)
    p.set_defaults(func=images.cmd_decode)

    p = command("info", help="describe a model")
    p.add_argument("model", nargs="?", help="folder, LWM params pickle or Hub id (default: the shipped model)")
    p.add_argument("--size", type=POSITIVE_INT, help="image size for the token count (default: the model's)")
    p.add_argument("--revision", help="Hub revision of the model: branch, tag or commit (default: main)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="computation dtype")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    range_help = "override the model's range (default: its own)"
    p.add_argument("--pixel-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help=range_help)
    p.set_defaults(func=images.cmd_info)

    from .convert import DESCRIPTION, add_arguments

    p = command("convert", help="taming checkpoint ↔ Flax folder", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=None)

    train.add_arguments(command("train", help="train or fine-tune on a folder of images"))
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
            from .convert import run

            return run(args)
        code = args.func(args)
    except KeyboardInterrupt:
        # Outputs are written atomically: what was finished stays, nothing half-written is left.
        print(f"vqgan-flax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line, unless --debug
        if args.debug:
            raise
        print(f"vqgan-flax {args.command}: error: {str(err) or type(err).__name__}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


__all__ = (
    "COUNT",
    "NON_NEGATIVE",
    "POSITIVE_INT",
    "TOKEN_FILE_VERSION",
    "Runner",
    "bucket_size",
    "build_parser",
    "check_output_file",
    "check_token_range",
    "enable_compilation_cache",
    "image_processor",
    "main",
    "prepare_output_folder",
)
