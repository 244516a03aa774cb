"""The PyTorch reference: taming-transformers' own modules, assembled like taming's VQModel.

taming.models.vqgan imports Lightning and a missing taming.main, so the model is put together
here from the modules it uses (Encoder, Decoder, VectorQuantizer2, GumbelQuantize, 1x1 convs).
Shared by the tests and the benchmarks; needs the test extras (torch, ``taming-transformers-rom1504``
installed ``--no-deps``, einops).
"""

from __future__ import annotations

import numpy as np
import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from ..models.configuration import VQGANConfig


class TamingVQGAN(torch.nn.Module):
    """VQModel / GumbelVQ without Lightning and the loss: same submodules, same state-dict keys."""

    def __init__(self, config: VQGANConfig, legacy: bool = True) -> None:
        super().__init__()
        ddconfig = config.to_taming_ddconfig()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantize(
                config.z_channels, config.embed_dim, n_embed=config.n_embed, kl_weight=config.kl_weight, temp_init=1.0
            )
        else:
            self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=config.beta, legacy=legacy)
        self.quant_conv = torch.nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter as the shared fixtures did, so latents spread over the codebook."""
    gen = torch.Generator().manual_seed(seed)
    near_quantizer = ("quant_conv", "post_quant_conv", "quantize.proj")
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name:
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.startswith(("quantize.embedding", "quantize.embed.")):
                param.copy_(noise)
            elif name.endswith("weight") and name.startswith(near_quantizer):
                param.copy_(noise * (1 / np.sqrt(param[0].numel())))  # times, as the fixtures were made
            elif name.endswith("weight"):
                param.copy_(0.05 * noise)
            else:
                param.copy_(0.02 * noise)
    return model.eval()


def state_dict_numpy(model: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_nchw_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array).transpose(0, 3, 1, 2)))


def to_nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)
