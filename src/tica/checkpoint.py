"""Checkpoints: safetensors tensors + the model config (and any metadata) in the header.
A model is rebuilt from the file alone; nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, TicaError

FORMAT = "tica-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers see the old file or the whole
    new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)        # mkstemp makes 0600; give the usual mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None,
                    half: bool = False) -> None:
    """Write the model's tensors and config atomically; `half` stores float tensors as
    float16 (loading converts them back). Integer coding tables are always exact."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, tensors, metadata) of a checkpoint; CheckpointError on anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types on bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tica checkpoint (no tica header)")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} has checkpoint format {header.get('format_version')}; "
                              f"this tica reads {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(json.loads(header["config"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path} has a bad config: {exc}") from None
    return config, tensors, metadata


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint, in eval mode; coding-ready if it was saved
    after update()."""
    from .registry import build_model  # registry imports models; keep this module light

    config, tensors, metadata = read_checkpoint(path)
    model = build_model(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path} does not fit model {config.name!r}: {' '.join(first)}") from None
    model.checkpoint_metadata = metadata
    model.to(device).eval()
    if hasattr(model, "_refresh_coding_state"):
        try:
            model._refresh_coding_state()
        except TicaError:
            pass            # saved before update(): a training checkpoint, fine to load
        except ValueError as exc:
            raise CheckpointError(f"{path}: cannot build the integer hyper-synthesis: {exc}") from None
    return model
