"""Training hyper-parameters, apart from the trainer so that the command line can show their
defaults without importing JAX. Imports only the standard library."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional


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
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    # With a validation set: score it every this many steps (0: at every checkpoint) and at the end.
    val_every: int = 0
    # Also write the metrics (and sample grids) as TensorBoard event files (needs tensorboardX).
    tensorboard: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["TrainingConfig"]
