"""``vqgan-flax convert``: taming or LWM checkpoints
to a Flax folder, or a Flax folder back to a taming state dict."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..models.presets import PRESETS


def _config_from_args(args: argparse.Namespace) -> Any:
    from ..conversion import ConversionError
    from ..models.configuration import VQGANConfig

    overrides: Dict[str, Any] = {}
    for name in ("ch", "num_res_blocks", "resolution", "z_channels", "n_embed", "embed_dim", "quantizer"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("ch_mult", "attn_resolutions"):
        if getattr(args, name) is not None:
            text = getattr(args, name).strip()
            overrides[name] = [int(v) for v in text.split(",") if v.strip()] if text else []
    if args.config:
        return VQGANConfig.from_taming_yaml(args.config, **overrides)
    if args.preset:
        return VQGANConfig.from_preset(args.preset, **overrides)
    if not overrides:
        raise ConversionError("give the architecture: --config model.yaml, --preset NAME, or architecture flags")
    return VQGANConfig(**overrides)


DESCRIPTION = "Convert a taming-transformers VQGAN checkpoint to a Flax folder (or back with --to-taming)."


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's options (``vqgan-flax convert``)."""
    parser.add_argument("--checkpoint", help="taming .ckpt / .pt / .pth / .safetensors file")
    parser.add_argument(
        "--to-taming", metavar="MODEL", help="export this Flax folder (or LWM params pickle) to a taming state dict"
    )
    parser.add_argument("--lwm", metavar="PICKLE", help="an LWM params pickle (LWM's vqgan file) to a Flax folder")
    parser.add_argument("--output", required=True, help="output folder (or file with --to-taming)")
    parser.add_argument("--config", help="taming model.yaml describing the architecture")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a published taming architecture")
    parser.add_argument(
        "--format",
        default="safetensors",
        choices=("safetensors", "msgpack"),
        dest="weights_format",
        help="weights file of the output folder",
    )
    arch = parser.add_argument_group("architecture flags (override --config/--preset)")
    for name, meaning in (
        ("ch", "base channel count"),
        ("num_res_blocks", "ResnetBlocks per level"),
        ("resolution", "training image size"),
        ("z_channels", "latent channels"),
        ("n_embed", "codebook size"),
        ("embed_dim", "code dimension"),
    ):
        arch.add_argument("--" + name.replace("_", "-"), dest=name, type=int, help=f"taming's {name}: {meaning}")
    arch.add_argument("--ch-mult", dest="ch_mult", help="comma-separated, e.g. 1,1,2,2,4")
    arch.add_argument("--attn-resolutions", dest="attn_resolutions", help="comma-separated, e.g. 16")
    arch.add_argument("--quantizer", help="vq or gumbel")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="vqgan-flax convert", description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed options say; errors print one line and give status 1."""
    from ..conversion import CheckpointError, ConversionError, convert_taming_checkpoint, export_to_taming

    try:
        if args.to_taming:
            from ..hub.resolve import resolve_model

            state = export_to_taming(resolve_model(args.to_taming).folder, args.output)
            print(f"wrote {len(state)} tensors to {args.output}")
            return 0
        if args.lwm:
            from ..hub.modeling import FlaxVQGANModel
            from ..utils.transaction import check_apart

            check_apart(args.lwm, args.output, "convert")
            model = FlaxVQGANModel.from_pretrained(args.lwm)
            model.save_pretrained(args.output, safe_serialization=args.weights_format == "safetensors")
            print(f"wrote {args.output} ({args.weights_format}) from the LWM pickle {args.lwm}")
            return 0
        if not args.checkpoint:
            raise ConversionError("give --checkpoint FILE (or --to-taming MODEL_DIR)")
        config = _config_from_args(args)
        dropped = convert_taming_checkpoint(args.checkpoint, args.output, config, args.weights_format)
    except (CheckpointError, ConversionError, ValueError, OSError) as err:
        print(f"error: {str(err) or type(err).__name__}", file=sys.stderr)
        return 1
    print(f"dropped {dropped} loss.* entries (discriminator/LPIPS); wrote {args.output} ({args.weights_format})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
