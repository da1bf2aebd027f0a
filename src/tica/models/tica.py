"""tica: the codec of `CompressionModel`, a Vision Transformer that classifies straight from
the quantized latent, and a decoder fed by the feature aggregation module.

    y_hat (B, M, h, w) -> Linear(M->D) tokens -> [cls] + pos -> blocks -> norm -> head -> logits
                             |                         | outputs of fam_blocks
                             +----------- FAM ---------+-> (B, D, h, w) -> g_s -> x_hat

Bai et al., "Towards End-to-End Image Compression and Analysis with Transformers", AAAI 2022.
With `fam=False` the decoder reads y_hat directly (the ablation of SPEC 5).
"""

from __future__ import annotations

import torch

from .. import cost
from ..config import ModelConfig
from ..nn.bands import run_in_bands
from ..nn.conv import nhwc, synthesis
from ..nn.fam import FeatureAggregation
from .codec import CompressionModel
from .vit import LatentTokens, VisionTransformer


class TicaModel(CompressionModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        self.tokens = LatentTokens(c.M, c.embed_dim)
        self.vit = VisionTransformer(c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                                     c.drop_path, c.num_classes, c.latent_grid, c.distill_token)
        self.fam = FeatureAggregation(c.embed_dim, 1 + len(c.fam_blocks)) if c.fam else None
        self.g_s = synthesis(c.stages, c.embed_dim if c.fam else c.M, c.N, 3, c.act, c.res_blocks)

    operations = ("encode", "decompress", "classify", "reconstruct")

    def _latent_flops(self, op: str, grid: tuple[int, int]) -> float:
        """classify: tokens, every block, the head; reconstruct: tokens, the blocks the FAM
        reads, the FAM (one Linear per source, then the mix) and g_s."""
        c, tokens = self.config, grid[0] * grid[1]
        flops = 2.0 * tokens * c.M * c.embed_dim                          # LatentTokens.proj
        if op == "classify":
            blocks = cost.windowed_vit_flops(self.vit, grid, c, c.depth, classify=True)
            return flops + blocks + 2.0 * c.embed_dim * c.num_classes * self.vit.prefix  # heads
        blocks = max(self._fam_blocks) if self._fam_blocks else c.depth   # as forward_intermediates
        if self.fam is not None:
            sources = 1 + len(c.fam_blocks)
            part = max(c.embed_dim // sources, 1)
            flops += 2.0 * tokens * (sources * c.embed_dim * part + sources * part * c.embed_dim)
        width = c.embed_dim if c.fam else c.M
        return (flops + cost.windowed_vit_flops(self.vit, grid, c, blocks)
                + cost.synthesis_flops(c, width, grid))

    @property
    def _fam_blocks(self) -> tuple[int, ...]:
        return self.config.fam_blocks if self.fam is not None else ()

    def _synthesize(self, y_hat: torch.Tensor, tokens: torch.Tensor,
                    intermediates: list[torch.Tensor], grid: tuple[int, int],
                    size: tuple[int, int]) -> torch.Tensor:
        source = self.fam([tokens] + intermediates, grid) if self.fam is not None else y_hat
        return run_in_bands(self.g_s, nhwc(source), label="g_s")[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor, entropy: bool = True,
                quality: float | torch.Tensor | None = None) -> dict:
        """Training/eval pass: {"logits", "x_hat", "likelihoods"} (likelihoods None in step 1),
        and "logits_dist" with a distillation token ("logits": the class head's alone)."""
        y_hat, likelihoods = self.encode_latent(x, entropy, quality)
        return {**self.decode_latent(y_hat, tuple(x.shape[-2:])), "likelihoods": likelihoods}

    def decode_latent(self, y_hat: torch.Tensor, image_size: tuple[int, int]) -> dict:
        """y_hat -> {"logits", "x_hat"} (and "logits_dist" with a distillation token),
        differentiable: what training and the encoder's refinement (tica.models.refine)
        score; x_hat is not clamped."""
        tokens, grid = self.tokens(y_hat)
        feats, inter = self.vit.forward_intermediates(tokens, grid, self._fam_blocks)
        x_hat = self._synthesize(y_hat, tokens, inter, grid, image_size)
        logits, dist = self.vit.forward_heads(feats)
        out = {"logits": logits, "x_hat": x_hat}
        return out if dist is None else {**out, "logits_dist": dist}

    def classify_latent(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Logits from the quantized latent: entropy decoder + ViT only, never g_s."""
        tokens, grid = self.tokens(y_hat)
        return self.vit.forward_head(self.vit.forward_features(tokens, grid))

    def reconstruct_latent(self, y_hat: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1] from the quantized latent; runs only the ViT blocks
        the FAM reads."""
        tokens, grid = self.tokens(y_hat)
        _, inter = self.vit.forward_intermediates(tokens, grid, self._fam_blocks, stop_early=True)
        return self._synthesize(y_hat, tokens, inter, grid, image_size).clamp_(0, 1)
