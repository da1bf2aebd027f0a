"""The "codec then classifier" baseline's codec: tica's codec with g_s on the latent, no ViT
(a mean-scale hyperprior model, Minnen et al., 2018)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..nn.conv import synthesis
from .codec import CompressionModel


class HyperpriorCodec(CompressionModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        self.g_s = synthesis(c.stages, c.M, c.N, 3, c.act)

    def forward(self, x: torch.Tensor, entropy: bool = True) -> dict:
        y_hat, likelihoods = self.encode_latent(x, entropy)
        x_hat = self.g_s(y_hat)[..., : x.shape[-2], : x.shape[-1]]
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def reconstruct_latent(self, y_hat: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return self.g_s(y_hat)[..., : image_size[0], : image_size[1]].clamp(0, 1)
