"""The accuracy-ceiling baseline: the same Vision Transformer with a patchify stem on pixels."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .codec import pad_to
from .vit import PatchTokens, VisionTransformer


class PixelViT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tokens = PatchTokens(c.patch_size, c.embed_dim)
        self.vit = VisionTransformer(c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                                     c.drop_path, c.num_classes, c.latent_grid)

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.classify_pixels(x)}

    def classify_pixels(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(pad_to(x, self.config.patch_size))
        return self.vit.forward_head(self.vit.forward_features(tokens, grid))
