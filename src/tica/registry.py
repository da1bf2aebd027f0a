"""The one registry: named presets of `ModelConfig`, the architecture each builds, and the
weights shipped for them. `create_model(name, **overrides)` as in timm."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .models import HyperpriorCodec, PixelViT, TicaModel

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "tica": TicaModel,
    "vit-pixel": PixelViT,
    "hyperprior": HyperpriorCodec,
}

_PRESETS: dict[str, ModelConfig] = {}


def register_preset(config: ModelConfig) -> ModelConfig:
    if config.name in _PRESETS:
        raise ConfigError(f"preset {config.name!r} is already registered")
    _PRESETS[config.name] = config
    return config


# The paper's ImageNet configuration (DeiT-S on a 14x14 latent). Built and run here, not trained.
register_preset(ModelConfig(
    name="tica-s", img_size=224, num_classes=1000, labels=(), stages=4, N=128, M=192,
    embed_dim=384, depth=12, num_heads=6, drop_path=0.1, fam_blocks=(1, 2, 3)))
# CIFAR-10 at 32x32: 2 stages -> 8x8 latent = 64 tokens; a CPU-sized ViT. M=96 rather than
# 192: an 8x8x96 latent already holds 2.4x the values of the image, and the hyperprior
# (whose size grows with M^2) stays small enough to ship.
register_preset(ModelConfig(
    name="tica-cifar", img_size=32, stages=2, N=128, M=96,
    embed_dim=192, depth=6, num_heads=3, drop_path=0.1))
# Natural images (random crops of photos, Kodak evaluation): 16x downsampling, small ViT.
# Trained on 128x128 crops (the CPU budget); any size codes, the position grid is resized.
register_preset(ModelConfig(
    name="tica-photo", img_size=128, stages=4, N=128, M=192,
    embed_dim=192, depth=4, num_heads=3, drop_path=0.0))
# Baselines of SPEC 5, the same family at CIFAR scale.
register_preset(ModelConfig(
    name="vit-pixel-cifar", arch="vit-pixel", img_size=32, patch_size=4,
    embed_dim=192, depth=6, num_heads=3, drop_path=0.1, fam=False))
register_preset(ModelConfig(
    name="hyperprior-cifar", arch="hyperprior", img_size=32, stages=2, N=128, M=96, fam=False))


def list_models() -> list[str]:
    return sorted(_PRESETS)


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _PRESETS[name].replace(**overrides) if overrides else _PRESETS[name]


def build_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """Build the architecture of `config` with seeded initial weights (the caller's RNG
    state is left untouched), so an untrained model is reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[config.arch](config)


def create_model(name: str, seed: int = 0, **overrides) -> nn.Module:
    """A freshly initialised (untrained) model of preset `name`, with config overrides."""
    return build_model(get_config(name, **overrides), seed)


# ---- shipped weights -----------------------------------------------------------------------
WEIGHTS_PACKAGE = "tica.weights"


def _weights_index() -> tuple[Path, dict]:
    root = Path(str(resources.files(WEIGHTS_PACKAGE)))
    index = root / "index.json"
    return root, (json.loads(index.read_text()) if index.is_file() else {})


def shipped_weights() -> dict[str, dict[int, Path]]:
    """{preset: {quality: path}}: the coding-ready weights inside the package."""
    root, index = _weights_index()
    return {name: {int(q): root / f for q, f in entries.items()}
            for name, entries in index.get("codecs", {}).items()}


def shipped_ids() -> dict[int, tuple[str, int]]:
    """{16-bit model id: (preset, quality)} of the shipped codecs, so a stream names the
    weights that decode it."""
    _, index = _weights_index()
    return {int(k, 16): (v[0], int(v[1])) for k, v in index.get("ids", {}).items()}


def shipped_model(name: str) -> Path | None:
    """The shipped weights of a model with no rate points (a classifier baseline)."""
    root, index = _weights_index()
    f = index.get("models", {}).get(name)
    return root / f if f else None


def step1_weights(name: str) -> Path | None:
    """The shipped step-1 network of a preset: the start of new rate points (--init)."""
    root, index = _weights_index()
    f = index.get("step1", {}).get(name)
    return root / f if f else None


DEFAULT_MODEL = "tica-cifar"
