"""Small differentiable helpers shared by the entropy models."""

from __future__ import annotations

import torch


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would raise x above the bound,
    so a parameter stuck under the bound can recover (Ballé et al.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def quantize(x: torch.Tensor, mode: str, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The rounding of x - offset, or its training proxies.

    "noise": x + U(-1/2, 1/2), the density-estimation proxy; "ste": rounded forward,
    identity gradient; "round": plain rounding. Rounding is relative to `offset` (the
    predicted mean), which is how the decoder rebuilds x from symbols.
    """
    if mode == "noise":
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    shifted = x - offset if offset is not None else x
    rounded = torch.round(shifted)
    if offset is not None:
        rounded = rounded + offset
    if mode == "ste":
        return x + (rounded - x).detach()
    if mode == "round":
        return rounded
    raise ValueError(f"unknown quantization mode {mode!r}")
