"""The Vision Transformer shared by tica and the pixel baseline, split timm-style into
`forward_features` -> `forward_head`, with `forward_intermediates` for the FAM. Tokens come
from a stem outside this class: `LatentTokens` (compressed latent) or `PatchTokens` (pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import Block


class LatentTokens(nn.Module):
    """y_hat (B, M, h, w) -> tokens (B, h*w, D): the paper's replacement of patchify."""

    def __init__(self, latent_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(latent_channels, dim)

    def forward(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = (y_hat.shape[2], y_hat.shape[3])
        return self.proj(y_hat.flatten(2).transpose(1, 2)), grid


class PatchTokens(nn.Module):
    """x (B, 3, H, W) -> tokens (B, H/p * W/p, D), the standard ViT stem."""

    def __init__(self, patch: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)                                           # (B, D, h, w)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class VisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, num_classes: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding for a token grid, bicubically resized from the trained grid."""
        if grid == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        D = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, *self.grid, D).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def _prepare(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self._pos(grid)    # (B, 1+N, D)

    def forward_features(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self._prepare(tokens, grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_intermediates(self, tokens: torch.Tensor, grid: tuple[int, int],
                              indices: tuple[int, ...], stop_early: bool = False
                              ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Final normed features and the outputs (class token dropped, (B, N, D)) of the
        blocks in `indices` (1-based). With stop_early, stops after the last needed block
        and returns None for the features."""
        x = self._prepare(tokens, grid)
        wanted, taken = set(indices), []
        last = max(indices) if (stop_early and indices) else len(self.blocks)
        for i, block in enumerate(self.blocks[:last], start=1):
            x = block(x)
            if i in wanted:
                taken.append(x[:, 1:])
        return (None if stop_early else self.norm(x)), taken

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]                                                 # class token
        return x if pre_logits else self.head(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
