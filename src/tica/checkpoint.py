"""Checkpoints: safetensors tensors + the model config and what is known of the weights
(`tica.io.WeightsInfo`) in the header. A model is rebuilt from the file alone
(`tica.registry.load_checkpoint`); nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .io import WeightsInfo, atomic_write

FORMAT = "tica-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(model: nn.Module, path: str | Path,
                    metadata: WeightsInfo | Mapping[str, Any] | None = None,
                    half: bool = False) -> None:
    """Write the model's tensors, config and `metadata` (a WeightsInfo, or its JSON form)
    atomically; `half` stores float tensors as float16 (loading converts them back).
    Integer coding tables are always exact."""
    if not isinstance(metadata, WeightsInfo):
        metadata = WeightsInfo.from_metadata(metadata or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "metadata": json.dumps(metadata.to_metadata(), sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], WeightsInfo]:
    """(config, tensors, weights info) of a checkpoint; CheckpointError on anything wrong."""
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
        info = WeightsInfo.from_metadata(json.loads(header.get("metadata", "{}")))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path} has a bad config: {exc}") from None
    return config, tensors, info
