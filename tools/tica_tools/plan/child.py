"""One run of a plan, in its own process (`python -m tica_tools.plan child SPEC`): the runner
writes SPEC, the child trains and leaves result.json in the run folder."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tica.config import TrainConfig
from tica.io import atomic_write_text
from .spec import RESULT_FILE


def run_child(spec_path: str) -> int:
    """One run of a plan, in its own process: SIGTERM stops it (saved and exported)."""
    import torch
    from tica.train import request_stop, train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    signal.signal(signal.SIGTERM, lambda *_: request_stop())
    cfg = TrainConfig.from_dict(spec["config"])
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else cfg.device
    print(f"tica plan: {cfg.run_dir} on {device}, torch {torch.__version__}", flush=True)
    result = train(cfg, resume=bool(spec.get("resume", True)))
    images = (result.steps - result.first_step) * cfg.batch_size
    summary = {"complete": result.stopped is None, "stopped": result.stopped, "steps": result.steps,
               "planned_steps": result.planned_steps, "wall_s": round(result.wall_s, 2),
               "earlier_wall_s": round(result.earlier_s, 2),
               "img_s": images / max(result.wall_s, 1e-9), "device": device,
               "weights": str(result.weights)}
    atomic_write_text(Path(cfg.run_dir) / RESULT_FILE, json.dumps(summary, indent=2))
    print(f"tica plan: {json.dumps(summary)}", flush=True)
    return 0
