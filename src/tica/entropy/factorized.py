"""Learned factorized density for the hyper-latent z ("entropy bottleneck", Ballé et al.,
"Variational image compression with a scale hyperprior", ICLR 2018, appendix 6.1)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._ops import lower_bound, quantize
from .coder import TableOwner, quantize_pmf

MAX_TABLE = 4096            # widest support a channel table may have


class EntropyBottleneck(TableOwner):
    """Per-channel univariate density p(z_c), a monotone cumulative built from small
    matrices (filters 1 -> 3 -> 3 -> 3 -> 1). `quantiles` are learned by `aux_loss` so
    that [q_low, q_high] hold all but `tail_mass` of each channel's mass; the coding
    table spans that range."""

    def __init__(self, channels: int, tail_mass: float = 1e-9, init_scale: float = 10.0,
                 filters: tuple[int, ...] = (3, 3, 3)) -> None:
        super().__init__()
        self.channels = channels
        self.tail_mass = tail_mass
        dims = (1,) + tuple(filters) + (1,)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.empty(channels, 1, 3))
        with torch.no_grad():           # in place: on the meta device, repeat() imports sympy
            start = torch.tensor([-init_scale, 0.0, init_scale])
            self.quantiles.copy_(start.expand(channels, 1, 3))
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)

    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """x: (C, 1, n) -> logits of the cumulative distribution at x, (C, 1, n)."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            x = torch.matmul(F.softplus(matrix), x) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                x = x + torch.tanh(factor) * torch.tanh(x)
        return x

    def _likelihood_flat(self, v: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        lower = self._logits_cumulative(v - 0.5, stop_gradient)
        upper = self._logits_cumulative(v + 0.5, stop_gradient)
        sign = -torch.sign(lower + upper).detach()    # evaluate in the numerically safe tail
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def forward(self, z: torch.Tensor, mode: str = "noise") -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, C, h, w) -> (z_hat, likelihoods), both (B, C, h, w)."""
        z_hat = quantize(z.float(), mode)
        return z_hat, self.likelihood(z_hat)

    def likelihood(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The density's likelihood of each value of z_hat (B, C, h, w), differentiable in
        z_hat (the encoder's refinement passes straight-through rounded values)."""
        flat = z_hat.permute(1, 0, 2, 3).reshape(self.channels, 1, -1)   # (C, 1, B*h*w)
        with torch.autocast(z_hat.device.type, enabled=False):          # rates need fp32
            lik = self._likelihood_flat(flat)
        lik = lower_bound(lik, 1e-9)
        return lik.reshape(self.channels, z_hat.shape[0], *z_hat.shape[2:]).permute(1, 0, 2, 3)

    def aux_loss(self) -> torch.Tensor:
        """Pulls `quantiles` to the tail_mass/2, median and 1-tail_mass/2 points."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def fit_quantiles(self, iterations: int = 60) -> None:
        """Set `quantiles` to the tail_mass/2, median and 1 - tail_mass/2 points of the
        learned CDF by bisection (as CompressAI's PR #231 does), whatever the auxiliary loss
        reached: the coding tables then hold all but tail_mass of each channel's mass."""
        C = self.channels
        low = torch.full((C, 1, 3), -float(MAX_TABLE), dtype=torch.float64)
        high = torch.full((C, 1, 3), float(MAX_TABLE), dtype=torch.float64)
        target = self.target.detach().double().view(1, 1, 3)
        params = [p.detach().double() for p in (*self.matrices, *self.biases, *self.factors)]
        n = len(self.matrices)
        matrices, biases, factors = params[:n], params[n:2 * n], params[2 * n:]
        for _ in range(iterations):
            mid = (low + high) / 2
            x = mid
            for i, (matrix, bias) in enumerate(zip(matrices, biases)):
                x = torch.matmul(F.softplus(matrix), x) + bias
                if i < len(factors):
                    x = x + torch.tanh(factors[i]) * torch.tanh(x)
            above = x > target                     # the CDF is monotone in its argument
            high = torch.where(above, mid, high)
            low = torch.where(above, low, mid)
        self.quantiles.copy_(((low + high) / 2).to(self.quantiles.dtype))

    @torch.no_grad()
    def update(self, refit: bool = True) -> None:
        """Build the integer coding tables: one per channel over [floor(q_low), ceil(q_high)].
        `refit` first sets the quantiles from the learned CDF (fit_quantiles)."""
        if refit:
            self.fit_quantiles()
        q = self.quantiles.detach().double()
        low = torch.floor(q[:, 0, 0]).clamp(-MAX_TABLE // 2, MAX_TABLE // 2)
        high = torch.ceil(q[:, 0, 2]).clamp(-MAX_TABLE // 2, MAX_TABLE // 2)
        high = torch.maximum(high, low)
        lengths = (high - low + 1).long()
        width = int(lengths.max())
        grid = low[:, None, None] + torch.arange(width, dtype=torch.float64)   # (C, 1, width)
        pmf = self._likelihood_flat(grid.to(self.quantiles.dtype), stop_gradient=True)
        pmf = pmf.double().squeeze(1).cpu().numpy()
        freqs = np.zeros((self.channels, width + 1), np.int64)
        for c in range(self.channels):
            n = int(lengths[c])
            freqs[c, : n + 1] = quantize_pmf(pmf[c, :n], 1.0 - float(pmf[c, :n].sum()))
        self._set_tables(freqs, lengths, low)
