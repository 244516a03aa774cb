"""``vqgan-flax train``: train or fine-tune on a folder of images."""

from __future__ import annotations

import argparse
import os
import time

from .common import COUNT, NON_NEGATIVE, POSITIVE_INT, fraction


def cmd_train(args: argparse.Namespace) -> None:
    from ..configuration_vqgan import PRESETS, VQGANConfig
    from ..lpips import lpips_params_from_state_dict
    from ..modeling_flax_vqgan import FlaxVQGANModel
    from ..training import ImageCrops, TrainingConfig, VQGANTrainer

    seed = args.seed or 0
    if args.init_from:
        kwargs = {"revision": args.revision} if args.revision else {}
        model = FlaxVQGANModel.from_pretrained(args.init_from, **kwargs)
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
        from ..conversion import load_state_dict

        lpips = lpips_params_from_state_dict(load_state_dict(args.lpips))
    trainer = VQGANTrainer(model, config, lpips_params=lpips)
    began = time.time()
    data = ImageCrops.from_folder(
        args.data,
        config.crop_size,
        config.seed,
        min_scale=args.min_scale,
        colour_jitter=args.colour_jitter,
        tint=args.tint,
        channel_shuffle=args.channel_shuffle,
    )
    trainer.fit(data, args.output, progress=not args.quiet)
    print(
        f"trained to step {config.steps} in {time.time() - began:.0f} s; model in {os.path.join(args.output, 'model')}"
    )


_TRAINER_DEFAULT = "TrainingConfig's field of that name (None: its default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--output", required=True, help="folder for checkpoints, log.jsonl and the model")
    p.add_argument("--config", help="preset name, config.json or taming model.yaml (new model)")
    p.add_argument("--init-from", help="fine-tune this model folder / Hub id")
    p.add_argument("--revision", help="Hub revision of --init-from (branch, tag or commit)")
    p.add_argument("--lpips", help="LPIPS weights (.safetensors/.pt state dict) for the perceptual term")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for name in ("steps", "batch_size", "crop_size", "disc_num_layers", "disc_ndf", "save_every", "log_every"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=POSITIVE_INT, help=_TRAINER_DEFAULT)
    for name in (
        "disc_start",
        "seed",
        "codebook_restart_every",
        "codebook_restart_until",
        "warmup_steps",
        "quantize_after",
    ):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=COUNT, help=_TRAINER_DEFAULT)
    floats = ("learning_rate", "disc_weight", "codebook_weight", "perceptual_weight", "chroma_weight", "ssim_weight",
              "ema_decay")  # fmt: skip
    for name in (*floats, "colour_anchor_weight"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=NON_NEGATIVE, help=_TRAINER_DEFAULT)
    p.add_argument("--schedule", choices=("constant", "cosine"), help=_TRAINER_DEFAULT)
    p.add_argument("--reconstruction-loss", choices=("l1", "l2"), help=_TRAINER_DEFAULT)
    p.add_argument(
        "--min-scale",
        type=fraction("min-scale", closed_at_zero=False, closed_at_one=True),
        default=1.0,
        help="augmentation: crops from regions up to crop/min-scale wide",
    )
    p.add_argument(
        "--colour-jitter",
        type=fraction("colour-jitter"),
        default=0.0,
        help="augmentation: brightness/contrast/saturation ±",
    )
    p.add_argument("--tint", type=fraction("tint"), default=0.0, help="augmentation: per-channel gain ±")
    p.add_argument("--channel-shuffle", action="store_true", help="augmentation: random permutation of R, G, B")
    p.set_defaults(func=cmd_train)
