"""The rate-distortion-accuracy objective (SPEC 2): alpha*CE + beta*MSE(0-255) + R(bpp)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bits_per_pixel(likelihoods: dict[str, torch.Tensor], pixels: int) -> torch.Tensor:
    """-sum(log2 p) over every latent, divided by the number of pixels of the batch."""
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values()) / pixels


def psnr(mse_255: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(255.0 ** 2 / mse_255.clamp_min(1e-10))


Weight = float | torch.Tensor


def _weighted(per_sample: torch.Tensor, weight: Weight) -> torch.Tensor:
    """mean of weight * per_sample, with a weight per sample (B,) or one for all."""
    return (per_sample * weight).mean() if torch.is_tensor(weight) else weight * per_sample.mean()


def _active(weight: Weight) -> bool:
    """Whether a term's weight is not zero. A per-image weight on an accelerator counts as
    active: reading it back would stall the device every step (pass 0 for "none")."""
    if not torch.is_tensor(weight):
        return bool(weight)
    return bool((weight != 0).any()) if weight.device.type == "cpu" else True


def rda_loss(out: dict, x: torch.Tensor, labels: torch.Tensor | None, alpha: Weight, beta: Weight,
             label_smoothing: float = 0.1, rate_weight: float = 1.0,
             z_rate_weight: float = 1.0, teacher_labels: torch.Tensor | None = None,
             distill: float = 0.0) -> dict[str, torch.Tensor]:
    """Loss and its parts for any model of the family: terms whose outputs a model does not
    produce (logits, x_hat, likelihoods) are left out. `alpha` and `beta` are one number, or
    one per image (B,) when a variable-rate model trains each image at its own rate point;
    the rate counts `rate_weight` times, the hyper-latent's share of it `z_rate_weight`
    times more. With `teacher_labels` the classification term is (1 - distill) * CE(labels)
    + distill * CE(teacher_labels) (DeiT's hard distillation): the teacher's labels go to the
    distillation head where the model has one ("logits_dist"), else to the class head; a
    distillation head with no teacher learns the labels too. The reported `ce`, `mse` and
    `bpp` are unweighted batch means (`ce`: the class head against the true labels); `acc`
    and `agree` are the model's predictions (the heads' mean)."""
    terms: dict[str, torch.Tensor] = {}
    loss = x.new_zeros(())
    if "logits" in out and labels is not None and _active(alpha):
        logits = out["logits"].float()
        dist = out["logits_dist"].float() if out.get("logits_dist") is not None else None
        predicted = logits if dist is None else (logits + dist) / 2
        ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")
        terms["ce"] = ce.mean()
        terms["acc"] = (predicted.argmax(1) == labels).float().mean()
        if teacher_labels is not None:
            student = logits if dist is None else dist
            taught = F.cross_entropy(student, teacher_labels, reduction="none")
            terms["agree"] = (predicted.argmax(1) == teacher_labels).float().mean()
            ce = (1 - distill) * ce + distill * taught
        elif dist is not None:
            ce = (ce + F.cross_entropy(dist, labels, label_smoothing=label_smoothing,
                                       reduction="none")) / 2
        loss = loss + _weighted(ce, alpha)
    if "x_hat" in out and _active(beta):
        mse = (out["x_hat"].float() * 255 - x.float() * 255).square().flatten(1).mean(1)
        terms["mse"] = mse.mean()
        terms["psnr"] = psnr(terms["mse"].detach())
        loss = loss + _weighted(mse, beta)
    if out.get("likelihoods"):
        B, _, H, W = x.shape
        per_latent = {k: -torch.log2(lik).flatten(1).sum(1) for k, lik in out["likelihoods"].items()}
        bits = sum(per_latent.values())
        terms["bpp"] = bits.mean() / (H * W)
        charged = bits - (1 - z_rate_weight) * per_latent["z"] if z_rate_weight != 1 else bits
        loss = loss + rate_weight * charged.mean() / (H * W)
    terms["loss"] = loss
    return terms


WSD_DECAY = 0.2         # wsd: the last fifth of the schedule anneals


def schedule_lr(kind: str, step: float, total: int, warmup: int, base: float,
                min_ratio: float, steps_taken: int | None = None) -> float:
    """Linear warm-up, then to base * min_ratio at `total` steps: "cosine" decays all the way;
    "wsd" (warm-up, stable, decay) holds the peak and anneals linearly over the last
    WSD_DECAY of the steps, so a run continued from trained weights learns at full rate most
    of its time and still ends annealed (at its deadline, with schedule_by_deadline).
    `steps_taken`: the optimizer steps actually run, where `step` is further along (a
    schedule run to a deadline): the warm-up ramps to the schedule's rate at `step` over
    those, so a slow first (compiled) step does not skip it and a fresh optimizer never
    meets trained weights at the full rate."""
    taken = step if steps_taken is None else steps_taken
    ramp = min(1.0, (taken + 1) / warmup) if warmup > 0 else 1.0
    progress = min(1.0, max(0.0, step - warmup) / max(1, total - warmup))
    if kind == "wsd":
        decay = max(0.0, (progress - (1 - WSD_DECAY)) / WSD_DECAY)
        return ramp * base * (1 - (1 - min_ratio) * decay)
    return ramp * base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
