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
from .data import RandomCrops, augment, load_split, read_shards, synthetic_split
from .errors import CheckpointError, TicaError
from .losses import cosine_lr, rda_loss
from .models import CompressionModel
from .registry import build_model, find_weights, get_config

STATE_FILE = "checkpoint.safetensors"
STATE_FORMAT = "tica-train-state"


# ---- data ---------------------------------------------------------------------------------

class _SplitData:
    """Labelled 32x32-style data held in memory, augmented a batch at a time. The order of an
    epoch is a permutation seeded by (seed, epoch); rank r takes every world-th image of
    each global batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self._perm, self._perm_epoch = torch.empty(0, dtype=torch.long), -1

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor, generator: torch.Generator):
        x = augment(self.images[indices].float().div_(255), generator=generator)
        return x, self.labels[indices]

    def get(self, step: int, steps_per_epoch: int, batch_size: int, rank: int, world: int,
            generator: torch.Generator):
        epoch = step // steps_per_epoch
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(
                self.seed * 7919 + epoch))
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
    return load_split(cfg.data, "test", limit=cfg.eval_images)


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

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, rate_weight: float = 1.0
                ) -> dict[str, torch.Tensor]:
        alpha, beta, quality = self.cfg.alpha, self.cfg.beta, None
        if self.levels:
            level = torch.randint(self.levels, (x.shape[0],)).to(x.device)
            alpha, beta, quality = self.alphas[level], self.betas[level], level + 1
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
            out.append({"params": params, "weight_decay": 0.0, "base_lr": cfg.aux_lr, "fixed": True})
        else:
            lr = cfg.hyper_lr if key[0] == "hyper" and cfg.hyper_lr else cfg.lr
            out.append({"params": params, "weight_decay": cfg.weight_decay if key[1] else 0.0,
                        "base_lr": lr})
    return out


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


# ---- the loop ------------------------------------------------------------------------------

@dataclass
class TrainResult:
    weights: Path          # the exported model (coding-ready after step 2)
    model: nn.Module       # this process's trained model (identical on every rank)
    steps: int


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one training run and export its weights."""
    rank, world, device = _init_distributed(cfg)
    run_dir = Path(cfg.run_dir)
    state_path = run_dir / STATE_FILE
    main = rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):      # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        atomic_write(run_dir / "config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_dict(), indent=2)))

    start_step, ema_state = 0, None
    if resume and state_path.exists():
        meta, saved = load_state(state_path)
        model = build_model(ModelConfig.from_dict(json.loads(meta["model_config"])), seed=cfg.seed)
        model.load_state_dict(saved["model"])
        start_step = int(meta["step"])
    else:
        if resume and main:
            print(f"tica train: no checkpoint in {run_dir}, starting from scratch", file=sys.stderr)
        model, saved = build_initial_model(cfg), None
    model.to(device).train()
    config = model.config
    data = _train_data(cfg, config.img_size)
    if (saved is None and cfg.step == 2 and cfg.init and cfg.latent_std
            and isinstance(model, CompressionModel)):
        probe, _ = data.get(0, 1, min(len(data), 512), 0, 1, torch.Generator().manual_seed(cfg.seed))
        scale = calibrate_latent_scale(model, probe.to(device), cfg.latent_std)
        if main:
            _log(run_dir / "metrics.jsonl", {"step": 0, "latent_scale": scale})
    eval_split = _eval_data(cfg, config.img_size) if main else None

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
    if cfg.ema > 0:
        ema_state = ({k: v.to(device) for k, v in saved["ema"].items()} if saved and saved["ema"]
                     else {k: v.detach().clone() for k, v in model.state_dict().items()
                           if v.dtype.is_floating_point})

    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    use_bf16 = cfg.bf16 and device.type in ("cpu", "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    progress = None
    if main and cfg.progress:
        from tqdm import tqdm
        progress = tqdm(total=last_step, initial=start_step, desc=f"step {cfg.step} {config.name}",
                        unit="it", mininterval=2.0, dynamic_ncols=True)
    window: dict[str, float] = {}
    window_n, window_t, window_imgs = 0, time.perf_counter(), 0
    run_start = time.perf_counter()
    step = start_step
    try:
        while step < last_step:
            torch.manual_seed(cfg.seed * 1_000_003 + step * 131 + rank)
            g = torch.Generator().manual_seed(cfg.seed * 999_983 + step * 17 + rank)
            x, labels = data.get(step, steps_per_epoch, cfg.batch_size, rank, world, g)
            x = x.to(device, non_blocking=True)
            labels = labels.to(device) if labels is not None else None
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] if group.get("fixed") else cosine_lr(
                    step, total_steps, cfg.warmup_steps, group["base_lr"], cfg.min_lr_ratio)
            # Rate warm-up: Adam normalises each parameter's step, so the entropy models learn
            # at full speed while g_a feels the rate only gradually and keeps its information.
            rate_weight = min(1.0, (step + 1) / cfg.rate_warmup_steps) if cfg.rate_warmup_steps else 1.0
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
            step += 1
            for k, v in terms.items():
                window[k] = window.get(k, 0.0) + float(v.detach())
            window_n += 1
            window_imgs += x.shape[0] * world
            if main and (step % cfg.log_every == 0 or step == last_step):
                elapsed = time.perf_counter() - window_t
                record = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                          "lr": optimizer.param_groups[0]["lr"], "img_s": window_imgs / elapsed,
                          **{k: v / window_n for k, v in window.items()}}
                _log(run_dir / "metrics.jsonl", record)
                if progress is not None:
                    progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "acc", "bpp", "psnr", "img_s") if k in record})
                window, window_n, window_t, window_imgs = {}, 0, time.perf_counter(), 0
            if progress is not None:
                progress.update(1)
            epoch_end = step % steps_per_epoch == 0
            if main and (step % cfg.checkpoint_every == 0 or epoch_end or step == last_step):
                save_state(state_path, model, optimizer, ema_state, step, cfg)
            if main and epoch_end and eval_split is not None:
                _log(run_dir / "metrics.jsonl", {"step": step, "eval": evaluate_estimate(model, eval_split, cfg)})
    finally:
        if progress is not None:
            progress.close()
    if world > 1:
        dist.barrier()
    out = run_dir / "model.safetensors"
    if main:
        wall = time.perf_counter() - run_start
        export = build_model(config)
        export.load_state_dict(model.state_dict())
        if ema_state is not None:
            export.load_state_dict({**model.state_dict(), **ema_state})
        export.eval()
        if isinstance(export, CompressionModel) and cfg.step == 2:
            export.update()
        meta = {"quality": cfg.quality, "alpha": cfg.alpha, "beta": cfg.beta, "step": cfg.step,
                "train_steps": step, "model": config.name}
        if isinstance(export, CompressionModel) and config.rate_levels and cfg.step == 2:
            meta["quality"] = None
            meta["rate_points"] = cfg.rate_points(config.rate_levels)
        save_checkpoint(export, out, meta)
        _log(run_dir / "metrics.jsonl", {"step": step, "done": True, "wall_s": wall, "world": world})
    return TrainResult(out, model, step)


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
