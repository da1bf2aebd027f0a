"""The "codec then classifier" baseline's codec: tica's codec with g_s on the latent, no ViT
(a mean-scale hyperprior model, Minnen et al., 2018)."""

from __future__ import annotations

import torch

from .. import cost
from ..config import ModelConfig
from ..nn.bands import run_in_bands
from ..nn.conv import nhwc, synthesis
from .codec import CompressionModel


class HyperpriorCodec(CompressionModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        self.g_s = synthesis(c.stages, c.M, c.N, 3, c.act, c.res_blocks)

    def forward(self, x: torch.Tensor, entropy: bool = True,
                quality: float | torch.Tensor | None = None) -> dict:
        y_hat, likelihoods = self.encode_latent(x, entropy, quality)
        return {**self.decode_latent(y_hat, tuple(x.shape[-2:])), "likelihoods": likelihoods}

    def decode_latent(self, y_hat: torch.Tensor, image_size: tuple[int, int]) -> dict:
        """y_hat -> {"x_hat"}, differentiable and not clamped (training, refinement)."""
        return {"x_hat": self._synthesize(y_hat, image_size)}

    def _synthesize(self, y_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return run_in_bands(self.g_s, nhwc(y_hat), label="g_s")[..., : size[0], : size[1]]

    def reconstruct_latent(self, y_hat: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return self._synthesize(y_hat, image_size).clamp_(0, 1)

    def _latent_flops(self, op: str, grid: tuple[int, int]) -> float:
        return cost.synthesis_flops(self.config, self.config.M, grid)      # reconstruct: g_s
