"""Where a quality sits between a variable-rate model's standard points."""

from __future__ import annotations

import torch


def between_points(quality: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quality (B,) -> (the standard point at or below each, 0-based, at most levels - 2;
    how far it is from there to the next, in [0, 1]): where a quality reads the log-linear
    interpolation between a variable-rate model's points (its gains, its rate weights).
    Qualities outside [1, levels] read the end points."""
    q = quality.clamp(1, levels) - 1
    low = q.floor().clamp(max=levels - 2).long()
    return low, q - low
