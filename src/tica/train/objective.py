"""The objective and the optimisation step: model + loss in one module (a variable-rate
model draws a rate point per image), the AdamW parameter groups and their learning rates,
and one step (clipping, EMA)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..losses import rda_loss, schedule_lr
from ..models import CompressionModel
from .state import load_teacher, restore_optimizer


class Objective(nn.Module):
    """Model + loss in one module, so DistributedDataParallel sees (and all-reduces) every
    gradient, the auxiliary quantile loss's included.

    A variable-rate model (rate_levels L) in step 2 trains every image at a standard rate
    point drawn uniformly from 1..L, with that point's (alpha, beta): one batch teaches all
    of them. `terms["loss"]` is the objective; `terms["aux"]`, the quantiles' loss, is
    optimised beside it but logged apart."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        # frozen and unregistered: no optimizer, DistributedDataParallel or checkpoint sees it
        self.__dict__["teacher"] = teacher
        self.codec = isinstance(model, CompressionModel)
        levels = model.config.rate_levels if self.codec and cfg.step == 2 else 0
        self.levels = levels
        if levels:
            alphas, betas = zip(*cfg.rate_points(levels))
            self.register_buffer("alphas", torch.tensor(alphas), persistent=False)
            self.register_buffer("betas", torch.tensor(betas), persistent=False)
            # a weight that is 0 at every point is passed as 0: the loss then leaves its term
            # out without asking the device whether a per-image weight is all zero
            self.weighted = (any(alphas), any(betas))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, rate_weight: float = 1.0,
                z_rate_weight: float = 1.0) -> dict[str, torch.Tensor]:
        alpha, beta, quality = self.cfg.alpha, self.cfg.beta, None
        if self.levels:
            level = torch.randint(self.levels, (x.shape[0],), device=x.device)
            alpha = self.alphas[level] if self.weighted[0] else 0.0
            beta = self.betas[level] if self.weighted[1] else 0.0
            quality = level + 1
        if self.codec:
            out = self.model(x, entropy=self.cfg.step == 2, quality=quality)
        else:
            out = self.model(x)
        taught = None
        if self.teacher is not None and labels is not None:
            with torch.no_grad():
                taught = self.teacher.classify_pixels(x).argmax(1)
        terms = rda_loss(out, x, labels, alpha, beta, self.cfg.label_smoothing, rate_weight,
                         z_rate_weight, taught, self.cfg.distill)
        if self.codec and self.cfg.step == 2:
            terms["aux"] = self.model.aux_loss()
        return terms


# the hyperprior, the densities and the rate gains start from scratch in step 2: they may
# learn at their own `hyper_lr`
_HYPER = ("h_a.", "h_s.", "entropy_bottleneck.", "log_gain", "log_inv_gain")


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weights with decay, the rest (norms, biases, embeddings, densities)
    without; the hyperprior at `hyper_lr`; the quantiles at a constant `aux_lr`."""
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if name.endswith("quantiles"):
            key = ("aux",)
        else:
            hyper = name.startswith(_HYPER)
            decay = not (p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
                         or name.startswith("entropy_bottleneck."))
            key = ("hyper" if hyper else "main", decay)
        groups.setdefault(key, []).append(p)
    out = []
    for key, params in groups.items():
        if key == ("aux",):   # CompressAI's auxiliary optimizer: a constant rate of its own
            out.append({"params": params, "weight_decay": 0.0, "base_lr": cfg.aux_lr, "fixed": True,
                        "name": "aux"})
        else:
            lr = cfg.hyper_lr if key[0] == "hyper" and cfg.hyper_lr else cfg.lr
            out.append({"params": params, "weight_decay": cfg.weight_decay if key[1] else 0.0,
                        "base_lr": lr, "name": key[0]})
    return out


def main_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the networks (not of the hyperprior's or the quantiles' groups)."""
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if g.get("name") == "main"), groups[0]["lr"])


def make_optimizer(model: nn.Module, cfg: TrainConfig, saved, device: torch.device, world: int):
    """(objective, optimizer, the parameters whose norm is clipped, EMA state or None)."""
    teacher = load_teacher(cfg, model, device)
    objective: nn.Module = Objective(model, cfg, teacher).to(device)   # its rate buffers too
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.step == 1 and isinstance(model, CompressionModel))
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(_param_groups(model, cfg), lr=cfg.lr)
    clipped = [p for g in optimizer.param_groups if not g.get("fixed") for p in g["params"]]
    if saved is not None:
        restore_optimizer(optimizer, saved["optim"])
    ema_state = None
    if cfg.ema > 0:
        ema_state = ({k: v.to(device) for k, v in saved["ema"].items()} if saved and saved["ema"]
                     else {k: v.detach().clone() for k, v in model.state_dict().items()
                           if v.dtype.is_floating_point})
    return objective, optimizer, clipped, ema_state


def train_step(objective, optimizer, clipped, model, ema_state, x, labels, cfg: TrainConfig,
               rate_weight: float, autocast, z_rate_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimisation step; the loss terms (device tensors)."""
    with autocast():
        terms = objective(x, labels, rate_weight, z_rate_weight)
    optimizer.zero_grad(set_to_none=True)
    (terms["loss"] + terms["aux"] if "aux" in terms else terms["loss"]).backward()
    if cfg.grad_clip:   # the quantiles' auxiliary gradients stay out of the norm
        nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
    optimizer.step()
    if ema_state is not None:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k in ema_state:
                    ema_state[k].mul_(cfg.ema).add_(v.detach(), alpha=1 - cfg.ema)
    return terms


def set_lr(optimizer, cfg: TrainConfig, sched_step: float, total_steps: int,
           steps_taken: int | None = None) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] if group.get("fixed") else schedule_lr(
            cfg.lr_schedule, sched_step, total_steps, cfg.warmup_steps, group["base_lr"],
            cfg.min_lr_ratio, steps_taken)
