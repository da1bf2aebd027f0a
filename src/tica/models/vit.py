"""The Vision Transformer shared by tica and the pixel baseline, split timm-style into
`forward_features` -> `forward_head`, with `forward_intermediates` for the FAM. Tokens come
from a stem outside this class: `LatentTokens` (compressed latent) or `PatchTokens` (pixels).

Grids larger than the trained one. Global attention costs the square of the token count: a
1024x1024 image is 65,536 tokens for tica-cifar. Once attention would cost more than
`ATTENTION_SHARE` times the rest of the blocks, it runs in windows of the trained grid
(`window_origins`): each window is a sequence of its own, with its own class token and the
trained position embedding, the input the model was trained on; the windows' class tokens
are averaged for the head, and each patch token comes from one window (the last that holds
it). The work is then linear in the area. Windows leave the decoded picture as it was (within
0.01 dB) but cost classification 4-6 points of top-1 on grids 4-16x the trained one, so they
start only where global attention dominates the cost (docs/design.md, "Large token grids").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import Block

# "auto" keeps global attention while it costs at most this many times the rest of a block:
# on n tokens of width D with MLP ratio r, attention is 4 n^2 D FLOPs and the linear layers
# 2 n (4 + 2r) D^2, so up to n = ATTENTION_SHARE (2 + r) D tokens (4,608 for D 192, r 4;
# 3,072 for D 128).
ATTENTION_SHARE = 4.0
# "pool": classification average-pools a larger grid to the trained one (reconstruction, which
# needs every token, uses windows); "auto" never pools (it lost most on Imagenette).
ATTENTION_MODES = ("auto", "global", "window", "pool")


def window_origins(n: int, size: int) -> list[int]:
    """Start of each window of `size` along an axis of `n` tokens: every token is covered, the
    last window is moved back to end on the border (so it may overlap its neighbour)."""
    count = -(-n // size)
    return [min(i * size, n - size) for i in range(count)]


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
    """The blocks over [class token, (distillation token,) patch tokens] + position.

    With `distill_token` (DeiT, Touvron et al. 2021) a second prefix token has a head of its
    own, `head_dist`, trained on a teacher's labels; `forward_heads` gives both heads' logits
    for training, and a prediction (`forward_head`) is their mean."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 drop_path: float, num_classes: int, grid: tuple[int, int],
                 distill_token: bool = False) -> None:
        super().__init__()
        self.grid = grid
        self.attention = "auto"                      # one of ATTENTION_MODES; not a weight
        self.global_limit = int(ATTENTION_SHARE * (2 + mlp_ratio) * dim)   # tokens, "auto"
        self.prefix = 2 if distill_token else 1      # tokens before the patch tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distill_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix + grid[0] * grid[1], dim))
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()   # not on meta
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill_token else None
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        self.apply(_init_weights)

    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding for a token grid, bicubically resized from the trained grid."""
        if grid == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :self.prefix], self.pos_embed[:, self.prefix:]
        D = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, *self.grid, D).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def _prepare(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        first = [t.expand(tokens.shape[0], -1, -1) for t in (self.cls_token, self.dist_token)
                 if t is not None]
        return torch.cat([*first, tokens], dim=1) + self._pos(grid)    # (B, prefix+N, D)

    def window(self, grid: tuple[int, int]) -> tuple[int, int] | None:
        """The window attention runs in on `grid`, or None for global attention."""
        if self.attention == "global":
            return None
        window = (min(grid[0], self.grid[0]), min(grid[1], self.grid[1]))
        if window == tuple(grid):
            return None
        if self.attention == "auto" and grid[0] * grid[1] <= self.global_limit:
            return None
        return window

    def sequences(self, grid: tuple[int, int], classify: bool = False) -> tuple[int, int]:
        """(how many sequences, tokens in each, prefix tokens included) for one image's grid:
        what the blocks cost (tica.cost.vit_flops per sequence)."""
        window = self.window(grid)
        if classify and self.pooled(grid):
            return 1, self.prefix + window[0] * window[1]
        if window is None:
            return 1, self.prefix + grid[0] * grid[1]
        count = len(window_origins(grid[0], window[0])) * len(window_origins(grid[1], window[1]))
        return count, self.prefix + window[0] * window[1]

    def pooled(self, grid: tuple[int, int]) -> bool:
        """Whether classification pools `grid` down to the trained grid ("pool" mode only)."""
        return self.attention == "pool" and self.window(grid) is not None

    def forward_features(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.pooled(grid):
            B, _, D = tokens.shape
            x = tokens.transpose(1, 2).reshape(B, D, *grid)
            size = self.window(grid)
            tokens, grid = F.adaptive_avg_pool2d(x, size).flatten(2).transpose(1, 2), size
        feats, _ = self.forward_intermediates(tokens, grid, ())
        return feats

    def forward_intermediates(self, tokens: torch.Tensor, grid: tuple[int, int],
                              indices: tuple[int, ...], stop_early: bool = False
                              ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Final normed features and the outputs (prefix tokens dropped, (B, N, D)) of the
        blocks in `indices` (1-based). With stop_early, stops after the last needed block
        and returns None for the features."""
        window = self.window(grid)
        if window is None:
            return self._run(tokens, grid, indices, stop_early)
        windows = _Windows(grid, window)
        feats, taken = self._run(windows.split(tokens), window, indices, stop_early)
        if feats is not None:
            feats = windows.merge(feats, prefix=self.prefix)
        return feats, [windows.merge(t) for t in taken]

    def _run(self, tokens: torch.Tensor, grid: tuple[int, int], indices: tuple[int, ...],
             stop_early: bool) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        x = self._prepare(tokens, grid)
        wanted, taken = set(indices), []
        last = max(indices) if (stop_early and indices) else len(self.blocks)
        for i, block in enumerate(self.blocks[:last], start=1):
            x = block(x)
            if i in wanted:
                taken.append(x[:, self.prefix:])
        return (None if stop_early else self.norm(x)), taken

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The class head's logits and the distillation head's (None without the token),
        from the features (B, prefix+N, D): what training reads."""
        logits = self.head(x[:, 0])
        return logits, (self.head_dist(x[:, 1]) if self.head_dist is not None else None)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (with a distillation token, the mean of the two heads', as DeiT predicts);
        pre_logits: the prefix tokens' mean feature (B, D)."""
        if pre_logits:
            return x[:, :self.prefix].mean(1)
        logits, dist = self.forward_heads(x)
        return logits if dist is None else (logits + dist) / 2


def with_distill_token(state: dict[str, torch.Tensor], prefix: str = "vit."
                       ) -> dict[str, torch.Tensor]:
    """A trained ViT's state (keys under `prefix`, no distillation token) with one added
    the way it can continue training: the token, its position and its head start as copies
    of the class token's, so the model starts near the trained one (the copy takes a second
    share of attention: the shipped tica-cifar's logits moved by at most 0.08 on 64 random
    images at q4)."""
    out = dict(state)
    pos = state[prefix + "pos_embed"]                               # (1, 1+N, D)
    out[prefix + "pos_embed"] = torch.cat([pos[:, :1], pos], dim=1)  # (1, 2+N, D)
    out[prefix + "dist_token"] = state[prefix + "cls_token"].clone()
    for name in ("weight", "bias"):
        out[f"{prefix}head_dist.{name}"] = state[f"{prefix}head.{name}"].clone()
    return out


class _Windows:
    """Cuts a batch of token grids into windows (one sequence each) and lays them back."""

    def __init__(self, grid: tuple[int, int], window: tuple[int, int]) -> None:
        self.grid, self.window = grid, window
        self.origins = [(y, x) for y in window_origins(grid[0], window[0])
                        for x in window_origins(grid[1], window[1])]

    def split(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h*w, D) -> (B * windows, wh*ww, D), window-major within each image."""
        B, _, D = tokens.shape
        (wh, ww), x = self.window, tokens.reshape(B, *self.grid, D)
        parts = [x[:, y:y + wh, c:c + ww] for y, c in self.origins]
        return torch.stack(parts, dim=1).reshape(B * len(parts), wh * ww, D)

    def merge(self, x: torch.Tensor, prefix: int = 0) -> torch.Tensor:
        """(B * windows, prefix + wh*ww, D) -> (B, prefix + h*w, D): later windows overwrite
        the tokens they share with earlier ones; each prefix token is the windows' mean."""
        n, (wh, ww) = len(self.origins), self.window
        x = x.reshape(-1, n, *x.shape[1:])                          # (B, n, prefix+L, D)
        cls, x = (x[:, :, :prefix], x[:, :, prefix:]) if prefix else (None, x)
        B, D = x.shape[0], x.shape[-1]
        out = x.new_empty(B, *self.grid, D)
        for i, (y, c) in enumerate(self.origins):
            out[:, y:y + wh, c:c + ww] = x[:, i].reshape(B, wh, ww, D)
        out = out.reshape(B, -1, D)
        return out if cls is None else torch.cat([cls.mean(dim=1), out], dim=1)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
