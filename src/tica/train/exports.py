"""The weights a run exports: the EMA where there is one, coding-ready after step 2, as a
float32 file in the run folder and a float16 copy in `export_dir`."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..config import TrainConfig
from ..io import WeightsInfo
from ..models import CompressionModel
from ..registry import build_model
from .state import log_metrics


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
    labels = not isinstance(export, CompressionModel) or cfg.alpha > 0    # alpha_max follows
    info = WeightsInfo(quality=None if variable else cfg.quality, alpha=cfg.alpha, beta=cfg.beta,
                       step=cfg.step, train_steps=step, model=config.name, interim=not final,
                       rate_points=cfg.rate_points(config.rate_levels) if variable else None,
                       classifier_trained=labels)
    save_checkpoint(export, path, info, half=half)


def export_run(model, ema_state, cfg: TrainConfig, step: int, final: bool) -> Path:
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
    log_metrics(run_dir / "metrics.jsonl", {"step": step, "export": "final" if final else "interim",
                                     "export_s": round(time.perf_counter() - t0, 3)})
    return out
