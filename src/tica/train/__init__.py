"""Training: the paper's two steps (SPEC 2) for any model of the family, on one process or
many under torchrun (DistributedDataParallel: gloo on CPU, NCCL on GPU).

Robustness: the full training state (model, optimizer, EMA, step) is written atomically to
`run_dir/checkpoint.safetensors` every `checkpoint_every` steps and at each epoch end, so a
run killed at any moment (even SIGKILL) loses at most the work since then, and `resume`
continues exactly: the data order is a function of (seed, epoch) and every step reseeds the
RNG from (seed, step, rank), so a resumed run draws the same crops, flips and noise.
"""

from .clock import request_stop
from .estimate import evaluate_estimate
from .exports import export_weights
from .loop import TrainResult, train
from .objective import Objective
from .state import (STATE_FILE, STATE_FORMAT, build_initial_model, calibrate_latent_scale,
                    load_state, save_state)

__all__ = [
    "STATE_FILE", "STATE_FORMAT", "Objective", "TrainResult", "build_initial_model",
    "calibrate_latent_scale", "evaluate_estimate", "export_weights", "load_state",
    "request_stop", "save_state", "train",
]
