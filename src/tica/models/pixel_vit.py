"""The accuracy-ceiling baseline: the same Vision Transformer with a patchify stem on pixels."""

from __future__ import annotations

import torch
from torch import nn

from .. import cost
from ..config import ModelConfig
from ..errors import ConfigError
from ..io import WeightsInfo
from .codec import pad_to
from .vit import PatchTokens, VisionTransformer


class PixelViT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tokens = PatchTokens(c.patch_size, c.embed_dim)
        self.vit = VisionTransformer(c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                                     c.drop_path, c.num_classes, c.latent_grid, c.distill_token)
        self.weights_info = WeightsInfo()       # what its checkpoint says (tica.checkpoint)

    def forward(self, x: torch.Tensor) -> dict:
        """{"logits"}, and "logits_dist" with a distillation token ("logits": the class
        head's alone)."""
        logits, dist = self.vit.forward_heads(self._features(x))
        return {"logits": logits} if dist is None else {"logits": logits, "logits_dist": dist}

    def classify_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self._features(x))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(pad_to(x, self.config.patch_size))
        return self.vit.forward_features(tokens, grid)

    operations = ("classify",)

    def cost(self, image_size: tuple[int, int], op: str) -> float:
        """Estimated GFLOP of classifying one image of (H, W) from its pixels (tica.cost)."""
        if op not in self.operations:
            raise ConfigError(f"{self.config.name} works on pixels: it can only classify")
        c, p = self.config, self.config.patch_size
        grid = (-(-image_size[0] // p), -(-image_size[1] // p))
        flops = (cost.conv_flops(grid[0] * grid[1], 3, c.embed_dim, p)
                 + cost.windowed_vit_flops(self.vit, grid, c, c.depth, classify=True))
        return (flops + 2.0 * c.embed_dim * c.num_classes * self.vit.prefix) / 1e9  # heads
