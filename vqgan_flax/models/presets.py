"""The named architectures (``VQGANConfig.from_preset``), as plain data: the command line lists
them without importing transformers. Imports nothing."""

from typing import Any, Dict

# The published taming-transformers architectures. Values are taming's own model.yaml entries.
_F16_IMAGENET = dict(
    ch=128,
    ch_mult=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[16],
    z_channels=256,
    embed_dim=256,
    resolution=256,
)
# aMUSEd's VQ (diffusers' scripts/convert_amused.py): widths 128 x [1, 2, 2, 4, 6], no attention
# anywhere, 8192 x 64 codes. Its resolution places no attention; it only names the image size.
_AMUSED = dict(
    ch=128,
    ch_mult=[1, 2, 2, 4, 6],
    num_res_blocks=2,
    attn_resolutions=[],
    z_channels=64,
    embed_dim=64,
    n_embed=8192,
    mid_block_attention=False,
)
PRESETS: Dict[str, Dict[str, Any]] = {
    # vqgan_imagenet_f16_1024 (also DALL·E-mini's starting point).
    "f16-1024": dict(_F16_IMAGENET, n_embed=1024),
    # vqgan_imagenet_f16_16384 (DALL·E-mini's vqgan_imagenet_f16_16384).
    "f16-16384": dict(_F16_IMAGENET, n_embed=16384),
    # vqgan_gumbel_f8 (Open Images, 8192 codes).
    "gumbel-f8": dict(
        ch=128,
        ch_mult=[1, 1, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[32],
        z_channels=256,
        embed_dim=256,
        n_embed=8192,
        resolution=256,
        quantizer="gumbel",
        kl_weight=1e-8,
    ),
    # LlamaGen's VQ-16 and VQ-8 (tokenizer/tokenizer_image/vq_model.py): taming's blocks, a 16384 x 8
    # l2-normalised codebook, β on the commitment term.
    "llamagen-vq-ds16": dict(_F16_IMAGENET, embed_dim=8, n_embed=16384, quantizer="vq_l2", legacy_loss=False),
    "llamagen-vq-ds8": dict(
        _F16_IMAGENET,
        ch_mult=[1, 2, 2, 4],
        attn_resolutions=[32],
        embed_dim=8,
        n_embed=16384,
        quantizer="vq_l2",
        legacy_loss=False,
    ),
    # SEED-Voken's IBQ (configs/IBQ/gpu/imagenet_ibqgan_*.yaml): taming's f16 blocks with 4 ResnetBlocks
    # a level, 256-dimensional codes picked by the largest dot product.
    "ibq-f16-16384": dict(_F16_IMAGENET, num_res_blocks=4, n_embed=16384, quantizer="ibq"),
    "ibq-f16-262144": dict(_F16_IMAGENET, num_res_blocks=4, n_embed=262144, quantizer="ibq"),
    # latent-diffusion's VQ first stages (models/first_stage_models/vq-f*/config.yaml): taming's blocks,
    # 3- to 8-dimensional codes; f4 attends only in the middle, its "noattn" variant nowhere.
    "ldm-vq-f4": dict(_F16_IMAGENET, ch_mult=[1, 2, 4], attn_resolutions=[], z_channels=3, embed_dim=3, n_embed=8192),
    "ldm-vq-f4-noattn": dict(
        _F16_IMAGENET,
        ch_mult=[1, 2, 4],
        attn_resolutions=[],
        z_channels=3,
        embed_dim=3,
        n_embed=8192,
        mid_block_attention=False,
    ),
    "ldm-vq-f8": dict(
        _F16_IMAGENET, ch_mult=[1, 2, 2, 4], attn_resolutions=[32], z_channels=4, embed_dim=4, n_embed=16384
    ),
    "ldm-vq-f16": dict(_F16_IMAGENET, z_channels=8, embed_dim=8, n_embed=16384),
    # aMUSEd's VQ (diffusers VQModel; amused/amused-256 and -512 share it), resolution = the image size.
    "amused-256": dict(_AMUSED, resolution=256),
    "amused-512": dict(_AMUSED, resolution=512),
    # A few hundred thousand parameters: for tests and examples only.
    "tiny": dict(
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[8],
        z_channels=8,
        embed_dim=8,
        n_embed=32,
        resolution=16,
    ),
}

__all__ = ["PRESETS"]
