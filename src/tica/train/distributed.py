"""Which process this is: its rank and world under torchrun (DistributedDataParallel: gloo
on CPU, NCCL on GPU) and its device, tuned for training."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..config import TrainConfig


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively, so that autocasting to it is faster
    rather than slower. A CPU without bf16 instructions emulates it: there a training step
    ran 8x slower under bf16 autocast than in float32 (0.12x) (docs/design.md, "bf16
    autocast only where it is native")."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:            # an oneDNN-less build has the op but cannot answer
        return False


def compile_objective(objective: torch.nn.Module) -> None:
    """torch.compile the training step's forward (and so its backward) in place: the weights'
    names, and so checkpoints and exports, are unchanged. Inductor's loop reindexing after
    fusion is turned off: with it, tica-photo's step failed to compile (AssertionError in
    tiling_utils.get_pw_red_splits, an inductor bug for which turning it off is the known
    workaround), where tica-cifar's step compiled to 1.75x at batch 4,096. A graph that still
    fails to compile runs eagerly (dynamo's suppress_errors) rather than ending the run."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    if hasattr(inductor, "loop_reindexing_after_fusion"):
        inductor.loop_reindexing_after_fusion = False
    dynamo.suppress_errors = True
    objective.compile()


def tune_device(device: torch.device) -> None:
    """CUDA: cuDNN picks its fastest kernels for the fixed shapes, TF32 for the float32
    parts (the entropy models run outside autocast). Training only: coding tables are
    built on the CPU from the exported weights."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
