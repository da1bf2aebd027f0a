"""Files, below every model: atomic writes, checksums, and the typed metadata a weights file
carries (`WeightsInfo`). Nothing here knows a model; models, checkpoints, the CLI and the
training plan all write through it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

# what a training export (tica.train) always writes, null values included
TRAINING_RECORD = ("alpha", "beta", "model", "quality", "step", "train_steps")


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (a report, a table, JSON) atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file (a stream) atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in chunks (weights files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
