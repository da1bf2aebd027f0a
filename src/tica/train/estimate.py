"""The quick in-training score on held-out images (estimated bpp; `tica eval` measures real
bitstreams)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..losses import rda_loss
from ..models import CompressionModel


@torch.no_grad()
def evaluate_estimate(model: nn.Module, split, cfg: TrainConfig, batch: int = 250) -> dict:
    """Quick in-training score on held-out images: top-1, PSNR and the *estimated* bpp of
    the eval-mode forward (rounded latents). `tica eval` measures real bitstreams. A
    variable-rate model is scored at its lowest and highest standard points (`q1/...`)."""
    levels = model.config.rate_levels if isinstance(model, CompressionModel) and cfg.step == 2 else 0
    if not levels:
        return _estimate_at(model, split, cfg, batch, None)
    result = {}
    for q in (1, levels):
        result.update({f"q{q}/{k}": v for k, v in _estimate_at(model, split, cfg, batch, q).items()})
    return result


def _estimate_at(model: nn.Module, split, cfg: TrainConfig, batch: int, quality) -> dict:
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    device = next(model.parameters()).device
    for start in range(0, len(split), batch):
        x = split.images[start:start + batch].float().div(255).to(device)
        y = split.labels[start:start + batch].to(device)
        if isinstance(model, CompressionModel):
            out = model(x, entropy=cfg.step == 2, quality=quality)
        else:
            out = model(x)
        terms = rda_loss(out, x, y, 1.0, 1.0)
        for k in ("acc", "psnr", "bpp", "mse"):
            if k in terms:
                sums[k] = sums.get(k, 0.0) + float(terms[k]) * len(y)
    model.train(was_training)
    result = {k: v / len(split) for k, v in sums.items()}
    if "mse" in result:
        result["psnr_of_mean_mse"] = float(10 * torch.log10(torch.tensor(255.0 ** 2 / result["mse"])))
    return result
