"""The wall clock: deadline, time-based schedule, periodic exports, and `request_stop`."""

from __future__ import annotations

import threading
import time

import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..errors import ConfigError


_STOP = threading.Event()


def request_stop() -> None:
    """Ask every `train()` of this process to stop after its current step, then save and
    export what it has, as at a deadline (what a plan's SIGTERM handler calls). The request
    holds for the rest of the process, so one made while a run is still starting counts."""
    _STOP.set()


class Clock:
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


def agree_to_stop(clock: Clock, world: int, device: torch.device) -> str | None:
    """Why to stop now, if at all. Under torchrun every rank must stop at the same step, so
    with a deadline any rank's reason stops all (one tiny all-reduce a step)."""
    reason = clock.stop_reason()
    if world == 1 or clock.deadline is None:
        return reason
    flag = torch.tensor([1.0 if reason else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (reason or "deadline") if flag.item() else None
