"""Training hyper-parameters, apart from the trainer so that the command line can show their
defaults without importing JAX. Imports only the standard library."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional


@dataclasses.dataclass
class TrainingConfig:
    """Hyper-parameters; the loss fields carry taming's ``VQLPIPSWithDiscriminator`` names."""

    steps: int = 1000
    batch_size: int = 8
    crop_size: int = 64
    learning_rate: float = 1e-4
    # "constant" (taming) or "cosine": linear warm-up over warmup_steps, then a cosine decay to
    # 10 % of learning_rate at ``steps``.
    schedule: str = "constant"
    warmup_steps: int = 0
    adam_b1: float = 0.5
    adam_b2: float = 0.9
    reconstruction_loss: str = "l1"
    # Not in taming: weight of the same distance on the chroma planes (losses.reconstruction_loss).
    chroma_weight: float = 0.0
    # Not in taming: weight of each image's 1 - SSIM (losses.reconstruction_loss).
    ssim_weight: float = 0.0
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0  # used only when LPIPS params are given
    disc_start: int = 10000
    disc_weight: float = 0.8
    disc_factor: float = 1.0  # 0 (or disc_weight 0): no discriminator is trained or evaluated
    disc_loss: str = "hinge"
    disc_ndf: int = 64
    disc_num_layers: int = 3
    ema_decay: Optional[float] = None
    # Not in taming: every this many steps, codes unused since the last restart are moved onto
    # random latents of the current batch (Jukebox-style random restarts against codebook
    # collapse). None keeps taming's behaviour. Nearest-neighbour quantizer only.
    codebook_restart_every: Optional[int] = None
    # No restarts after this step (None: until the end), so the decoder settles on a fixed codebook.
    codebook_restart_until: Optional[int] = None
    # Not in taming: for the first this many steps the decoder reads the encoder's continuous latents
    # (no quantization; the codebook still follows them through its loss and the restarts). Meant to
    # let the encoder carry what codes would not pick up at first; for colour it does not: without
    # any quantization the default model's latents carry no colour either (scripts/colour_probe.py).
    # colour_anchor_weight is what keeps it.
    quantize_after: int = 0
    # Not in taming: weight of losses.colour_anchor_loss, which ties the first three latent channels
    # to each block's mean Y, Cb and Cr (so the codes carry colour; nearest-neighbour quantizer only).
    colour_anchor_weight: float = 0.0
    # Not in taming (LlamaGen, MaskGIT, MAGVIT recipes): decoupled weight decay of the autoencoder
    # (AdamW), clipping of each network's gradients to this global norm (None: off), a fixed
    # adversarial weight (disc_weight) instead of taming's adaptive ‖∇L_rec‖ / ‖∇L_GAN‖, the
    # non-saturating generator loss, and R1 on real images (weight γ; the penalty is γ/2 ‖∇D‖²).
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = None
    adaptive_disc_weight: bool = True
    gen_loss: str = "hinge"
    r1_weight: float = 0.0
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    # With a validation set: score it every this many steps (0: at every checkpoint) and at the end.
    val_every: int = 0
    # Also write the metrics (and sample grids) as TensorBoard event files (needs tensorboardX).
    tensorboard: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES = os.path.join(os.path.dirname(__file__), "recipe_files")


def list_recipes() -> List[str]:
    """The named recipes shipped with the package (``--recipe NAME``)."""
    return sorted(name[: -len(".json")] for name in os.listdir(RECIPES) if name.endswith(".json"))


def load_recipe(name_or_path: str) -> Dict[str, Any]:
    """A recipe: ``{"model": preset or None, "training": {field: value}}`` from a shipped name
    (``llamagen-vq``) or a JSON file of that shape; an unknown training field, or a value
    ``TrainingConfig`` refuses, is named with the file."""
    path = os.path.join(RECIPES, f"{name_or_path}.json") if name_or_path in list_recipes() else name_or_path
    if not os.path.isfile(path):
        raise ValueError(f"--recipe {name_or_path}: neither a shipped recipe ({', '.join(list_recipes())}) nor a file")
    if os.path.getsize(path) > 1 << 20:
        raise ValueError(f"{path}: over 1 MiB; a recipe is a few hundred bytes")
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON recipe ({err})") from None
    training = document.get("training", {}) if isinstance(document, dict) else None
    if not isinstance(training, dict) or not isinstance(document.get("model"), (str, type(None))):
        raise ValueError(f"{path}: a recipe is {{'model': PRESET, 'training': {{FIELD: VALUE}}}}")
    unknown = sorted(set(training) - {f.name for f in dataclasses.fields(TrainingConfig)})
    if unknown:
        raise ValueError(f"{path}: training fields TrainingConfig does not have: {', '.join(unknown)}")
    TrainingConfig(**training)  # types are checked where they are used; construction must work
    return {"model": document.get("model"), "training": training}


__all__ = ["RECIPES", "TrainingConfig", "list_recipes", "load_recipe"]
