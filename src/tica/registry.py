"""The one registry: named presets of `ModelConfig`, the architecture each builds, and the
weights shipped for them. `create_model(name, **overrides)` as in timm."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_checkpoint
from .config import ARCHS, DEFAULT_MODEL, IMAGENETTE_LABELS, ModelConfig  # noqa: F401 (DEFAULT_MODEL: re-exported)
from .errors import CheckpointError, ConfigError, TicaError
from .io import atomic_write_text, sha256_file
from .models import ConvTeacher, HyperpriorCodec, PixelViT, TicaModel

# config.ARCHS names the architectures (ModelConfig checks against it); their classes, in
# that order
ARCHITECTURES: dict[str, type[nn.Module]] = dict(
    zip(ARCHS, (TicaModel, PixelViT, HyperpriorCodec, ConvTeacher), strict=True))

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
# (whose size grows with M^2) stays small enough to ship. The design sweep's winner
# (docs/design.md: a residual 3x3 block and GDN in g_a / g_s, a ViT of width 128 and depth 4)
# learns the most per CPU-minute; weights trained before it keep their design in their file.
register_preset(ModelConfig(
    name="tica-cifar", img_size=32, stages=2, N=128, M=96, res_blocks=1, act="gdn",
    embed_dim=128, depth=4, num_heads=2, drop_path=0.1))
# Photographs, as in the paper: Imagenette's labelled 224x224 photographs -> 14x14 tokens
# (16x downsampling), a small ViT; the codec is evaluated on Kodak too. Any size codes, the
# position grid is resized.
register_preset(ModelConfig(
    name="tica-photo", img_size=224, stages=4, N=128, M=192, labels=IMAGENETTE_LABELS,
    embed_dim=192, depth=4, num_heads=3, drop_path=0.0))
# Baselines of SPEC 5, the same family at CIFAR scale.
register_preset(ModelConfig(
    name="vit-pixel-cifar", arch="vit-pixel", img_size=32, patch_size=4,
    embed_dim=192, depth=6, num_heads=3, drop_path=0.1, fam=False))
register_preset(ModelConfig(
    name="hyperprior-cifar", arch="hyperprior", img_size=32, stages=2, N=128, M=96, fam=False))
# The clean-pixel classifier beside tica-photo: its ViT on 16x16 pixel patches of Imagenette.
register_preset(ModelConfig(
    name="vit-pixel-photo", arch="vit-pixel", img_size=224, patch_size=16, labels=IMAGENETTE_LABELS,
    embed_dim=192, depth=4, num_heads=3, drop_path=0.0, fam=False))


# The teachers (tica.models.teacher): convolutional classifiers that learn in a few GPU
# seconds, which tica's latent ViT and the pixel ViTs distil from (TrainConfig.teacher).
register_preset(ModelConfig(
    name="teacher-cifar", arch="cnn", img_size=32, stages=0, N=64, M=256, fam=False))
register_preset(ModelConfig(
    name="teacher-photo", arch="cnn", img_size=224, stages=3, N=64, M=256,
    labels=IMAGENETTE_LABELS, fam=False))


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


# ---- shipped weights: one manifest, one resolver ---------------------------------------------
WEIGHTS_PACKAGE = "tica.weights"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "tica-weights-manifest"
ROLES = ("codec", "classifier", "step1")


@dataclass(frozen=True)
class ShippedWeights:
    """One artifact of the manifest: what it is, where its file is, the file's SHA-256,
    the stream id it writes, how it was trained and what it measured."""

    name: str                       # unique artifact name, e.g. "tica-cifar"
    file: Path
    preset: str
    role: str                       # codec (coding-ready) | classifier | step1 (an --init)
    sha256: str
    model_id: int | None = None     # codecs: the 16-bit id their streams carry
    rate_levels: int = 0            # codecs (all variable-rate): standard points 1..L
    trained: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def verified_file(entry: ShippedWeights) -> Path:
    """The file of a manifest entry, once its SHA-256 is the manifest's (hashed once a
    process for each version of the file); CheckpointError if it is not: a damaged or
    replaced weights file is refused, not loaded."""
    st = entry.file.stat() if entry.file.is_file() else None
    if st is None:
        raise CheckpointError(f"{entry.file}: the manifest's {entry.name} is missing; "
                              "reinstall tica")
    if _sha256_of(entry.file, st.st_size, st.st_mtime_ns) != entry.sha256:
        raise CheckpointError(f"{entry.file} is not the file the manifest lists for "
                              f"{entry.name} (its SHA-256 differs): reinstall tica, or load "
                              "your own file with weights=")
    return entry.file


@functools.lru_cache(maxsize=64)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_root() -> Path:
    return Path(str(resources.files(WEIGHTS_PACKAGE)))


def manifest_json(path: Path | None = None) -> dict:
    """The manifest as stored (an empty one where there is none); ValueError if it is not a
    weights manifest. The one reader of the file: `read_manifest` types it, the shipping
    script (scripts/ship_weights.py) edits it and writes it back with `write_manifest`."""
    path = path or weights_root() / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "version": 1, "weights": []}
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"format is not {MANIFEST_FORMAT}")
    return data


def write_manifest(data: dict, path: Path | None = None) -> None:
    """Store a manifest (as `manifest_json` reads it), atomically, after checking that every
    entry reads as ShippedWeights (`parse_manifest`): a manifest that would not read back
    never replaces the one there."""
    path = path or weights_root() / MANIFEST
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"format is not {MANIFEST_FORMAT}")
    parse_manifest(data, path)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_manifest(path: Path | None = None) -> list[ShippedWeights]:
    """Every shipped artifact; ConfigError on a malformed manifest."""
    path = path or weights_root() / MANIFEST
    try:
        data = manifest_json(path)
    except ValueError as exc:
        raise ConfigError(f"malformed weights manifest {path}: {exc}") from None
    return parse_manifest(data, path)


def parse_manifest(data: dict, path: Path) -> list[ShippedWeights]:
    """A manifest's entries (as `manifest_json` returns them) typed, their files beside
    `path`; ConfigError if one is malformed."""
    try:
        entries = []
        for e in data["weights"]:
            e = dict(e)
            e["file"] = path.parent / e["file"]
            if e.get("model_id") is not None:
                e["model_id"] = int(e["model_id"], 16)
            if e["role"] not in ROLES:
                raise ValueError(f"unknown role {e['role']!r}")
            if e["role"] == "codec" and not e.get("rate_levels"):
                raise ValueError(f"{e.get('name')}: a shipped codec is variable-rate "
                                 f"(rate_levels >= 2)")
            if any((o.preset, o.role) == (e["preset"], e["role"]) for o in entries):
                raise ValueError(f"two {e['role']} entries for {e['preset']}")
            entries.append(ShippedWeights(**e))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"malformed weights manifest {path}: {exc}") from None
    return entries


def find_weights(preset: str, role: str = "codec") -> ShippedWeights | None:
    """The shipped artifact of `preset` in `role` (one per preset and role; every shipped
    codec is variable-rate, so the rate is chosen when coding, by
    `ModelConfig.coding_quality`)."""
    return next((e for e in read_manifest() if e.preset == preset and e.role == role), None)


SHIPPED_INITS = ("step1", "shipped")     # what a run's `init` may name instead of a file


def shipped_init(preset: str, init: str | None) -> ShippedWeights | None:
    """The shipped artifact a training `init` names for `preset`: "step1" its step-1 network,
    "shipped" the model it ships (its codec, else its classifier), to train on from there.
    None for any other init (a file); ConfigError if the preset ships no such artifact."""
    if init not in SHIPPED_INITS:
        return None
    entry = (find_weights(preset, "step1") if init == "step1" else
             find_weights(preset, "codec") or find_weights(preset, "classifier"))
    if entry is None:
        raise ConfigError(f"init {init!r}: no {'step-1' if init == 'step1' else 'trained'} "
                          f"weights are shipped for {preset}")
    return entry


def weights_for_id(model_id: int) -> ShippedWeights | None:
    """The shipped codec whose streams carry `model_id`."""
    return next((e for e in read_manifest() if e.model_id == model_id), None)


def standard_qualities(preset: str) -> list[int]:
    """The named rate points of a preset's shipped codec, lowest rate first."""
    entry = find_weights(preset, "codec")
    return list(range(1, entry.rate_levels + 1)) if entry else []


def _check_shapes(path, config, tensors: dict[str, torch.Tensor]) -> None:
    """CheckpointError unless the file holds each of the model's parameters in its shape:
    asked of a model built on the meta device (no memory), so that a small file whose
    config names a huge model is refused before that model is allocated. (Buffers such as
    the coding tables take their size from the file; load_state_dict checks the rest.)
    The models' initialisers keep to operations the meta device runs natively: math on
    meta tensors goes through Python and imports torch's compiler (seconds, the first time;
    tests/test_checkpoint.py holds them to it)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).named_parameters()}
    wrong = sorted(k for k in expected
                   if k not in tensors or tuple(tensors[k].shape) != expected[k])
    if wrong:
        raise CheckpointError(f"{path} does not fit model {config.name!r}: "
                              f"{len(wrong)} of its parameters missing or of another "
                              f"shape, e.g. {wrong[0]}")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint, in eval mode; coding-ready if it was saved
    after update(). Its parameters' shapes are checked first against its config's model
    built on the meta device (tens of milliseconds)."""
    config, tensors, info = read_checkpoint(path)
    _check_shapes(path, config, tensors)
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
