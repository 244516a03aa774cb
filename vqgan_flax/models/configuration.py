"""VQGAN configuration, with field names taken from taming-transformers' ``ddconfig``."""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..utils.files import errors_naming
from ..utils.quiet import quiet_transformers_advice
from .presets import PRESETS

with quiet_transformers_advice():
    from transformers import PretrainedConfig

QUANTIZERS = ("vq", "vq_l2", "ibq", "gumbel", "fsq", "lfq")
# A taming model.yaml is a few hundred bytes; anything past this is not one.
MAX_YAML_BYTES = 1 << 20

# Far beyond any published VQGAN; a config asking for more is corrupt or hostile, and would
# otherwise fail deep inside XLA (or exhaust memory) instead of naming the field.
_LIMITS = {"ch": 4096, "out_ch": 64, "in_channels": 64, "num_res_blocks": 64, "resolution": 1 << 16,
           "z_channels": 1 << 14, "n_embed": 1 << 24, "embed_dim": 1 << 14, "ch_mult": 64}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(**fields: Any) -> None:
    """Type and range of every field, naming the first one that is wrong."""
    for name in ("ch", "out_ch", "in_channels", "num_res_blocks", "resolution", "z_channels", "n_embed", "embed_dim"):
        value = fields[name]
        low: float = 0 if name == "num_res_blocks" else 1
        if not _is_int(value) or not low <= value <= _LIMITS[name]:
            raise ValueError(f"{name}={value!r} must be an integer in [{low}, {_LIMITS[name]}]")
    for name, kind in (("ch_mult", "a non-empty list"), ("attn_resolutions", "a list")):
        value = fields[name]
        if not isinstance(value, (list, tuple)) or any(not _is_int(m) or m < 1 for m in value):
            raise ValueError(f"{name}={value!r} must be {kind} of positive integers")
    if not fields["ch_mult"]:
        raise ValueError("ch_mult=[] must be a non-empty list of positive integers")
    if len(fields["ch_mult"]) > 16 or max(fields["ch_mult"]) > _LIMITS["ch_mult"]:
        raise ValueError(
            f"ch_mult={list(fields['ch_mult'])} must hold 1 to 16 multipliers of at most {_LIMITS['ch_mult']}"
        )
    for name, low, high in (
        ("dropout", 0.0, 1.0),
        ("beta", 0.0, 1e6),
        ("kl_weight", 0.0, 1e6),
        ("temperature", 0.0, 1e6),
    ):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ValueError(f"{name}={value!r} must be a number in [{low}, {high})")
    if fields["temperature"] == 0:
        raise ValueError("temperature=0 must be positive (the Gumbel softmax divides by it)")
    for name in ("double_z", "resamp_with_conv", "give_pre_end", "legacy_loss", "mid_block_attention"):
        if not isinstance(fields[name], bool):
            raise ValueError(f"{name}={fields[name]!r} must be true or false")


def _implicit_codebook(
    quantizer: str, n_embed: Optional[int], embed_dim: Optional[int], fsq_levels: Sequence[int]
) -> Tuple[int, int]:
    """``(n_embed, embed_dim)``: given, or what the quantizer implies. FSQ's codes are its levels'
    combinations (``embed_dim = len(levels)``, ``n_embed = prod(levels)``), LFQ's every sign
    pattern of ``embed_dim`` bits (``n_embed = 2**embed_dim``); a given value that disagrees is
    refused, naming both."""
    if quantizer != "fsq" and fsq_levels:
        raise ValueError(f"fsq_levels={list(fsq_levels)} is for quantizer='fsq', not {quantizer!r}")
    if quantizer == "fsq":
        if (
            not isinstance(fsq_levels, (list, tuple))
            or not fsq_levels
            or any(not _is_int(v) or v < 3 for v in fsq_levels)
        ):
            raise ValueError(f"fsq_levels={fsq_levels!r} must be a non-empty list of integers of at least 3")
        implied = (math.prod(fsq_levels), len(fsq_levels))
    elif quantizer == "lfq":
        bits = 18 if embed_dim is None else embed_dim
        if not _is_int(bits) or not 1 <= bits <= 24:
            raise ValueError(f"embed_dim={bits!r}: LFQ's bits must be an integer in [1, 24]")
        implied = (2**bits, bits)
    else:
        return (1024 if n_embed is None else n_embed), (256 if embed_dim is None else embed_dim)
    for name, value, wanted in (("n_embed", n_embed, implied[0]), ("embed_dim", embed_dim, implied[1])):
        if value is not None and value != wanted:
            raise ValueError(f"{name}={value!r} disagrees with quantizer={quantizer!r}, which implies {wanted}")
    return implied


_TAMING_TARGETS = {
    "taming.models.vqgan.VQModel": "vq",
    "taming.models.vqgan.GumbelVQ": "gumbel",
    # latent-diffusion's VQ first stage: taming's blocks and taming's VectorQuantizer2.
    "ldm.models.autoencoder.VQModel": "vq",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    # SEED-Voken's IBQ, in its LightningCLI configs (configs/IBQ/*/imagenet_ibqgan_*.yaml).
    "src.IBQ.models.ibqgan.IBQ": "ibq",
}


def _ldm_attention(ddconfig: Dict[str, Any], source: str) -> Dict[str, Any]:
    """What latent-diffusion's ``ddconfig`` adds to taming's: ``attn_type`` ``"none"`` replaces
    every attention block (the middle ones too) by the identity; linear attention and a tanh
    output are other models, refused by name."""
    attn_type = ddconfig.pop("attn_type", "vanilla")
    for name in ("use_linear_attn", "tanh_out"):
        if ddconfig.pop(name, False):
            raise ValueError(f"{source}: ddconfig.{name}=true is not supported (taming's blocks only)")
    if attn_type == "vanilla":
        return {}
    if attn_type == "none":
        return {"mid_block_attention": False, "attn_resolutions": []}
    raise ValueError(f"{source}: ddconfig.attn_type={attn_type!r} is not supported; expected 'vanilla' or 'none'")


class VQGANConfig(PretrainedConfig):
    r"""Configuration of a [`FlaxVQGANModel`].

    The defaults are taming-transformers' f16 ImageNet VQGAN (``vqgan_imagenet_f16_1024``).

    Args:
        ch (`int`): base channel count; level ``i`` has ``ch * ch_mult[i]`` channels.
        out_ch (`int`): channels of the decoded image.
        in_channels (`int`): channels of the input image.
        num_res_blocks (`int`): ResnetBlocks per encoder level (the decoder has one more per level).
        resolution (`int`): the training resolution; it decides at which levels attention runs
            (level ``i`` has resolution ``resolution // 2**i``), not the input size.
        z_channels (`int`): channels of the encoder output / decoder input.
        ch_mult (`List[int]`): channel multiplier per level; ``len(ch_mult) - 1`` downsamplings.
        attn_resolutions (`List[int]`): resolutions at which the levels get AttnBlocks.
        n_embed (`int`): codebook size (default 1024; FSQ: the product of its levels, LFQ:
            ``2**embed_dim``, implied).
        embed_dim (`int`): codebook vector size (channels of the quantized latent; default 256;
            FSQ: ``len(fsq_levels)``, LFQ: its bits).
        dropout (`float`): dropout rate inside ResnetBlocks (only active with ``train=True``).
        double_z (`bool`): whether the encoder outputs ``2 * z_channels`` (taming VQGANs use False).
        resamp_with_conv (`bool`): strided/post-upsampling 3x3 convs (True) or pooling/plain
            nearest upsampling (False).
        give_pre_end (`bool`): decoder returns features before ``norm_out``/``conv_out``.
        quantizer (`str`): ``"vq"`` (nearest neighbour, taming's VectorQuantizer2), ``"vq_l2"``
            (nearest in cosine: latents and codes scaled to unit length, LlamaGen's VQ), ``"ibq"``
            (largest dot product, index back-propagation in training: SEED-Voken's IBQ) or
            ``"gumbel"`` (taming's GumbelQuantize), ``"fsq"`` (finite scalar quantization: each
            channel rounded to ``fsq_levels``) or ``"lfq"`` (lookup-free: each channel's sign).
        beta (`float`): commitment weight of the VQ loss.
        legacy_loss (`bool`): taming's default β placement, ``|sg(e) - z|² + β |e - sg(z)|²``;
            False gives the VQ-VAE paper's ``β |sg(e) - z|² + |e - sg(z)|²``.
        mid_block_attention (`bool`): whether the middle blocks have attention (taming: always;
            LWM/aMUSEd-style models: none).
        kl_weight (`float`): weight of the Gumbel quantizer's KL-to-uniform term.
        temperature (`float`): Gumbel-softmax temperature used in training unless overridden.
        norm_num_groups (`int`): GroupNorm groups (taming: always 32; ``ch`` must be a multiple).
            Fewer groups let a narrow model keep several channels per group: with one channel per
            group the last GroupNorm removes each channel's mean over the image, so the output's
            mean colour can barely depend on the input.
        fsq_levels (`List[int]`): FSQ's levels per channel (each at least 3).
        entropy_loss_weight (`float`): weight of the entropy loss in training (LFQ: default 0.1;
            vq/vq_l2: LlamaGen's and MaskGIT's ``entropy_loss_ratio``, default 0).
        entropy_temperature (`float`): temperature of the soft code assignment the entropy loss
            measures (0.01: LlamaGen's, and LFQ's ``inv_temperature=100``).
        diversity_gamma (`float`): LFQ: weight of the codebook-wide entropy against the
            per-position one.
        lfq_scale (`float`): LFQ's code values ``±lfq_scale``. For LFQ ``beta`` is the weight of
            its commitment term ``|z - sg(q)|²``.
    """

    model_type = "vqgan"
    # transformers 5 refuses to save a config holding a generation parameter (``temperature``)
    # unless the class declares it as a field (its configs are dataclasses); harmless on 4.x.
    temperature: float = 1.0

    def __init__(
        self,
        ch: int = 128,
        out_ch: int = 3,
        in_channels: int = 3,
        num_res_blocks: int = 2,
        resolution: int = 256,
        z_channels: int = 256,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        attn_resolutions: Sequence[int] = (16,),
        n_embed: Optional[int] = None,
        embed_dim: Optional[int] = None,
        dropout: float = 0.0,
        double_z: bool = False,
        resamp_with_conv: bool = True,
        give_pre_end: bool = False,
        quantizer: str = "vq",
        beta: float = 0.25,
        legacy_loss: bool = True,
        mid_block_attention: bool = True,
        kl_weight: float = 5e-4,
        temperature: float = 1.0,
        norm_num_groups: int = 32,
        fsq_levels: Sequence[int] = (),
        entropy_loss_weight: Optional[float] = None,
        entropy_temperature: float = 0.01,
        diversity_gamma: float = 1.0,
        lfq_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        # vqgan-jax's config.json stores the derived level count; accept it, but only if consistent.
        num_resolutions = kwargs.pop("num_resolutions", None)
        if num_resolutions is not None and num_resolutions != len(ch_mult):
            raise ValueError(
                f"num_resolutions={num_resolutions} does not match len(ch_mult)={len(ch_mult)} "
                f"(ch_mult={list(ch_mult)})"
            )
        if quantizer not in QUANTIZERS:
            raise ValueError(f"Unknown quantizer {quantizer!r}; expected one of {QUANTIZERS}")
        if quantizer == "gumbel" and double_z:
            raise ValueError("double_z=True is not supported with the gumbel quantizer")
        n_embed, embed_dim = _implicit_codebook(quantizer, n_embed, embed_dim, fsq_levels)
        if entropy_loss_weight is None:
            entropy_loss_weight = 0.1 if quantizer == "lfq" else 0.0
        numbers = {"entropy_loss_weight": (entropy_loss_weight, 0.0), "diversity_gamma": (diversity_gamma, 0.0),
                   "entropy_temperature": (entropy_temperature, 1e-6), "lfq_scale": (lfq_scale, 1e-6)}  # fmt: skip
        for name, (value, low) in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < 1e6:
                raise ValueError(f"{name}={value!r} must be a number in [{low:g}, 1e6)")
        if entropy_loss_weight and quantizer not in ("vq", "vq_l2", "lfq"):
            raise ValueError(f"entropy_loss_weight={entropy_loss_weight} is for vq, vq_l2 and lfq, not {quantizer!r}")
        _check_fields(
            ch=ch, out_ch=out_ch, in_channels=in_channels, num_res_blocks=num_res_blocks, resolution=resolution,
            z_channels=z_channels, ch_mult=ch_mult, attn_resolutions=attn_resolutions, n_embed=n_embed,
            embed_dim=embed_dim, dropout=dropout, beta=beta, kl_weight=kl_weight, temperature=temperature,
            double_z=double_z, resamp_with_conv=resamp_with_conv, give_pre_end=give_pre_end,
            legacy_loss=legacy_loss, mid_block_attention=mid_block_attention,
        )  # fmt: skip
        if not _is_int(norm_num_groups) or not 1 <= norm_num_groups <= 1024:
            raise ValueError(f"norm_num_groups={norm_num_groups!r} must be an integer in [1, 1024]")
        if ch % norm_num_groups:
            raise ValueError(f"ch={ch} must be a multiple of norm_num_groups={norm_num_groups} (GroupNorm's groups)")
        self.norm_num_groups = norm_num_groups
        self.fsq_levels = list(fsq_levels)
        self.entropy_loss_weight = entropy_loss_weight
        self.entropy_temperature = entropy_temperature
        self.diversity_gamma = diversity_gamma
        self.lfq_scale = lfq_scale
        self.ch = ch
        self.out_ch = out_ch
        self.in_channels = in_channels
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.z_channels = z_channels
        self.ch_mult = list(ch_mult)
        self.attn_resolutions = list(attn_resolutions)
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.double_z = double_z
        self.resamp_with_conv = resamp_with_conv
        self.give_pre_end = give_pre_end
        self.quantizer = quantizer
        self.beta = beta
        self.legacy_loss = legacy_loss
        self.mid_block_attention = mid_block_attention
        self.kl_weight = kl_weight
        self.temperature = temperature
        super().__init__(**kwargs)

    @property
    def num_resolutions(self) -> int:
        """Number of levels (``len(ch_mult)``)."""
        return len(self.ch_mult)

    # LWM's names for the same fields (read-only): LWM code that reads its VQGAN config runs on ours.
    num_embeddings = property(lambda self: self.n_embed, doc="LWM's name for ``n_embed``.")
    quantized_embed_dim = property(lambda self: self.embed_dim, doc="LWM's name for ``embed_dim``.")
    hidden_channels = property(lambda self: self.ch, doc="LWM's name for ``ch``.")
    channel_mult = property(lambda self: self.ch_mult, doc="LWM's name for ``ch_mult``.")
    num_channels = property(lambda self: self.in_channels, doc="LWM's name for ``in_channels``.")
    no_attn_mid_block = property(lambda self: not self.mid_block_attention, doc="LWM: no attention in the middle.")
    resample_with_conv = property(lambda self: self.resamp_with_conv, doc="LWM's name for ``resamp_with_conv``.")
    commitment_cost = property(lambda self: self.beta, doc="LWM's name for ``beta``.")

    @property
    def downsampling_factor(self) -> int:
        """Pixels per token along each side: ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    def latent_shape(self, height: int, width: int) -> tuple:
        """Token grid ``(h, w)`` for an image of ``height x width`` pixels."""
        f = self.downsampling_factor
        if height % f or width % f:
            raise ValueError(f"Image size {height}x{width} is not divisible by the downsampling factor {f}")
        return height // f, width // f

    def attention_at_level(self, level: int) -> bool:
        """Whether encoder level ``level`` (and the decoder level of the same resolution) has AttnBlocks.

        As in taming, this follows the configured ``resolution``, not the size of the input.
        """
        return self.resolution // 2**level in self.attn_resolutions

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``; a field it refuses is named with the folder
        (``FOLDER: config.json: ch=-1 must be ...``)."""
        with errors_naming(str(pretrained_model_name_or_path), "config.json"):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VQGANConfig:
        """A config for a published taming architecture: one of ``PRESETS`` (``f16-1024``, ...)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    @classmethod
    def from_taming_yaml(cls, path: Union[str, os.PathLike], **overrides: Any) -> VQGANConfig:
        """Read taming-transformers' own ``model.yaml`` (``model.target`` VQModel or GumbelVQ) or
        latent-diffusion's VQ one (``ldm.models.autoencoder.VQModel``):
        plain YAML only (no tags, no aliases, which let a few hundred bytes expand to gigabytes),
        at most ``MAX_YAML_BYTES``, from a regular file."""
        import yaml

        class PlainLoader(yaml.SafeLoader):
            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(yaml.AliasEvent):
                    mark = self.peek_event().start_mark
                    raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", mark)
                return super().compose_node(parent, index)

        if not os.path.isfile(path):
            raise ValueError(f"{path}: not a regular file")
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise ValueError(f"{path}: {os.path.getsize(path)} bytes, more than a model config's {MAX_YAML_BYTES}")
        try:
            with open(path, encoding="utf-8") as f:
                document = yaml.load(f, Loader=PlainLoader)  # a SafeLoader without aliases
        except yaml.YAMLError as err:  # e.g. a !!python/object tag, which safe_load refuses
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(f"{path}: not a plain YAML taming config: {problem}{where}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
        try:
            return cls.from_taming_dict(document, source=str(path), **overrides)
        except (ValueError, TypeError) as err:
            if str(path) in str(err):
                raise
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_taming_dict(cls, document: Dict[str, Any], source: str = "<dict>", **overrides: Any) -> VQGANConfig:
        """Build a config from the parsed content of a taming ``model.yaml`` (``model.target`` /
        ``model.params``) or a LightningCLI one (``model.class_path`` / ``model.init_args``, IBQ's)."""
        model = document.get("model", document) if isinstance(document, dict) else None
        lightning = isinstance(model, dict) and "class_path" in model
        target_key, params_key = ("class_path", "init_args") if lightning else ("target", "params")
        if not isinstance(model, dict) or not isinstance(model.get(params_key), dict):
            raise ValueError(f"{source}: expected a taming config with model.params (and model.target)")
        target: Optional[str] = model.get(target_key)
        if target is not None and target not in _TAMING_TARGETS:
            raise ValueError(
                f"{source}: unsupported model.{target_key} {target!r}; expected one of {sorted(_TAMING_TARGETS)}"
            )
        params = model[params_key]
        missing = [k for k in ("ddconfig", "embed_dim", "n_embed") if k not in params]
        if missing:
            raise ValueError(f"{source}: model.{params_key} lacks {missing}")
        if not isinstance(params["ddconfig"], dict):
            raise ValueError(f"{source}: model.{params_key}.ddconfig must be a mapping")
        for name, why in (("remap", "its indices are a remapped subset"), ("l2_normalize", "IBQ with l2 norm")):
            if params.get(name) not in (None, False):
                raise ValueError(f"{source}: model.{params_key}.{name} is not supported ({why})")
        ddconfig = dict(params["ddconfig"])
        attention = _ldm_attention(ddconfig, source)
        known = set(cls().to_dict())
        kwargs = {k: v for k, v in ddconfig.items() if k in known}
        kwargs.update(attention)
        kwargs.update(embed_dim=params["embed_dim"], n_embed=params["n_embed"])
        kwargs["quantizer"] = _TAMING_TARGETS.get(target or "", "vq")
        if kwargs["quantizer"] == "gumbel":
            kwargs["kl_weight"] = params.get("kl_weight", 1e-8)  # GumbelVQ's own default
        if kwargs["quantizer"] == "ibq":
            kwargs["beta"] = params.get("beta", 0.25)
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def to_taming_ddconfig(self) -> Dict[str, Any]:
        """The ``ddconfig`` taming's Encoder/Decoder take for this architecture."""
        keys = (
            "ch out_ch in_channels num_res_blocks resolution z_channels ch_mult attn_resolutions dropout "
            "double_z resamp_with_conv give_pre_end"
        ).split()
        return {k: copy.deepcopy(getattr(self, k)) for k in keys}


def list_presets() -> List[str]:
    """Names accepted by [`VQGANConfig.from_preset`]."""
    return sorted(PRESETS)
