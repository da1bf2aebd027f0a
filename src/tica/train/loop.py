"""The training loop: build (or restore) a run, then step, log, checkpoint and export until
its last step, a deadline or `request_stop`."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from ..data import TrainingData, batch_generator, held_out_data, on_device, training_data
from ..errors import ConfigError
from ..extras import require
from .clock import agree_to_stop, Clock
from .distributed import compile_objective, init_distributed, native_bf16, tune_device
from .estimate import evaluate_estimate
from .exports import export_run
from .objective import main_lr, make_optimizer, train_step, set_lr
from .state import STATE_FILE, calibrate, log_metrics, open_run_dir, start_model, save_state


@dataclass
class TrainResult:
    weights: Path          # the exported model (coding-ready after step 2)
    model: nn.Module       # this process's trained model (identical on every rank)
    steps: int
    stopped: str | None = None     # "deadline" or "signal" if the run ended before its last step
    planned_steps: int = 0         # the step it would have ended at
    wall_s: float = 0.0            # of the training loop, this session
    first_step: int = 0            # where this session started (> 0 when resumed)
    earlier_s: float = 0.0         # of the training loop, the sessions before (resumed)



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


@dataclass
class _Run:
    """One session of a run, as `_build_run` sets it up: who this process is, the model,
    its data, optimizer and schedule. The loop's pieces (`_train_step`, `_log_step`,
    `_after_step`, `_finish`) read it."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    clock: Clock
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
    bf16: bool                       # autocasting to bf16: asked for, and native here
    earlier_s: float = 0.0           # seconds of training loop in the sessions before this one
    loop_start: float = 0.0          # perf_counter when this session's loop began

    def train_s(self) -> float:
        """Seconds of training loop behind the current step, over every session."""
        return self.earlier_s + (time.perf_counter() - self.loop_start)

    @property
    def autocast(self):
        """A context manager factory: bf16 autocast, or nothing."""
        if not self.bf16:
            return nullcontext
        return lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE


def _build_run(cfg: TrainConfig, resume: bool) -> _Run:
    """Join the process group, then build or restore the model, its data and optimizer."""
    if cfg.run_dir is None:
        raise ConfigError("a training run needs run_dir: the folder for its state, metrics and "
                          "exports (tica train --run-dir DIR)")
    rank, world, device = init_distributed(cfg)
    tune_device(device)
    clock = Clock(cfg, world)
    main = rank == 0
    run_dir = open_run_dir(cfg) if main else Path(cfg.run_dir)
    model, saved, start_step, earlier_s = start_model(cfg, resume, device, main)
    data = on_device(training_data(cfg, model.config.img_size), device)
    calibrate(cfg, model, data, saved, device, run_dir / "metrics.jsonl", main)
    eval_split = held_out_data(cfg, model.config.img_size) if main else None
    objective, optimizer, clipped, ema_state = make_optimizer(model, cfg, saved, device, world)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    return _Run(cfg, rank, world, device, clock, run_dir, model, data, eval_split, objective,
                optimizer, clipped, ema_state, start_step, steps_per_epoch, total_steps,
                last_step, cfg.bf16 and native_bf16(device), earlier_s)


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
    set_lr(run.optimizer, cfg, run.clock.schedule_step(step, run.total_steps), run.total_steps,
           steps_taken=step)
    # Rate warm-up: Adam normalises each parameter's step, so the entropy models learn
    # at full speed while g_a feels the rate only gradually and keeps its information.
    rate_weight = _ramp(step, cfg.rate_warmup_steps)
    terms = train_step(run.objective, run.optimizer, run.clipped, run.model, run.ema_state, x, labels,
                       cfg, rate_weight, run.autocast, _ramp(step, cfg.z_rate_warmup_steps))
    return terms, x.shape[0] * run.world


def _log_step_flops(run: _Run) -> None:
    """Log the FLOPs of one training step per image (torch.utils.flop_counter: the
    objective's forward and backward on two images, at the batch's size): what images/s is
    multiplied by for a FLOP rate. Before the first step, whose seeded draws it leaves alone
    (the step reseeds, and zeroes the gradients this leaves). One process only: a lone
    backward would stall DistributedDataParallel's all-reduce."""
    if run.world > 1 or not run.main:
        return
    from torch.utils.flop_counter import FlopCounterMode
    g = batch_generator(run.data, run.cfg.seed + 7)
    # at the first step's position: a streamed source then replays that step in full
    x, labels = run.data.get(run.start_step, run.steps_per_epoch, 2, 0, 1, g)
    x = x.to(run.device)
    labels = labels.to(run.device) if labels is not None else None
    with FlopCounterMode(display=False) as counter, run.autocast():
        terms = run.objective(x, labels)
        (terms["loss"] + terms["aux"] if "aux" in terms else terms["loss"]).backward()
    run.optimizer.zero_grad(set_to_none=True)
    log_metrics(run.metrics, {"step": run.start_step, "train_gflop_per_image":
                              counter.get_total_flops() / x.shape[0] / 1e9,
                              "image_size": list(x.shape[-2:])})


def _ramp(step: int, steps: int) -> float:
    """A warm-up weight: linear from 1/steps to 1 over `steps` steps (1 throughout if 0)."""
    return min(1.0, (step + 1) / steps) if steps else 1.0


def _log_step(run: _Run, window: _Window, step: int, progress) -> _Window:
    """At log steps (rank 0), write the window's averages and start a new window."""
    if not (run.main and (step % run.cfg.log_every == 0 or step == run.last_step)):
        return window
    record = window.record(step, run.steps_per_epoch, main_lr(run.optimizer))
    log_metrics(run.metrics, record)
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
        save_state(run.state_path, run.model, run.optimizer, run.ema_state, step, cfg, run.train_s())
    if epoch_end and run.eval_split is not None:
        log_metrics(run.metrics, {"step": step, "eval": evaluate_estimate(run.model, run.eval_split, cfg)})
    if run.clock.export_due():
        export_run(run.model, run.ema_state, cfg, step, final=False)


def _finish(run: _Run, step: int, stopped: str | None, run_start: float) -> TrainResult:
    """Every rank at the same point, then rank 0 exports the weights and logs the end."""
    if run.world > 1:
        dist.barrier()
    wall = time.perf_counter() - run_start
    if run.main:
        export_run(run.model, run.ema_state, run.cfg, step, final=True)
        done = {"step": step, "done": True, "wall_s": wall, "earlier_wall_s": run.earlier_s,
                "world": run.world, "bf16": run.bf16}
        if stopped:
            done.update(stopped=stopped, planned_steps=run.last_step)
        log_metrics(run.metrics, done)
    return TrainResult(run.run_dir / "model.safetensors", run.model, step, stopped, run.last_step,
                       wall, run.start_step, run.earlier_s)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one training run and export its weights.

    On a GPU the training data (in-memory splits, photographs) is resident on the device,
    augmented there, the weights are channels-last, and nothing is read back to the host
    except at log, checkpoint and export steps. A deadline (`deadline_s`) or `request_stop`
    ends the run early, saved and exported like a finished one."""
    run = _build_run(cfg, resume)
    progress = _progress_bar(run)
    _log_step_flops(run)                # counted on the eager model
    if cfg.compile:
        compile_objective(run.objective)
    window, run_start, step, stopped = _Window(), time.perf_counter(), run.start_step, None
    run.loop_start = run_start
    run.clock.begin()
    try:
        while step < run.last_step:
            stopped = agree_to_stop(run.clock, run.world, run.device)
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
            save_state(run.state_path, run.model, run.optimizer, run.ema_state, step, cfg,
                       run.train_s())
    finally:
        if progress is not None:
            progress.close()
    return _finish(run, step, stopped, run_start)
