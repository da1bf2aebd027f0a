"""Feature aggregation module (Bai et al., 2022, Sec. 3.3).

Sources are the projected compressed tokens (before position embedding) and the outputs of
chosen Transformer blocks, class token dropped. Each source gets its own Linear(D -> D/k);
the k results are concatenated and mixed by Linear(-> D); the tokens are laid back onto
the latent grid as a D x h x w map for the decoder g_s.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureAggregation(nn.Module):
    def __init__(self, dim: int, num_sources: int) -> None:
        super().__init__()
        part = max(dim // num_sources, 1)
        self.reduce = nn.ModuleList(nn.Linear(dim, part) for _ in range(num_sources))
        self.mix = nn.Linear(part * num_sources, dim)

    def forward(self, sources: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """sources: k tensors (B, h*w, D) without class token -> (B, D, h, w)."""
        if len(sources) != len(self.reduce):
            raise ValueError(f"FAM expects {len(self.reduce)} sources, got {len(sources)}")
        x = torch.cat([f(s) for f, s in zip(self.reduce, sources)], dim=-1)
        x = self.mix(x)                                            # (B, h*w, D)
        B, _, D = x.shape
        return x.transpose(1, 2).reshape(B, D, *grid)
