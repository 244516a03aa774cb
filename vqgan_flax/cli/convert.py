"""``vqgan-flax convert``: taming, LlamaGen or LWM checkpoints to a Flax folder (the architecture
from a config, a preset, flags, or the checkpoint's own tensor shapes), or a Flax folder back to a
taming or LlamaGen state dict."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from ..models.presets import PRESETS

# Flags that only place attention or pick the quantizer: the shapes still decide the rest.
_NOT_SHAPES = ("resolution", "quantizer")


def _config_from_args(args: argparse.Namespace) -> Any:
    """The architecture the options give, or None: infer it from the checkpoint's shapes."""
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
    if not set(overrides) - set(_NOT_SHAPES):
        return None
    return VQGANConfig(**overrides)


DESCRIPTION = (
    "Convert a VQGAN checkpoint of the taming family (taming, LlamaGen, IBQ, latent-diffusion, a diffusers "
    "VQModel folder) or an LWM pickle to a Flax folder; the architecture is read from the checkpoint's tensor "
    "shapes (a diffusers folder: its config.json) unless --config, --preset or flags give it "
    "(back with --to-taming / --to-llamagen)."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's options (``vqgan-flax convert``)."""
    parser.add_argument("source", nargs="?", metavar="CHECKPOINT", help="the checkpoint (same as --checkpoint)")
    parser.add_argument("--checkpoint", help="a .ckpt / .pt / .pth / .safetensors file, or a diffusers VQModel folder")
    parser.add_argument(
        "--from",
        dest="family",
        default="auto",
        choices=("auto", "taming", "llamagen", "ibq", "ldm", "diffusers", "lwm"),
        help="the checkpoint's family; auto tells taming, LlamaGen and diffusers apart by their key names "
        "(IBQ and latent-diffusion have taming's)",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="take a training checkpoint's trained weights, not its EMA ones"
    )
    parser.add_argument(
        "--to-taming", metavar="MODEL", help="export this Flax folder (or LWM params pickle) to a taming state dict"
    )
    parser.add_argument(
        "--to-llamagen", metavar="MODEL", help="export this Flax folder (a vq_l2 model) to a LlamaGen state dict"
    )
    parser.add_argument("--lwm", metavar="PICKLE", help="an LWM params pickle (LWM's vqgan file) to a Flax folder")
    parser.add_argument("--output", required=True, help="output folder (or file with --to-taming)")
    parser.add_argument("--config", help="taming or latent-diffusion model.yaml describing the architecture")
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
        ("resolution", "training image size (places attention; 256 when inferring)"),
        ("z_channels", "latent channels"),
        ("n_embed", "codebook size"),
        ("embed_dim", "code dimension"),
    ):
        arch.add_argument("--" + name.replace("_", "-"), dest=name, type=int, help=f"taming's {name}: {meaning}")
    arch.add_argument("--ch-mult", dest="ch_mult", help="comma-separated, e.g. 1,1,2,2,4")
    arch.add_argument("--attn-resolutions", dest="attn_resolutions", help="comma-separated, e.g. 16")
    arch.add_argument("--quantizer", help="vq, vq_l2, ibq, gumbel, fsq or lfq")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="vqgan-flax convert", description=DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed options say; errors print one line and give status 1."""
    from ..conversion import CheckpointError, ConversionError, convert_checkpoint, export_to_taming

    try:
        if args.source and args.checkpoint:
            raise ConversionError(f"give the checkpoint once: {args.source} or --checkpoint {args.checkpoint}")
        checkpoint = args.source or args.checkpoint
        for layout in ("taming", "llamagen"):
            model = getattr(args, f"to_{layout}")
            if model:
                from ..hub.resolve import resolve_model

                state = export_to_taming(resolve_model(model).folder, args.output, layout)
                print(f"wrote {len(state)} tensors to {args.output} ({layout} names)")
                return 0
        lwm = args.lwm or (checkpoint if args.family == "lwm" else None)
        if lwm:
            from ..hub.modeling import FlaxVQGANModel
            from ..utils.transaction import check_apart

            check_apart(lwm, args.output, "convert")
            model = FlaxVQGANModel.from_pretrained(lwm)
            model.save_pretrained(args.output, safe_serialization=args.weights_format == "safetensors")
            print(f"wrote {args.output} ({args.weights_format}) from the LWM pickle {lwm}")
            return 0
        if not checkpoint:
            raise ConversionError("give a checkpoint: vqgan-flax convert CHECKPOINT --output DIR")
        config = _config_from_args(args)
        done = convert_checkpoint(checkpoint, args.output, args.family, config, args.resolution or 256,
                                  args.weights_format, ema=not args.no_ema)  # fmt: skip
    except (CheckpointError, ConversionError, ValueError, OSError) as err:
        print(f"error: {str(err) or type(err).__name__}", file=sys.stderr)
        return 1
    from ..conversion import describe_architecture

    how = (
        f"from {done.config_file}" if done.config_file else "inferred from the shapes" if done.inferred else "as given"
    )
    print(f"{checkpoint}: {done.family} ({done.entry}); architecture {how}: {describe_architecture(done.config)}")
    print(f"dropped {done.dropped} non-model entries (loss, discriminator, buffers); wrote {args.output} "
          f"({args.weights_format})")  # fmt: skip
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
