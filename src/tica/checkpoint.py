"""Checkpoints: safetensors tensors + the model config and what is known of the weights
(`WeightsInfo`) in the header. A model is rebuilt from the file alone; nothing is ever
unpickled."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, TicaError

FORMAT = "tica-checkpoint"
FORMAT_VERSION = 1
# what a training export (tica.train) always writes, null values included
TRAINING_RECORD = ("alpha", "beta", "model", "quality", "step", "train_steps")


@dataclass(frozen=True)
class WeightsInfo:
    """What is known of a model's weights: the "metadata" JSON of its checkpoint, typed.

    Stored as it always was (a flat JSON object; `to_metadata` / `from_metadata` round-trip
    every file exactly; `classifier_trained` is written whenever it is known), keys this
    class does not name kept in `extra`. A model built from a preset carries the empty
    default: nothing known.
    """
    quality: float | None = None        # a fixed-rate codec's rate point (None: variable rate)
    rate_points: list | None = None     # variable rate: [alpha, beta] of each standard point
    alpha: float | None = None          # training weight of the classification loss
    beta: float | None = None           # training weight of the rate
    step: int | None = None             # training step (1: no entropy model, 2: coding)
    train_steps: int | None = None      # optimizer steps of the run that wrote the file
    model: str | None = None            # preset the run trained
    trained: dict = field(default_factory=dict)     # provenance: where, minutes, images, ...
    interim: bool = False               # written mid-run
    untrained: bool = False             # seeded random weights (tica.load(untrained=True))
    seed: int | None = None             # the seed of untrained weights
    # Whether the classifier head was trained on labels: True, False, or None (not known: a
    # bare preset). Training exports write it; older files that do not say take it from
    # alpha (a codec-only run, alpha = 0, never showed its head a label); seeded random
    # weights say False.
    classifier_trained: bool | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.classifier_trained is None:
            told = False if self.untrained else None if self.alpha is None else self.alpha != 0
            object.__setattr__(self, "classifier_trained", told)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "WeightsInfo":
        """Read a checkpoint's metadata object; unknown keys go to `extra`."""
        named = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in metadata.items() if k in named},
                   extra={k: v for k, v in metadata.items() if k not in named})

    def to_metadata(self) -> dict[str, Any]:
        """The metadata object to store: `extra`, the fields set (a training export's whole
        record, nulls included)."""
        out = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if value != default or (self.step is not None and f.name in TRAINING_RECORD):
                out[f.name] = value
        return out


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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint, in eval mode; coding-ready if it was saved
    after update()."""
    from .registry import build_model  # registry imports models; keep this module light

    config, tensors, info = read_checkpoint(path)
    model = build_model(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path} does not fit model {config.name!r}: {' '.join(first)}") from None
    model.weights_info = info
    model.to(device).eval()
    if hasattr(model, "refresh_coding_state"):
        try:
            model.refresh_coding_state()
        except TicaError:
            pass            # saved before update(): a training checkpoint, fine to load
        except ValueError as exc:
            raise CheckpointError(f"{path}: cannot build the integer hyper-synthesis: {exc}") from None
    return model
