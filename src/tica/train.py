"""Training: the paper's two steps (SPEC 2) for any model of the family, on one process or
many under torchrun (DistributedDataParallel: gloo on CPU, NCCL on GPU).

Robustness: the full training state (model, optimizer, EMA, step) is written atomically to
`run_dir/checkpoint.safetensors` every `checkpoint_every` steps and at each epoch end, so a
run killed at any moment (even SIGKILL) loses at most the work since then, and `resume`
continues exactly: the data order is a function of (seed, epoch) and every step reseeds the
RNG from (seed, step, rank), so a resumed run draws the same crops, flips and noise.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoint import WeightsInfo, atomic_write, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (TrainingData, batch_generator, data_kind, held_out_data, on_device,
                   split_classes, training_data)
from .errors import CheckpointError, ConfigError, TicaError
from .extras import require
from .losses import cosine_lr, rda_loss
from .models import CompressionModel
from .registry import build_model, find_weights, get_config

STATE_FILE = "checkpoint.safetensors"
STATE_FORMAT = "tica-train-state"


# ---- the objective -------------------------------------------------------------------------

class Objective(nn.Module):
    """Model + loss in one module, so DistributedDataParallel sees (and all-reduces) every
    gradient, the auxiliary quantile loss's included.

    A variable-rate model (rate_levels L) in step 2 trains every image at a standard rate
    point drawn uniformly from 1..L, with that point's (alpha, beta): one batch teaches all
    of them. `terms["loss"]` is the objective; `terms["aux"]`, the quantiles' loss, is
    optimised beside it but logged apart."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
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

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, rate_weight: float = 1.0
                ) -> dict[str, torch.Tensor]:
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
        terms = rda_loss(out, x, labels, alpha, beta, self.cfg.label_smoothing, rate_weight)
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


def _main_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the networks (not of the hyperprior's or the quantiles' groups)."""
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if g.get("name") == "main"), groups[0]["lr"])


# ---- training state ------------------------------------------------------------------------

def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               ema: dict[str, torch.Tensor] | None, step: int, cfg: TrainConfig) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    for k, v in (ema or {}).items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    meta = {"format": STATE_FORMAT, "step": str(step), "train_config": json.dumps(cfg.to_dict()),
            "model_config": model.config.to_json()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "ema": {}}
            for key in f.keys():
                head, rest = key.split(".", 1)
                groups[head][rest] = f.get_tensor(key)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from None
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a tica training state")
    return meta, groups


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


# ---- distributed ---------------------------------------------------------------------------

def _init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def build_initial_model(cfg: TrainConfig) -> nn.Module:
    """The model a run starts from: `init`'s weights (with `model_overrides`) or the preset,
    named with the training split's class names when it has labelled classes."""
    model = _initial_weights(cfg)
    if data_kind(cfg.data) == "split" and model.config.num_classes:
        classes = split_classes(cfg.data)
        if len(classes) != model.config.num_classes:
            raise TicaError(f"{cfg.data} has {len(classes)} classes; {model.config.name} "
                            f"classifies {model.config.num_classes} (--set num_classes=...)")
        if classes != model.config.labels:
            model.config = model.config.replace(labels=classes)
    return model


def _initial_weights(cfg: TrainConfig) -> nn.Module:
    if cfg.init:
        init = cfg.init
        if init == "step1":           # the shipped step-1 network of the preset
            entry = find_weights(cfg.model, "step1")
            if entry is None:
                raise TicaError(f"no step-1 weights are shipped for {cfg.model}")
            init = entry.file
        model = load_checkpoint(init)
        if cfg.model_overrides:
            model = _transplant(model, cfg.model_overrides, cfg.seed)
        return model
    return build_model(get_config(cfg.model, **cfg.model_overrides), seed=cfg.seed)


def _transplant(source: nn.Module, overrides: dict, seed: int) -> nn.Module:
    """A model of source's config with `overrides`, holding every source tensor whose name
    and shape still fit; the rest keep their seeded initialisation. This is how an ablation
    starts from trained weights (e.g. step 2 with fam=False from a step-1 network with FAM:
    g_a and the ViT carry over, g_s starts fresh)."""
    model = build_model(source.config.replace(**overrides), seed=seed)
    mine = model.state_dict()
    kept = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    if not kept:
        raise TicaError(f"no weights of {source.config.name} fit the overridden config {overrides}")
    model.load_state_dict(kept, strict=False)
    return model


@torch.no_grad()
def calibrate_latent_scale(model: CompressionModel, x: torch.Tensor, target_std: float) -> float:
    """Rescale y = g_a(x) by s so its std is `target_std`, dividing every consumer of y by s:
    an exact reparametrisation of the unquantized network. Step 1 trains without rounding,
    so its latent has an arbitrary scale (std ~0.3 on CIFAR), which rounding to integers at
    the start of step 2 would all but erase. Returns s."""
    std = float(model.g_a(x).float().std())
    s = target_std / max(std, 1e-8)
    last = [m for m in model.g_a if isinstance(m, nn.Conv2d)][-1]
    last.weight.mul_(s)
    last.bias.mul_(s)
    consumers = [model.tokens.proj] if hasattr(model, "tokens") else []
    if getattr(model, "fam", None) is None:           # g_s reads y_hat directly
        consumers.append(model.g_s[0])
    for layer in consumers:
        layer.weight.div_(s)
    return s


# ---- the wall clock: deadline, time-based schedule, periodic exports --------------------------

_STOP = threading.Event()


def request_stop() -> None:
    """Ask every `train()` of this process to stop after its current step, then save and
    export what it has, as at a deadline (what a plan's SIGTERM handler calls). The request
    holds for the rest of the process, so one made while a run is still starting counts."""
    _STOP.set()


class _Clock:
    """The wall-clock side of a run: its deadline (`deadline_s` after `clock_start`, else
    after the run's start), the share of a time-based schedule that has passed, and when
    the next periodic export is due. Reads only the host clock: never waits for a GPU."""

    def __init__(self, cfg: TrainConfig, world: int) -> None:
        if cfg.schedule_by_deadline and (cfg.deadline_s is None or world > 1):
            raise ConfigError("schedule_by_deadline needs deadline_s, and one process (the "
                              "ranks of torchrun would read different clocks)")
        if cfg.deadline_s is not None and cfg.deadline_s < 0:
            raise ConfigError("deadline_s must not be negative")
        if cfg.export_every_s is not None and cfg.export_every_s <= 0:
            raise ConfigError("export_every_s must be positive")
        self.start = time.time()
        origin = cfg.clock_start if cfg.clock_start is not None else self.start
        self.deadline = origin + cfg.deadline_s if cfg.deadline_s is not None else None
        self.by_deadline = cfg.schedule_by_deadline
        self.every = cfg.export_every_s
        self.next_export = None

    def begin(self) -> None:
        """The first step is about to run: the schedule's time and the export interval
        count from here (building the model and loading data are behind)."""
        self.start = time.time()
        self.next_export = self.start + self.every if self.every else None

    def stop_reason(self) -> str | None:
        """"signal" (request_stop), "deadline", or None to go on."""
        if _STOP.is_set():
            return "signal"
        if self.deadline is not None and time.time() >= self.deadline:
            return "deadline"
        return None

    def schedule_step(self, step: int, total_steps: int) -> float:
        """The step the LR schedule is at: `step`, or further along when the schedule runs
        to the deadline and that much of the time until it has passed."""
        if not self.by_deadline:
            return step
        span = max(self.deadline - self.start, 1e-6)
        return max(float(step), min(1.0, (time.time() - self.start) / span) * total_steps)

    def export_due(self) -> bool:
        if self.next_export is None or time.time() < self.next_export:
            return False
        self.next_export = time.time() + self.every
        return True


def _agree_to_stop(clock: _Clock, world: int, device: torch.device) -> str | None:
    """Why to stop now, if at all. Under torchrun every rank must stop at the same step, so
    with a deadline any rank's reason stops all (one tiny all-reduce a step)."""
    reason = clock.stop_reason()
    if world == 1 or clock.deadline is None:
        return reason
    flag = torch.tensor([1.0 if reason else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (reason or "deadline") if flag.item() else None


def _tune_device(device: torch.device) -> None:
    """CUDA: cuDNN picks its fastest kernels for the fixed shapes, TF32 for the float32
    parts (the entropy models run outside autocast). Training only: coding tables are
    built on the CPU from the exported weights."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ---- exports -------------------------------------------------------------------------------

def export_weights(model: nn.Module, ema_state: dict[str, torch.Tensor] | None, cfg: TrainConfig,
                   step: int, path: Path, half: bool = False, final: bool = True) -> None:
    """Write the weights a run has now as a tica checkpoint: the EMA where there is one, in
    eval mode, coding-ready (update()) after step 2. Built on the CPU, so a GPU run's copy
    is the same file a CPU run writes; `half` stores float16."""
    config = model.config
    export = build_model(config)
    state = model.state_dict()
    export.load_state_dict({**state, **ema_state} if ema_state is not None else state)
    export.eval()
    if isinstance(export, CompressionModel) and cfg.step == 2:
        export.update()
    variable = isinstance(export, CompressionModel) and bool(config.rate_levels) and cfg.step == 2
    info = WeightsInfo(quality=None if variable else cfg.quality, alpha=cfg.alpha, beta=cfg.beta,
                       step=cfg.step, train_steps=step, model=config.name, interim=not final,
                       rate_points=cfg.rate_points(config.rate_levels) if variable else None)
    save_checkpoint(export, path, info, half=half)


def _export_all(model, ema_state, cfg: TrainConfig, step: int, final: bool) -> Path:
    """The run's exports: run_dir/model.safetensors (float32) at the end or, mid-run, where
    no export_dir is set; a float16 copy in export_dir each time. Logs how long it took."""
    run_dir = Path(cfg.run_dir)
    t0 = time.perf_counter()
    out = run_dir / "model.safetensors"
    if final or not cfg.export_dir:
        export_weights(model, ema_state, cfg, step, out, final=final)
    if cfg.export_dir:
        export_weights(model, ema_state, cfg, step, Path(cfg.export_dir) / "model.safetensors",
                       half=True, final=final)
    _log(run_dir / "metrics.jsonl", {"step": step, "export": "final" if final else "interim",
                                     "export_s": round(time.perf_counter() - t0, 3)})
    return out


# ---- the loop ------------------------------------------------------------------------------

@dataclass
class TrainResult:
    weights: Path          # the exported model (coding-ready after step 2)
    model: nn.Module       # this process's trained model (identical on every rank)
    steps: int
    stopped: str | None = None     # "deadline" or "signal" if the run ended before its last step
    planned_steps: int = 0         # the step it would have ended at
    wall_s: float = 0.0            # of the training loop, this session
    first_step: int = 0            # where this session started (> 0 when resumed)


def _open_run_dir(cfg: TrainConfig) -> Path:
    """Create the run folder, clear a killed write's leftovers, write the resolved config."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    atomic_write(run_dir / "config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_dict(), indent=2)))
    return run_dir


def _start_model(cfg: TrainConfig, resume: bool, device: torch.device, main: bool):
    """(model on the device in train mode, saved state or None, first step): from the
    run's checkpoint when resuming, else from `init` or the preset. Channels-last on CUDA."""
    state_path = Path(cfg.run_dir) / STATE_FILE
    start_step = 0
    if resume and state_path.exists():
        meta, saved = load_state(state_path)
        model = build_model(ModelConfig.from_dict(json.loads(meta["model_config"])), seed=cfg.seed)
        model.load_state_dict(saved["model"])
        start_step = int(meta["step"])
    else:
        if resume and main:
            print(f"tica train: no checkpoint in {cfg.run_dir}, starting from scratch", file=sys.stderr)
        model, saved = build_initial_model(cfg), None
    if device.type == "cuda":
        model.to(device, memory_format=torch.channels_last).train()
    else:
        model.to(device).train()
    return model, saved, start_step


def _make_optimizer(model: nn.Module, cfg: TrainConfig, saved, device: torch.device, world: int):
    """(objective, optimizer, the parameters whose norm is clipped, EMA state or None)."""
    objective: nn.Module = Objective(model, cfg)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.step == 1 and isinstance(model, CompressionModel))
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(_param_groups(model, cfg), lr=cfg.lr)
    clipped = [p for g in optimizer.param_groups if not g.get("fixed") for p in g["params"]]
    if saved is not None:
        _restore_optimizer(optimizer, saved["optim"])
    ema_state = None
    if cfg.ema > 0:
        ema_state = ({k: v.to(device) for k, v in saved["ema"].items()} if saved and saved["ema"]
                     else {k: v.detach().clone() for k, v in model.state_dict().items()
                           if v.dtype.is_floating_point})
    return objective, optimizer, clipped, ema_state


class _Window:
    """The loss terms summed between two log steps. The sums stay tensors on the device
    (float64, as Python floats were), read back only when a record is made."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n, self.images, self.t = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().double()
        self.n += 1
        self.images += images

    def record(self, step: int, steps_per_epoch: int, lr: float) -> dict:
        elapsed = time.perf_counter() - self.t
        return {"step": step, "epoch": round(step / steps_per_epoch, 3), "lr": lr,
                "img_s": self.images / elapsed, **{k: float(v) / self.n for k, v in self.sums.items()}}


def _step(objective, optimizer, clipped, model, ema_state, x, labels, cfg: TrainConfig,
          rate_weight: float, autocast) -> dict[str, torch.Tensor]:
    """One optimisation step; the loss terms (device tensors)."""
    with autocast():
        terms = objective(x, labels, rate_weight)
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


def _set_lr(optimizer, cfg: TrainConfig, sched_step: float, total_steps: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] if group.get("fixed") else cosine_lr(
            sched_step, total_steps, cfg.warmup_steps, group["base_lr"], cfg.min_lr_ratio)


@dataclass
class _Run:
    """One session of a run, as `_build_run` sets it up: who this process is, the model,
    its data, optimizer and schedule. The loop's pieces (`_train_step`, `_log_step`,
    `_after_step`, `_finish`) read it."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    clock: _Clock
    run_dir: Path
    model: nn.Module
    data: TrainingData
    eval_split: object               # held-out images (rank 0), or None
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    clipped: list                    # the parameters whose gradient norm is clipped
    ema_state: dict[str, torch.Tensor] | None
    start_step: int
    steps_per_epoch: int
    total_steps: int                 # the schedule's length
    last_step: int                   # where this run ends (max_steps may cut it short)
    autocast: object                 # a context manager factory: bf16 autocast or nothing

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE


def _calibrate(cfg: TrainConfig, model: nn.Module, data: TrainingData, saved, device: torch.device,
               metrics: Path, main: bool) -> None:
    """Step 2 from step-1 weights: rescale the latent to `latent_std` on a probe batch."""
    if (saved is None and cfg.step == 2 and cfg.init and cfg.latent_std
            and isinstance(model, CompressionModel)):
        probe, _ = data.get(0, 1, min(len(data), 512), 0, 1, batch_generator(data, cfg.seed))
        scale = calibrate_latent_scale(model, probe.to(device), cfg.latent_std)
        if main:
            _log(metrics, {"step": 0, "latent_scale": scale})


def _build_run(cfg: TrainConfig, resume: bool) -> _Run:
    """Join the process group, then build or restore the model, its data and optimizer."""
    rank, world, device = _init_distributed(cfg)
    _tune_device(device)
    clock = _Clock(cfg, world)
    main = rank == 0
    run_dir = _open_run_dir(cfg) if main else Path(cfg.run_dir)
    model, saved, start_step = _start_model(cfg, resume, device, main)
    data = on_device(training_data(cfg, model.config.img_size), device)
    _calibrate(cfg, model, data, saved, device, run_dir / "metrics.jsonl", main)
    eval_split = held_out_data(cfg, model.config.img_size) if main else None
    objective, optimizer, clipped, ema_state = _make_optimizer(model, cfg, saved, device, world)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    use_bf16 = cfg.bf16 and device.type in ("cpu", "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    return _Run(cfg, rank, world, device, clock, run_dir, model, data, eval_split, objective,
                optimizer, clipped, ema_state, start_step, steps_per_epoch, total_steps,
                last_step, autocast)


def _progress_bar(run: _Run):
    """A tqdm bar on rank 0 when `progress` is on, else None."""
    if not (run.main and run.cfg.progress):
        return None
    tqdm = require("tqdm", "train", "the progress bar (TrainConfig.progress)").tqdm
    return tqdm(total=run.last_step, initial=run.start_step,
                desc=f"step {run.cfg.step} {run.model.config.name}", unit="it", mininterval=2.0,
                dynamic_ncols=True)


def _train_step(run: _Run, step: int) -> tuple[dict[str, torch.Tensor], int]:
    """Draw batch `step` (every draw seeded by (seed, step, rank)) and take one step; the
    loss terms and how many images the step saw across all ranks."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed * 1_000_003 + step * 131 + run.rank)
    g = batch_generator(run.data, cfg.seed * 999_983 + step * 17 + run.rank)
    x, labels = run.data.get(step, run.steps_per_epoch, cfg.batch_size, run.rank, run.world, g)
    x = x.to(run.device, non_blocking=True)
    labels = labels.to(run.device) if labels is not None else None
    _set_lr(run.optimizer, cfg, run.clock.schedule_step(step, run.total_steps), run.total_steps)
    # Rate warm-up: Adam normalises each parameter's step, so the entropy models learn
    # at full speed while g_a feels the rate only gradually and keeps its information.
    rate_weight = min(1.0, (step + 1) / cfg.rate_warmup_steps) if cfg.rate_warmup_steps else 1.0
    terms = _step(run.objective, run.optimizer, run.clipped, run.model, run.ema_state, x, labels,
                  cfg, rate_weight, run.autocast)
    return terms, x.shape[0] * run.world


def _log_step(run: _Run, window: _Window, step: int, progress) -> _Window:
    """At log steps (rank 0), write the window's averages and start a new window."""
    if not (run.main and (step % run.cfg.log_every == 0 or step == run.last_step)):
        return window
    record = window.record(step, run.steps_per_epoch, _main_lr(run.optimizer))
    _log(run.metrics, record)
    if progress is not None:
        progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "acc", "bpp", "psnr", "img_s")
                              if k in record})
    return _Window()


def _after_step(run: _Run, step: int) -> None:
    """Rank 0's work once step `step` is done: the training state every `checkpoint_every`
    steps and at epoch ends, the held-out score at epoch ends, a periodic export when due."""
    if not run.main:
        return
    cfg = run.cfg
    epoch_end = step % run.steps_per_epoch == 0
    if cfg.resumable and (step % cfg.checkpoint_every == 0 or epoch_end or step == run.last_step):
        save_state(run.state_path, run.model, run.optimizer, run.ema_state, step, cfg)
    if epoch_end and run.eval_split is not None:
        _log(run.metrics, {"step": step, "eval": evaluate_estimate(run.model, run.eval_split, cfg)})
    if run.clock.export_due():
        _export_all(run.model, run.ema_state, cfg, step, final=False)


def _finish(run: _Run, step: int, stopped: str | None, run_start: float) -> TrainResult:
    """Every rank at the same point, then rank 0 exports the weights and logs the end."""
    if run.world > 1:
        dist.barrier()
    wall = time.perf_counter() - run_start
    if run.main:
        _export_all(run.model, run.ema_state, run.cfg, step, final=True)
        done = {"step": step, "done": True, "wall_s": wall, "world": run.world}
        if stopped:
            done.update(stopped=stopped, planned_steps=run.last_step)
        _log(run.metrics, done)
    return TrainResult(run.run_dir / "model.safetensors", run.model, step, stopped, run.last_step,
                       wall, run.start_step)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one training run and export its weights.

    On a GPU the training data (in-memory splits, photographs) is resident on the device,
    augmented there, the weights are channels-last, and nothing is read back to the host
    except at log, checkpoint and export steps. A deadline (`deadline_s`) or `request_stop`
    ends the run early, saved and exported like a finished one."""
    run = _build_run(cfg, resume)
    progress = _progress_bar(run)
    window, run_start, step, stopped = _Window(), time.perf_counter(), run.start_step, None
    run.clock.begin()
    try:
        while step < run.last_step:
            stopped = _agree_to_stop(run.clock, run.world, run.device)
            if stopped:
                break
            terms, images = _train_step(run, step)
            step += 1
            window.add(terms, images)
            window = _log_step(run, window, step, progress)
            if progress is not None:
                progress.update(1)
            _after_step(run, step)
        if run.main and stopped and cfg.resumable and step > run.start_step:
            save_state(run.state_path, run.model, run.optimizer, run.ema_state, step, cfg)
    finally:
        if progress is not None:
            progress.close()
    return _finish(run, step, stopped, run_start)


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
