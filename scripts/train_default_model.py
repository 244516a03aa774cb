"""Train the shipped default model (vqgan_flax/default_model) on the training split of
``vqgan_flax.evaluation.sample_data`` (CC0 / public-domain photographs bundled with scikit-image).

    pip install -e ".[eval]" && python scripts/train_default_model.py --output build/colour_anchor
    python scripts/train_default_model.py --init-from build/colour_anchor/model --learning-rate 1e-4 \
        --reconstruction-loss l2 --codebook-restart-until 0 --output build/phase2
    python scripts/train_default_model.py --init-from build/phase2/model --learning-rate 1e-4 \
        --reconstruction-loss l2 --codebook-restart-until 0 --data-seed 1 --output build/phase3
    python scripts/train_default_model.py --init-from build/phase3/model --learning-rate 1e-4 \
        --reconstruction-loss l2 --codebook-restart-until 0 --data-seed 2 --steps 4000 --output build/phase4
    python scripts/train_default_model.py --init-from build/phase4/model --learning-rate 1e-4 \
        --reconstruction-loss l2 --codebook-restart-until 0 --data-seed 3 --output build/phase5
    python scripts/train_default_model.py --init-from build/phase5/model --learning-rate 1e-4 \
        --reconstruction-loss l2 --codebook-restart-until 0 --data-seed 4 --ssim-weight 0.03 --steps 3500 \
        --output build/phase6

The shipped model is the sixth command's: the first trains from scratch with L1 and the colour
anchor, the second continues from its weights with the squared error (what PSNR scores), keeping
the codebook (a restart there moves the rarely used codes the first phase learnt), the third to
fifth repeat the second on other random crops, and the sixth adds 0.03 x (1 - SSIM) to the loss.
Each is resumable: rerunning the same command continues exactly from the last checkpoint (every 100
steps), so it can run in the background across sessions. The validation split chose the recipe
(see vqgan_flax/default_model/README.md); ``scripts/evaluate_default_model.py`` reports the test
split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence, Union

import numpy as np

from vqgan_flax import FlaxVQGANModel, VQGANConfig
from vqgan_flax.cli.common import COUNT, NON_NEGATIVE
from vqgan_flax.evaluation import sample_data
from vqgan_flax.train.trainer import ImageCrops, TrainingConfig, VQGANTrainer

# Downsampling factor 8 and 1024 codes: 32 x 32 tokens for a 256 x 256 image (the grid of LDM's
# f8 tokenizers) at 0.156 bits per pixel. No attention, so it runs at any size divisible by 8. A
# narrow full-resolution level (32 channels) keeps a training step on two CPU cores under a second;
# 8 GroupNorm groups keep 4 channels per group there, as taming's 128 channels in 32 groups do (with
# 32 groups of one channel the final GroupNorm erases each channel's mean; the runs that showed it
# are in docs/default-model.md, unrecorded).
MODEL = dict(
    ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=1, attn_resolutions=[], mid_block_attention=False,
    z_channels=64, embed_dim=8, n_embed=1024, resolution=256, norm_num_groups=8,
)  # fmt: skip
# Pixel losses only (L1 + codebook terms): a GAN term trades PSNR/SSIM for texture, and those two
# are what the default model is judged on. Codes unused for 10 steps are restarted on encoder outputs
# for the first 80% of the steps (rarer restarts let the codebook collapse to a few codes per batch,
# more frequent ones stalled; the probes, scored on validation and test crops and not recorded, are
# in docs/default-model.md); the last steps keep the codebook fixed so the decoder settles on it
# (training_config() sets the 80%).
# colour_anchor_weight ties three latent channels to each 8x8 block's mean Y, Cb, Cr: without it the
# latents of this architecture collapse to about one dimension within 50 steps, even with no
# quantization, and never carry colour (scripts/colour_probe.py). lr 2e-4, not the previous model's 1e-3: the
# anchor was probed at 2e-4 (at 1e-3 an unrecorded scratch probe was still grey after 150 steps).
TRAINING = dict(
    batch_size=8, crop_size=64, learning_rate=2e-4, adam_b1=0.9, adam_b2=0.99, schedule="cosine",
    warmup_steps=100, reconstruction_loss="l1", disc_weight=0.0, codebook_restart_every=10,
    colour_anchor_weight=1.0, log_every=25, save_every=100, seed=0,
)  # fmt: skip
# Crops from regions up to 64 / 0.4 = 160 pixels wide (the test images are shrunk by 0.4-0.6 to
# 256 pixels), mild colour jitter, per-channel gains of ±15% and random R/G/B permutations (the four
# colour photographs are red, brown and dark blue: a model trained on them alone turned rocket's blue
# sky orange); the colour photographs are drawn twice as often (7 of the 11 training images are
# grayscale).
AUGMENT = dict(min_scale=0.4, colour_jitter=0.1, tint=0.15, channel_shuffle=True)
# --no-colour-augment: the previous default model's crops (no gains, no permutations).
PREVIOUS_AUGMENT = dict(min_scale=0.4, colour_jitter=0.1)
COLOUR = ("astronaut", "hubble_deep_field", "retina", "ihc")


def training_config(steps: int = 4500, **overrides: int) -> TrainingConfig:
    """The recipe for ``steps`` steps: codebook restarts during the first 80%."""
    return TrainingConfig(steps=steps, **{**TRAINING, "codebook_restart_until": steps * 4 // 5, **overrides})


def _read_record(path: str, advice: str) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not a readable command record ({error}){advice}") from None


def _init_record(model_dir: str) -> dict:
    """What a run started from ``model_dir`` (a run's ``model/`` folder) records of it: the folder and
    the commands that trained it, from that run's ``command.json`` (so the shipped record names both)."""
    record = {"model": model_dir}
    path = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "command.json")
    if os.path.exists(path):
        earlier = _read_record(path, "")
        record.update({k: earlier[k] for k in ("runs", "init_from") if isinstance(earlier, dict) and k in earlier})
    return record


def record_command(
    output: str, argv: list, names: list, augment: dict, init_from: Optional[str] = None, data_seed: int = 0
) -> None:
    """Append this run's command line to ``output/command.json``; a resumed run must use the same
    images, augmentations, crop seed and starting model as the run it continues (else its batches or
    weights would silently change)."""
    path = os.path.join(output, "command.json")
    record = {"runs": [], "images": names, "augment": augment}
    if data_seed:  # records from before --data-seed have no key: they drew seed 0
        record["data_seed"] = data_seed
    if init_from is not None:
        record["init_from"] = _init_record(init_from)
    if os.path.exists(path):
        previous = _read_record(path, "; choose another --output")
        if not isinstance(previous, dict) or not (previous.get("runs") or previous.get("argv")):
            raise SystemExit(f"{path}: lists no earlier run ('runs' or 'argv'); choose another --output")
        for key in ("images", "augment", "data_seed", "init_from"):
            was, now = (r.get(key, 0 if key == "data_seed" else None) for r in (previous, record))
            if was != now:
                raise SystemExit(
                    f"{path}: the run there trained with {key} {was!r}, this script uses {now!r}; resume it "
                    "with that run's script and options or choose another --output"
                )
        record["runs"] = previous.get("runs") or [["python", *previous["argv"][1:]]]  # before runs were listed
    record["runs"].append(["python", "scripts/train_default_model.py", *argv])
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def load_start(model_dir: str) -> FlaxVQGANModel:
    """The model a second phase starts from; refused unless it has this script's architecture."""
    try:
        model = FlaxVQGANModel.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--init-from {model_dir}: not a model folder ({error})") from None
    for key, value in MODEL.items():
        found = getattr(model.config, key)
        if found != value:
            raise SystemExit(f"--init-from {model_dir}: {key} is {found!r}, this recipe has {value!r}")
    return model


def arguments() -> argparse.ArgumentParser:
    """The command line (``config_for`` turns a recorded one back into its TrainingConfig)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="build/default_model")
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument(
        "--colour-augment", action=argparse.BooleanOptionalAction, default=True,
        help="AUGMENT's gains and channel permutations (default); --no-colour-augment: PREVIOUS_AUGMENT",
    )  # fmt: skip
    parser.add_argument(
        "--max-minutes", type=float, help="stop (and save) after this long; rerunning the command resumes"
    )
    # For a machine without the packages that ship the photographs (a lent GPU): write the training
    # images here, carry the file there, and train from it.
    parser.add_argument("--save-images", metavar="NPZ", help="write the training images to NPZ and exit")
    parser.add_argument("--images", metavar="NPZ", help="train on the images --save-images wrote")
    for name in ("batch_size", "crop_size"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, help=f"instead of {TRAINING[name]} (e.g. on a GPU)"
        )
    # Colour experiments: see TrainingConfig.chroma_weight / quantize_after / colour_anchor_weight.
    parser.add_argument("--chroma-weight", type=float, help="add this weight of the loss on the chroma planes")
    parser.add_argument("--quantize-after", type=int, help="decode the continuous latents for this many steps")
    parser.add_argument(
        "--colour-anchor-weight", type=float, help="tie three latent channels to the block colour with this weight"
    )
    parser.add_argument(
        "--ssim-weight", type=NON_NEGATIVE, help="add this weight of each crop's 1 - SSIM to the reconstruction loss"
    )
    parser.add_argument("--learning-rate", type=float, help=f"peak rate instead of {TRAINING['learning_rate']}")
    parser.add_argument("--reconstruction-loss", choices=("l1", "l2"), help="instead of l1 (l2: what PSNR scores)")
    parser.add_argument(
        "--codebook-restart-until", type=int, help="restart dead codes until this step (default: 80%% of --steps)"
    )
    # A later phase sees other crops than the phase it continues (with the same seed its step k
    # would draw that phase's step-k batch again).
    parser.add_argument("--data-seed", type=COUNT, default=0, help="seed of the random crops (default 0)")
    # A second phase: the weights of an earlier run's model/ folder, a fresh optimizer and schedule.
    parser.add_argument("--init-from", metavar="MODEL", help="start from this model folder (MODEL's architecture)")
    return parser


def config_for(args: Union[argparse.Namespace, Sequence[str]]) -> TrainingConfig:
    """The TrainingConfig a command line (parsed, or its arguments as recorded in command.json) trains with."""
    args = args if isinstance(args, argparse.Namespace) else arguments().parse_args(list(args))
    chosen = ("batch_size", "crop_size", "chroma_weight", "quantize_after", "colour_anchor_weight", "learning_rate",
              "reconstruction_loss", "codebook_restart_until", "ssim_weight")  # fmt: skip
    return training_config(args.steps, **{k: getattr(args, k) for k in chosen if getattr(args, k) is not None})


def main(argv=None) -> int:
    args = arguments().parse_args(argv)
    config = config_for(args)
    augment = AUGMENT if args.colour_augment else PREVIOUS_AUGMENT
    names = list(sample_data.SPLIT["train"]) + list(COLOUR)
    if args.images:
        with np.load(args.images) as stored:
            missing = sorted(set(names) - set(stored.files))
            if missing:
                raise SystemExit(f"{args.images}: no image {missing[0]!r} (written by another split?)")
            images = [stored[name] for name in names]
    else:
        images = [sample_data.load_image(name) for name in names]
    if args.save_images:
        np.savez_compressed(args.save_images, **dict(zip(names, images)))
        return 0
    os.makedirs(args.output, exist_ok=True)
    model = FlaxVQGANModel(VQGANConfig(**MODEL), seed=0) if args.init_from is None else load_start(args.init_from)
    argv = sys.argv[1:] if argv is None else list(argv)
    record_command(args.output, argv, names, augment, args.init_from, args.data_seed)
    trainer = VQGANTrainer(model, config)
    began = time.time()
    trainer.fit(
        ImageCrops(images, config.crop_size, seed=args.data_seed, **augment),
        output_dir=args.output,
        progress=False,
        on_log=lambda m: print(json.dumps({k: round(v, 4) for k, v in m.items()}), flush=True),
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
    )
    print(json.dumps({"seconds_this_run": round(time.time() - began, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
