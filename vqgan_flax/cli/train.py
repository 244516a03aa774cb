"""``vqgan-flax train``: train or fine-tune on a folder of images."""

from __future__ import annotations

import argparse
import os
import time

from ..train.config import TrainingConfig, load_recipe
from .common import COUNT, NON_NEGATIVE, POSITIVE_INT, fraction


def cmd_train(args: argparse.Namespace) -> None:
    from ..hub.modeling import FlaxVQGANModel
    from ..models.configuration import PRESETS, VQGANConfig
    from ..train.lpips import lpips_params_from_state_dict
    from ..train.trainer import ImageCrops, VQGANTrainer
    from ..train.watch import ValidationSet

    allow = [name.strip().replace("-", "_") for value in args.allow_change or () for name in value.split(",")]
    known = set(TrainingConfig.__dataclass_fields__) | {"model_config", "data"}
    unknown = [name for name in allow if name.split(".")[0] not in known]
    if unknown:
        raise ValueError(
            f"--allow-change {', '.join(unknown)}: not a setting of a run (a training field, model_config, data)"
        )
    recipe = load_recipe(args.recipe) if args.recipe else {"model": None, "training": {}}
    seed = args.seed if args.seed is not None else recipe["training"].get("seed", 0)
    if args.init_from:
        kwargs = {"revision": args.revision} if args.revision else {}
        model = FlaxVQGANModel.from_pretrained(args.init_from, **kwargs)
    elif (args.config or recipe["model"]) in PRESETS:
        model = FlaxVQGANModel(VQGANConfig.from_preset(args.config or recipe["model"]), seed=seed)
    elif args.config and args.config.endswith((".yaml", ".yml")):
        model = FlaxVQGANModel(VQGANConfig.from_taming_yaml(args.config), seed=seed)
    elif args.config:
        model = FlaxVQGANModel(VQGANConfig.from_json_file(args.config), seed=seed)
    else:
        raise ValueError("give --config PRESET|config.json|model.yaml, --recipe or --init-from MODEL")
    # A flag given on the command line wins over the recipe, the recipe over TrainingConfig's defaults.
    given = {f: getattr(args, f) for f in TrainingConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    config = TrainingConfig(**{**recipe["training"], **given})
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
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    held_out = ValidationSet.from_folder(args.val_data, args.val_size or config.crop_size) if args.val_data else None
    trainer.fit(data, args.output, progress=not args.quiet, max_seconds=max_seconds, allow_change=allow,
                validation=held_out)  # fmt: skip
    print(
        f"trained to step {config.steps} in {time.time() - began:.0f} s; model in {os.path.join(args.output, 'model')}"
    )


# What each TrainingConfig field means on the command line (its default comes from TrainingConfig).
_FIELDS = {
    "steps": (POSITIVE_INT, "optimizer steps in all (a resumed run goes on to this step)"),
    "batch_size": (POSITIVE_INT, "crops per step, over all devices"),
    "crop_size": (POSITIVE_INT, "side of the square training crops, in pixels"),
    "learning_rate": (NON_NEGATIVE, "Adam learning rate of the autoencoder and the discriminator"),
    "adam_b1": (NON_NEGATIVE, "Adam's beta1 (taming: 0.5, LlamaGen: 0.9)"),
    "adam_b2": (NON_NEGATIVE, "Adam's beta2 (taming: 0.9, LlamaGen: 0.95)"),
    "weight_decay": (NON_NEGATIVE, "decoupled weight decay of the autoencoder (AdamW)"),
    "max_grad_norm": (NON_NEGATIVE, "clip each network's gradients to this global norm (default: off)"),
    "schedule": (("constant", "cosine"), "constant (taming), or cosine: warm-up, then down to 10%% at --steps"),
    "warmup_steps": (COUNT, "linear warm-up steps of the cosine schedule"),
    "reconstruction_loss": (("l1", "l2"), "pixel distance of the reconstruction term"),
    "chroma_weight": (NON_NEGATIVE, "weight of the same distance on the chroma planes (not in taming)"),
    "ssim_weight": (NON_NEGATIVE, "weight of each image's 1 - SSIM (not in taming)"),
    "codebook_weight": (NON_NEGATIVE, "weight of the quantizer's codebook/commitment loss"),
    "perceptual_weight": (NON_NEGATIVE, "weight of LPIPS (with --lpips only)"),
    "disc_start": (COUNT, "step from which the discriminator trains and its loss counts"),
    "disc_weight": (NON_NEGATIVE, "weight of the adversarial term (0: no discriminator)"),
    "disc_factor": (NON_NEGATIVE, "factor of both GAN terms from --disc-start on (taming's disc_factor)"),
    "disc_loss": (("hinge", "vanilla"), "the discriminator's loss: hinge, or vanilla (non-saturating)"),
    "gen_loss": (("hinge", "non_saturating"), "the generator's GAN term: -D(x̂), or softplus(-D(x̂))"),
    "r1_weight": (NON_NEGATIVE, "R1 penalty gamma on real images: gamma/2 |grad D|^2 (default: off)"),
    "disc_ndf": (POSITIVE_INT, "channels of the discriminator's first layer"),
    "disc_num_layers": (POSITIVE_INT, "stride-2 layers of the PatchGAN discriminator"),
    "ema_decay": (NON_NEGATIVE, "keep an EMA of the weights with this decay and save it (default: off)"),
    "codebook_restart_every": (COUNT, "move unused codes onto batch latents every N steps (default: off)"),
    "codebook_restart_until": (COUNT, "no restarts after this step (default: until the end)"),
    "quantize_after": (COUNT, "steps in which the decoder reads unquantized latents"),
    "colour_anchor_weight": (NON_NEGATIVE, "weight of the loss tying 3 latent channels to Y, Cb, Cr"),
    "seed": (COUNT, "seed of the initial weights and of the crops"),
    "log_every": (POSITIVE_INT, "steps between log.jsonl lines"),
    "save_every": (POSITIVE_INT, "steps between checkpoints"),
    "val_every": (COUNT, "steps between scores on --val-data (default: at every checkpoint)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--output", required=True, help="folder for checkpoints, log.jsonl and the model")
    p.add_argument("--config", help="preset name, config.json or taming model.yaml (new model)")
    p.add_argument("--init-from", help="fine-tune this model folder / Hub id")
    p.add_argument("--revision", help="Hub revision of --init-from: branch, tag or commit (default: main)")
    p.add_argument("--lpips", help="LPIPS weights (.safetensors/.pt state dict) for the perceptual term")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--val-data", help="folder of held-out images scored during training (PSNR, SSIM, code usage)")
    p.add_argument("--val-size", type=POSITIVE_INT, help="side of the validation images (default: --crop-size)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard event files to OUTPUT/tensorboard",
    )
    p.add_argument(
        "--allow-change",
        action="append",
        metavar="FIELD[,FIELD]",
        help="on resume, accept a new value of this setting (a training field such as learning_rate, "
        "model_config, data); any other changed setting is refused (--steps may grow)",
    )
    p.add_argument(
        "--max-minutes",
        type=NON_NEGATIVE,
        help="stop (saving) after the first step that ends past this many minutes; rerun to resume",
    )
    p.add_argument("--recipe", help="a named recipe (llamagen-vq) or a recipe JSON: the model preset and training "
                   "values, under any flag given here")  # fmt: skip
    p.add_argument("--fixed-disc-weight", dest="adaptive_disc_weight", action="store_false", default=None,
                   help="a fixed adversarial weight (--disc-weight) instead of taming's adaptive one")  # fmt: skip
    defaults = TrainingConfig()
    for name, (kind, meaning) in _FIELDS.items():
        # No argparse default: a flag not given leaves the recipe's value, else TrainingConfig's.
        flag, default = "--" + name.replace("_", "-"), getattr(defaults, name)
        shown = meaning if "default" in meaning else f"{meaning} (default: {default})"
        if isinstance(kind, tuple):
            p.add_argument(flag, dest=name, choices=kind, help=shown)
        else:
            p.add_argument(flag, dest=name, type=kind, help=shown)
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
