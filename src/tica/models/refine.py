"""Encoder-side latent refinement: an encoder that spends more time writes a better stream
for the same decoder.

g_a and h_a predict y and z in one pass (amortized inference); the latents that minimise the
model's own objective for one image lie a little elsewhere (the amortization gap: Campos et
al., "Content adaptive optimization for neural image compression", 2019; Yang, Bamler and
Mandt, "Improving inference for neural image compression", NeurIPS 2020). Refinement starts
from g_a's y and h_a's z and takes `steps` Adam steps on them, for each image, on the
objective the model was trained on at the quality it is coded at:

    bits(round(y - mu) + mu, round(z)) / pixels + beta * MSE(x_hat, x) (0-255)
        + alpha * KL(what the plain latents predict || what these predict)

with straight-through rounding (the rates are the likelihoods of the values the coder will
write) and the float h_s's scales and means; (alpha, beta) are the training weights of the
rate point (`WeightsInfo.rate_points`, log-linear between points). The classification term
is zero at the start and only holds what the plain latents predict (a cross-entropy on their
class would buy confidence with bits: docs/design.md). The iterate with the lowest objective is kept
(the plain one included): refinement never does worse by the model's own estimate.

Only the encoder changes: the stream is an ordinary stream of the same version, every
decoder reads it, and the integer h_s still gives the tables and means (exact decoding).
It costs about `steps` times three of a reconstruction (forward and backward), and the
memory of a training step on the whole image: `MAX_PIXELS` bounds the image it runs on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..entropy import quantize
from ..entropy.payload import Z_LIMIT
from ..errors import LimitError, TicaError
from ..nn.conv import nhwc
from ..nn.bands import pad_to
from .points import between_points

LEARNING_RATE = 0.01    # Adam, on the gained y and on z (units of one quantization step)
# a whole image's graph is held: a 768x512 photograph adds about 0.43 GB with tica-photo
# (1.1 kB a pixel), so 4 Mpixel about 4.5 GB
MAX_PIXELS = 2048 * 2048


def rate_point(codec, quality: float | None) -> tuple[float, float]:
    """(alpha, beta) the model was trained with at `quality` (log-linear between its standard
    points; a fixed-rate model's own pair). TicaError if its weights do not say."""
    info = codec.weights_info
    if quality is None or not codec.config.rate_levels:
        if info.alpha is None or info.beta is None:
            raise TicaError(f"{codec.config.name}'s weights do not say what they were trained "
                            "on (alpha, beta): refinement needs it")
        return float(info.alpha), float(info.beta)
    points = info.rate_points
    if not points or len(points) != codec.config.rate_levels:
        raise TicaError(f"{codec.config.name}'s weights do not list their rate points "
                        "(alpha, beta at each quality): refinement needs them")
    if len(points) == 1:
        return float(points[0][0]), float(points[0][1])
    low, t = between_points(torch.tensor([float(quality)], dtype=torch.float64), len(points))
    low, t = int(low), float(t)

    def between(a: float, b: float) -> float:     # log-linear, as the gains interpolate
        if a > 0 and b > 0:
            return math.exp((1 - t) * math.log(a) + t * math.log(b))
        return (1 - t) * a + t * b

    (a0, b0), (a1, b1) = points[low], points[low + 1]
    return between(a0, a1), between(b0, b1)


class _Objective:
    """Each image's objective (B,) at latents (y, z) (the module docstring's), for images x
    at one quality; the first call fixes what the classification term keeps (what the
    plain latents predict, each head)."""

    def __init__(self, codec, x: torch.Tensor, quality: float | None, gain, inv_gain) -> None:
        self.codec, self.x, self.gain, self.inv_gain = codec, x, gain, inv_gain
        self.alpha, self.beta = rate_point(codec, quality)
        self.kept: list[torch.Tensor] | None = None

    def __call__(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        codec, x, gain = self.codec, self.x, self.gain
        size = tuple(x.shape[-2:])
        z_hat = quantize(z.clamp(-Z_LIMIT, Z_LIMIT), "ste")
        scales, means = codec.hyper_synthesis(z_hat).float().chunk(2, dim=1)
        if codec.config.entropy_gain and gain is not None:
            scales, means = scales * gain, means * gain
        y_hat = quantize(y, "ste", means)
        bits = (codec.gaussian_conditional.likelihood(y_hat, scales, means).log2().flatten(1)
                .sum(1) + codec.entropy_bottleneck.likelihood(z_hat).log2().flatten(1).sum(1))
        out = codec.decode_latent(y_hat if self.inv_gain is None else y_hat * self.inv_gain,
                                  size)
        loss = -bits / (size[0] * size[1])
        if self.beta:
            error = (out["x_hat"].float() - x.float()).mul(255)
            loss = loss + self.beta * error.square().flatten(1).mean(1)
        if self.alpha and "logits" in out:
            heads = [out["logits"]] + ([out["logits_dist"]]
                                       if out.get("logits_dist") is not None else [])
            log_p = [F.log_softmax(h.float(), 1) for h in heads]
            if self.kept is None:
                self.kept = [p.detach() for p in log_p]
            loss = loss + self.alpha * sum(
                F.kl_div(p, t, reduction="none", log_target=True).sum(1)
                for p, t in zip(log_p, self.kept)) / len(heads)
        return loss


def check_steps(steps: int, sizes) -> None:
    """TicaError for negative steps; LimitError if `steps` > 0 and an image of `sizes`
    ((H, W) each) is over MAX_PIXELS. Before any work: the API and the server ask it first."""
    if steps < 0:
        raise TicaError(f"refinement steps must be >= 0, got {steps}")
    for h, w in sizes if steps else ():
        if h * w > MAX_PIXELS:
            raise LimitError(f"refinement holds a whole image's training graph: {w}x{h} is "
                             f"over its {MAX_PIXELS:,} pixels; encode it without refinement")


def refine(codec, x: torch.Tensor, quality: float | None, steps: int,
           lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 3, H, W) in [0, 1] on the model's device -> (the gained y to code, z as floats),
    refined by `steps` Adam steps (module docstring) at `lr` (default LEARNING_RATE, read
    at the call). The caller rounds z (clamp_z) and codes y against the integer h_s's means,
    as for the plain latents."""
    lr = LEARNING_RATE if lr is None else lr
    check_steps(steps, [tuple(x.shape[-2:])])
    with torch.no_grad():
        gain, inv_gain = codec.gain_pair(quality, x.shape[0])
        objective = _Objective(codec, x, quality, gain, inv_gain)    # refuses unknown weights
        y = codec.g_a(nhwc(pad_to(x, codec.config.stride))).float()
        z = codec.h_a(codec.hyper_input(y, gain)).float()
        y = codec._gained(y, gain)
    if steps == 0:
        return y, z
    y, z = y.clone().requires_grad_(True), z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y, z], lr=lr)
    best_y, best_z = y.detach().clone(), z.detach().clone()
    best_loss = torch.full((x.shape[0],), math.inf, device=y.device)
    with torch.enable_grad():
        for step in range(steps + 1):
            last = step == steps
            with torch.set_grad_enabled(not last):
                loss = objective(y, z)
            better = loss.detach() < best_loss                  # per image: keep its best
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_y[better], best_z[better] = y.detach()[better], z.detach()[better]
            if last:
                break
            for group in optimizer.param_groups:        # cosine to zero over the steps
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            # the latents' gradients alone (none for the weights, which stay as they are);
            # images are independent: each its own gradient
            y.grad, z.grad = torch.autograd.grad(loss.sum(), [y, z])
            optimizer.step()
    return best_y, best_z
