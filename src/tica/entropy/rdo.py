"""Rate-distortion optimised rounding: the encoder's choice of y's symbols, decoded by
every decoder as it is (the stream format does not change).

Rounding y - mu to the nearest integer minimises the error, not the cost: where the
predicted scale is small, a symbol of +-1 can cost many bits for a small gain in fidelity.
`rd_round` takes one step toward zero wherever that lowers bits + lam * (squared error
in symbol units), with the bits those exact symbols cost in their coding tables. With the
variable-rate gain applied, one symbol step is the quantisation step at every quality, so
one `lam` serves the whole curve; its value is chosen by measurement (docs/design.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .coder import CodingTables

DEFAULT_LAMBDA: float | None = None     # plain rounding unless a trial shows a gain


def rd_round(residual: torch.Tensor, index: np.ndarray, tables: CodingTables,
             lam: float | None) -> torch.Tensor:
    """round(residual) (y - mu, in symbol units), except that a nonzero symbol moves one
    step toward zero where bits + lam * (residual - symbol)^2 is lower there. `index`:
    each symbol's table (same shape); lam None: plain rounding."""
    nearest = torch.round(residual)
    if lam is None:
        return nearest
    r = residual.detach().cpu().double().numpy()
    near = nearest.detach().cpu().numpy().astype(np.int64)
    toward = near - np.sign(near)
    cost_near = tables.bits(index, near) + lam * (r - near) ** 2
    cost_toward = tables.bits(index, toward) + lam * (r - toward) ** 2
    take = (near != 0) & np.isfinite(cost_near) & (cost_toward < cost_near)
    return torch.from_numpy(np.where(take, toward, near).astype(np.float32)).to(
        nearest.device, nearest.dtype)
