"""What a run keeps on disk and where it starts: the run folder (config.json, metrics.jsonl),
the training state (`checkpoint.safetensors`: model, optimizer, EMA, step), and the initial
model (a preset, `init`'s weights, an ablation's transplant, step 2's latent calibration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data import TrainingData, batch_generator, data_kind, split_classes
from ..errors import CheckpointError, ConfigError, TicaError
from ..io import atomic_write, atomic_write_text
from ..models import CompressionModel
from ..models.vit import with_distill_token
from ..registry import build_model, get_config, load_checkpoint, shipped_init, verified_file


STATE_FILE = "checkpoint.safetensors"
STATE_FORMAT = "tica-train-state"


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               ema: dict[str, torch.Tensor] | None, step: int, cfg: TrainConfig,
               train_s: float = 0.0) -> None:
    """The training state at `step`; `train_s`: seconds of training loop behind it, over every
    session of the run (what a resumed run's provenance adds to its own)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    for k, v in (ema or {}).items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    meta = {"format": STATE_FORMAT, "step": str(step), "train_s": f"{train_s:.3f}",
            "train_config": json.dumps(cfg.to_dict()),
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


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


def log_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def open_run_dir(cfg: TrainConfig) -> Path:
    """Create the run folder, clear a killed write's leftovers, write the resolved config."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    return run_dir



def start_model(cfg: TrainConfig, resume: bool, device: torch.device, main: bool):
    """(model on the device in train mode, saved state or None, first step, seconds of
    training loop before it): from the run's checkpoint when resuming, else from `init` or
    the preset. Channels-last on CUDA."""
    state_path = Path(cfg.run_dir) / STATE_FILE
    start_step, earlier_s = 0, 0.0
    if resume and state_path.exists():
        meta, saved = load_state(state_path)
        model = build_model(ModelConfig.from_dict(json.loads(meta["model_config"])), seed=cfg.seed)
        model.load_state_dict(saved["model"])
        start_step = int(meta["step"])
        earlier_s = float(meta.get("train_s", 0.0))    # states written before it kept none
    else:
        if resume and main:
            begin = f"from {cfg.init}" if cfg.init else "from scratch"
            print(f"tica train: no checkpoint in {cfg.run_dir}, starting {begin}", file=sys.stderr)
        model, saved = build_initial_model(cfg), None
    if device.type == "cuda":
        model.to(device, memory_format=torch.channels_last).train()
    else:
        model.to(device).train()
    return model, saved, start_step, earlier_s


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
        entry = shipped_init(cfg.model, cfg.init)      # "step1" / "shipped": the package's
        model = load_checkpoint(verified_file(entry) if entry else cfg.init)
        if cfg.model_overrides and model.config.replace(**cfg.model_overrides) != model.config:
            model = transplant(model, cfg.model_overrides, cfg.seed)
        return model
    return build_model(get_config(cfg.model, **cfg.model_overrides), seed=cfg.seed)


def load_teacher(cfg: TrainConfig, model: nn.Module, device: torch.device) -> nn.Module | None:
    """The frozen classifier `cfg.teacher` names, in eval mode on `device`, if any.
    ConfigError unless it classifies pixels into the student's classes."""
    if not cfg.teacher:
        return None
    teacher = load_checkpoint(cfg.teacher, device)
    if not hasattr(teacher, "classify_pixels"):
        raise ConfigError(f"teacher {cfg.teacher}: {teacher.config.name} does not classify pixels")
    if teacher.config.labels != model.config.labels:
        raise ConfigError(f"teacher {cfg.teacher} classifies {list(teacher.config.labels)}, the "
                          f"student {list(model.config.labels)}")
    teacher.requires_grad_(False)
    if device.type == "cuda":
        teacher.to(memory_format=torch.channels_last)
    return teacher


def transplant(source: nn.Module, overrides: dict, seed: int) -> nn.Module:
    """A model of source's config with `overrides`, holding every source tensor whose name
    and shape still fit; the rest keep their seeded initialisation. This is how an ablation
    starts from trained weights (e.g. step 2 with fam=False from a step-1 network with FAM:
    g_a and the ViT carry over, g_s starts fresh; a distillation token added to a trained ViT
    starts as its class token)."""
    model = build_model(source.config.replace(**overrides), seed=seed)
    mine, theirs = model.state_dict(), source.state_dict()
    if model.config.distill_token and not source.config.distill_token:
        theirs = with_distill_token(theirs)          # the token starts as the class token
    kept = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
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


def calibrate(cfg: TrainConfig, model: nn.Module, data: TrainingData, saved, device: torch.device,
               metrics: Path, main: bool) -> None:
    """Step 2 from step-1 weights: rescale the latent to `latent_std` on a probe batch. A
    model that already coded (a step-2 export, e.g. init "shipped") goes on as it is: its
    latent's scale is what its entropy model learned."""
    if (saved is None and cfg.step == 2 and cfg.init and cfg.latent_std
            and isinstance(model, CompressionModel) and model.weights_info.step != 2):
        probe, _ = data.get(0, 1, min(len(data), 512), 0, 1, batch_generator(data, cfg.seed))
        scale = calibrate_latent_scale(model, probe.to(device), cfg.latent_std)
        if main:
            log_metrics(metrics, {"step": 0, "latent_scale": scale})
