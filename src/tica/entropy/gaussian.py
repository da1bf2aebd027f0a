"""Gaussian conditional for the latent y: p(y | mu, sigma) = N(mu, sigma^2) convolved with
U(-1/2, 1/2) (Minnen et al., 2018 mean-scale hyperprior)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._ops import lower_bound
from .coder import TableOwner, quantize_pmf


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


class GaussianConditional(TableOwner):
    """Likelihoods for training and, after `update()`, one integer coding table per entry of
    the scale table exp(linspace(log scale_min, log scale_max, levels)).

    A symbol's table is chosen by comparing its (exact, integer-derived) scale with the
    geometric midpoints between table entries: the nearest entry in log scale.
    """

    def __init__(self, scale_min: float = 0.11, scale_max: float = 256.0, levels: int = 64,
                 tail_mass: float = 1e-9) -> None:
        super().__init__()
        self.scale_min = scale_min
        self.tail_mass = tail_mass
        # on the CPU even while a model is built on the meta device (a few hundred values;
        # math on meta tensors imports torch's compiler: seconds of a command's start)
        table = torch.exp(torch.linspace(math.log(scale_min), math.log(scale_max), levels,
                                         dtype=torch.float64, device="cpu"))
        self.register_buffer("scale_table", table, persistent=False)
        self.register_buffer("scale_bounds", (table[1:] * table[:-1]).sqrt(), persistent=False)

    def likelihood(self, y_hat: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
                   ) -> torch.Tensor:
        with torch.autocast(y_hat.device.type, enabled=False):          # rates need fp32
            scales = lower_bound(scales.float(), self.scale_min)
            v = torch.abs(y_hat.float() - means.float())  # symmetric: use the safe tail
            upper = _std_normal_cdf((0.5 - v) / scales)
            lower = _std_normal_cdf((-0.5 - v) / scales)
            return lower_bound(upper - lower, 1e-9)

    def indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Table index of each scale (int64): exact comparisons, so pass exact scales."""
        return torch.bucketize(scales.double().contiguous(), self.scale_bounds.to(scales.device))

    @torch.no_grad()
    def update(self) -> None:
        multiplier = -torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64))
        radius = torch.ceil(self.scale_table.cpu() * multiplier).long()        # (T,)
        lengths = 2 * radius + 1
        width = int(lengths.max())
        freqs = np.zeros((len(radius), width + 1), np.int64)
        for t, (s, r) in enumerate(zip(self.scale_table.cpu().tolist(), radius.tolist())):
            v = torch.arange(-r, r + 1, dtype=torch.float64)
            pmf = _std_normal_cdf((v + 0.5) / s) - _std_normal_cdf((v - 0.5) / s)
            tail = 2 * float(_std_normal_cdf(torch.tensor((-r - 0.5) / s, dtype=torch.float64)))
            freqs[t, : 2 * r + 2] = quantize_pmf(pmf.numpy(), tail)
        self._set_tables(freqs, lengths, -radius)
