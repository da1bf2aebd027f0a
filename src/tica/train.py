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
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (DeviceCrops, RandomCrops, augment, held_out_split, load_split, read_shards,
                   split_classes, synthetic_split)
from .errors import CheckpointError, ConfigError, TicaError
from .extras import require
from .losses import cosine_lr, rda_loss
from .models import CompressionModel
from .registry import build_model, find_weights, get_config

STATE_FILE = "checkpoint.safetensors"
STATE_FORMAT = "tica-train-state"


# ---- data ---------------------------------------------------------------------------------

class _SplitData:
    """Labelled 32x32-style data held in memory, augmented a batch at a time. The order of an
    epoch is a permutation seeded by (seed, epoch); rank r takes every world-th image of
    each global batch. `to(device)` makes it resident on a GPU (uint8: CIFAR-10's 45,000
    training images are 138 MB): batches are then gathered and augmented there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self.device = images.device
        self._perm, self._perm_epoch = torch.empty(0, dtype=torch.long), -1

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "_SplitData":
        return _SplitData(self.images.to(device), self.labels.to(device), self.seed)

    def batch(self, indices: torch.Tensor, generator: torch.Generator):
        x = augment(self.images[indices].float().div_(255), generator=generator)
        return x, self.labels[indices]

    def get(self, step: int, steps_per_epoch: int, batch_size: int, rank: int, world: int,
            generator: torch.Generator):
        epoch = step // steps_per_epoch
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(
                self.seed * 7919 + epoch)).to(self.device)      # the same order on any device
            self._perm_epoch = epoch
        offset = (step % steps_per_epoch) * batch_size
        return self.batch(self._perm[offset:offset + batch_size][rank::world], generator)


class _CropData:
    """Unlabelled photographs: random crops (codec training, alpha = 0)."""

    def __init__(self, folder: str, crop: int, epoch_size: int = 10000) -> None:
        self.crops, self.epoch_size = RandomCrops(folder, crop), epoch_size

    def __len__(self) -> int:
        return self.epoch_size

    def batch(self, indices: torch.Tensor, generator: torch.Generator):
        return self.crops.batch(len(indices), generator).float().div_(255), None

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        return self.batch(torch.arange(max(1, batch_size // world)), generator)

    def to(self, device: torch.device) -> "_DeviceCropData":
        return _DeviceCropData(DeviceCrops(self.crops.images, self.crops.crop, device), self.epoch_size)


class _DeviceCropData:
    """`_CropData` resident on a GPU: crops are drawn and gathered there (`DeviceCrops`)."""

    def __init__(self, crops: DeviceCrops, epoch_size: int) -> None:
        self.crops, self.epoch_size, self.device = crops, epoch_size, crops.device

    def __len__(self) -> int:
        return self.epoch_size

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        return self.crops.batch(max(1, batch_size // world), generator).float().div_(255), None


def _on_device(data, device: torch.device):
    """Training data resident on an accelerator where its kind allows (in-memory splits and
    photographs); on the CPU, and for streamed shards, the data as it is."""
    if device.type == "cpu" or not hasattr(data, "to"):
        return data
    return data.to(device)


def _generator(data, seed: int) -> torch.Generator:
    """The per-step generator of augmentation draws, on the device the data lives on."""
    return torch.Generator(device=getattr(data, "device", "cpu")).manual_seed(seed)


class _ShardData:
    """WebDataset shards, streamed: each epoch shuffles the shard list with (seed, epoch),
    rank r reads shards r, r + world, ...; a buffer seeded by (seed, epoch, rank) shuffles
    samples. Position is a function of the step, so resume replays the same batches."""

    def __init__(self, shards: list[str], count: int, size: int, seed: int,
                 buffer: int = 2000) -> None:
        self.shards, self.count, self.size, self.seed = shards, count, size, seed
        self.buffer = max(1, min(buffer, count))
        self._stream, self._position = None, (-1, -1)

    def __len__(self) -> int:
        return self.count

    def _samples(self, epoch: int, rank: int, world: int):
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(
            self.seed * 7919 + epoch)).tolist()
        mine = [self.shards[i] for i in order][rank::world] or self.shards[rank % len(self.shards):][:1]
        rng = torch.Generator().manual_seed(self.seed * 104729 + epoch * 31 + rank)
        pool: list = []
        while True:                                  # cycle: every rank yields enough
            for sample in read_shards(mine):
                pool.append(sample)
                if len(pool) >= self.buffer:
                    yield pool.pop(int(torch.randint(len(pool), (1,), generator=rng)))

    def _fit(self, img: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to `size` and centre-crop (augment adds crops and flips)."""
        img = img.float()[None]
        h, w = img.shape[-2:]
        scale = self.size / min(h, w)
        if scale != 1:
            img = F.interpolate(img, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                                mode="bilinear", antialias=True, align_corners=False)
        h, w = img.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return img[0, :, top:top + self.size, left:left + self.size]

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        epoch, batch_index = step // steps_per_epoch, step % steps_per_epoch
        if self._position != (epoch, batch_index):
            self._stream = self._samples(epoch, rank, world)
            for _ in range(batch_index * max(1, batch_size // world)):    # replay to the step
                next(self._stream)
        samples = [next(self._stream) for _ in range(max(1, batch_size // world))]
        self._position = (epoch, batch_index + 1)
        x = torch.stack([self._fit(img) for img, _ in samples]).clamp(0, 255).div_(255)
        return augment(x, generator=generator), torch.tensor([label for _, label in samples])


def _data_kind(data: str) -> str:
    """"synthetic", "shards" (a folder of train-*.tar), "photos" (a folder of images) or
    "split" (an ImageFolder folder or archive)."""
    if data == "synthetic":
        return "synthetic"
    path = Path(data)
    if path.is_dir() and any(path.glob("train-*.tar")):
        return "shards"
    if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
        return "photos"
    return "split"


def _train_data(cfg: TrainConfig, img_size: int):
    kind = _data_kind(cfg.data)
    if kind == "synthetic":
        split = synthetic_split(n=cfg.train_limit or 256, size=img_size)
        return _SplitData(split.images, split.labels, cfg.seed)
    if kind == "shards":
        path = Path(cfg.data)
        count = json.loads((path / "train.json").read_text())["count"]
        return _ShardData([str(s) for s in sorted(path.glob("train-*.tar"))], count, img_size, cfg.seed)
    if kind == "photos":
        return _CropData(cfg.data, img_size)
    split = load_split(cfg.data, "train", limit=cfg.train_limit)
    return _SplitData(split.images, split.labels, cfg.seed)


def _eval_data(cfg: TrainConfig, img_size: int):
    """Held-out images for the epoch-end score: the test split where there is one."""
    kind = _data_kind(cfg.data)
    if kind == "synthetic":
        return synthetic_split(n=64, size=img_size, seed=1)
    if kind != "split" or cfg.eval_images <= 0:
        return None
    return load_split(cfg.data, held_out_split(cfg.data), limit=cfg.eval_images)


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
    if _data_kind(cfg.data) == "split" and model.config.num_classes:
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
    meta = {"quality": cfg.quality, "alpha": cfg.alpha, "beta": cfg.beta, "step": cfg.step,
            "train_steps": step, "model": config.name}
    if isinstance(export, CompressionModel) and config.rate_levels and cfg.step == 2:
        meta["quality"] = None
        meta["rate_points"] = cfg.rate_points(config.rate_levels)
    if not final:
        meta["interim"] = True
    save_checkpoint(export, path, meta, half=half)


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


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one training run and export its weights.

    On a GPU the training data (in-memory splits, photographs) is resident on the device,
    augmented there, the weights are channels-last, and nothing is read back to the host
    except at log, checkpoint and export steps. A deadline (`deadline_s`) or `request_stop`
    ends the run early, saved and exported like a finished one."""
    rank, world, device = _init_distributed(cfg)
    _tune_device(device)
    clock = _Clock(cfg, world)
    main = rank == 0
    run_dir = _open_run_dir(cfg) if main else Path(cfg.run_dir)
    state_path, metrics = run_dir / STATE_FILE, run_dir / "metrics.jsonl"
    model, saved, start_step = _start_model(cfg, resume, device, main)
    data = _on_device(_train_data(cfg, model.config.img_size), device)
    if (saved is None and cfg.step == 2 and cfg.init and cfg.latent_std
            and isinstance(model, CompressionModel)):
        probe, _ = data.get(0, 1, min(len(data), 512), 0, 1, _generator(data, cfg.seed))
        scale = calibrate_latent_scale(model, probe.to(device), cfg.latent_std)
        if main:
            _log(metrics, {"step": 0, "latent_scale": scale})
    eval_split = _eval_data(cfg, model.config.img_size) if main else None
    objective, optimizer, clipped, ema_state = _make_optimizer(model, cfg, saved, device, world)

    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    use_bf16 = cfg.bf16 and device.type in ("cpu", "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    progress = None
    if main and cfg.progress:
        tqdm = require("tqdm", "train", "the progress bar (TrainConfig.progress)").tqdm
        progress = tqdm(total=last_step, initial=start_step, desc=f"step {cfg.step} {model.config.name}",
                        unit="it", mininterval=2.0, dynamic_ncols=True)
    window, run_start, step, stopped = _Window(), time.perf_counter(), start_step, None
    clock.begin()
    try:
        while step < last_step:
            stopped = _agree_to_stop(clock, world, device)
            if stopped:
                break
            torch.manual_seed(cfg.seed * 1_000_003 + step * 131 + rank)
            g = _generator(data, cfg.seed * 999_983 + step * 17 + rank)
            x, labels = data.get(step, steps_per_epoch, cfg.batch_size, rank, world, g)
            x = x.to(device, non_blocking=True)
            labels = labels.to(device) if labels is not None else None
            _set_lr(optimizer, cfg, clock.schedule_step(step, total_steps), total_steps)
            # Rate warm-up: Adam normalises each parameter's step, so the entropy models learn
            # at full speed while g_a feels the rate only gradually and keeps its information.
            rate_weight = min(1.0, (step + 1) / cfg.rate_warmup_steps) if cfg.rate_warmup_steps else 1.0
            terms = _step(objective, optimizer, clipped, model, ema_state, x, labels, cfg,
                          rate_weight, autocast)
            step += 1
            window.add(terms, x.shape[0] * world)
            if main and (step % cfg.log_every == 0 or step == last_step):
                record = window.record(step, steps_per_epoch, _main_lr(optimizer))
                _log(metrics, record)
                if progress is not None:
                    progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "acc", "bpp", "psnr", "img_s") if k in record})
                window = _Window()
            if progress is not None:
                progress.update(1)
            epoch_end = step % steps_per_epoch == 0
            if main and cfg.resumable and (step % cfg.checkpoint_every == 0 or epoch_end or step == last_step):
                save_state(state_path, model, optimizer, ema_state, step, cfg)
            if main and epoch_end and eval_split is not None:
                _log(metrics, {"step": step, "eval": evaluate_estimate(model, eval_split, cfg)})
            if main and clock.export_due():
                _export_all(model, ema_state, cfg, step, final=False)
        if main and stopped and cfg.resumable and step > start_step:
            save_state(state_path, model, optimizer, ema_state, step, cfg)
    finally:
        if progress is not None:
            progress.close()
    if world > 1:
        dist.barrier()
    wall = time.perf_counter() - run_start
    if main:
        _export_all(model, ema_state, cfg, step, final=True)
        done = {"step": step, "done": True, "wall_s": wall, "world": world}
        if stopped:
            done.update(stopped=stopped, planned_steps=last_step)
        _log(metrics, done)
    return TrainResult(run_dir / "model.safetensors", model, step, stopped, last_step, wall, start_step)


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
