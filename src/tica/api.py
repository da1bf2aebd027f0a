"""The library's front door: load a model, turn images into a tica bitstream, and classify,
decode or reconstruct from it. Every function takes a model and bytes or tensors and
returns values; the CLI and the server are thin layers over these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import bitstream
from .bitstream import Limits, Stream
from .checkpoint import load_checkpoint
from .errors import ConfigError, ModelMismatchError, TicaError
from .models import CompressionModel
from .registry import (DEFAULT_MODEL, create_model, shipped_ids, shipped_model,
                       shipped_weights)


def load(name: str | None = None, *, quality: int | None = None,
         weights: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A coding-ready model in eval mode.

    weights: a checkpoint file (its config names the architecture). Otherwise the shipped
    weights of preset `name` at rate point `quality`; a preset with none shipped gives its
    seeded *untrained* model, labelled so in `model.checkpoint_metadata`.
    """
    if weights is not None:
        model = load_checkpoint(weights, device)
    else:
        name = name or DEFAULT_MODEL
        shipped = shipped_weights().get(name, {})
        single = shipped_model(name)
        if single is not None and quality is None:
            model = load_checkpoint(single, device)
        elif shipped:
            q = quality if quality is not None else max(shipped)
            if q not in shipped:
                raise ConfigError(f"{name} has no rate point {q}; available: {sorted(shipped)}")
            model = load_checkpoint(shipped[q], device)
        else:
            if quality is not None:
                raise ConfigError(f"no trained weights are shipped for {name}, so --quality "
                                  f"cannot be chosen; pass --weights FILE")
            model = create_model(name).to(device).eval()
            model.checkpoint_metadata = {"untrained": True, "seed": 0}
    if isinstance(model, CompressionModel) and not model.is_updated:
        model.update()
    return model


def load_for_stream(data: bytes, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped model whose id the stream carries, else the default model (which then
    refuses a stream it did not write with a clear ModelMismatchError)."""
    entry = shipped_ids().get(bitstream.peek_model_id(data))
    if entry is None:
        return load(device=device)
    return load(entry[0], quality=entry[1], device=device)


def describe(model: nn.Module) -> str:
    meta = getattr(model, "checkpoint_metadata", {}) or {}
    label = model.config.name
    if meta.get("quality") is not None:
        label += f" q{meta['quality']}"
    return label + (" (UNTRAINED: random weights, seed 0)" if meta.get("untrained") else "")


def _as_batch_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = [images] if images.ndim == 3 else list(images)
    out = []
    for img in images:
        if img.ndim != 3 or img.shape[0] != 3:
            raise TicaError(f"images must be (3, H, W) tensors in [0, 1], got {tuple(img.shape)}")
        out.append(img)
    if not out:
        raise TicaError("no images to compress")
    return out


def _codec(model: nn.Module) -> CompressionModel:
    if not isinstance(model, CompressionModel):
        raise TicaError(f"model {model.config.name!r} has no codec (it works on pixels)")
    return model


def _groups(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    return groups


@torch.no_grad()
def compress(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
             batch_size: int = 64) -> bytes:
    """Images ((3, H, W), a list of them, or (B, 3, H, W)) -> one tica bitstream."""
    codec = _codec(model)
    images = _as_batch_list(images)
    sizes = [tuple(img.shape[-2:]) for img in images]
    payloads: list[bytes] = [b""] * len(images)
    device = next(codec.parameters()).device
    for idx in _groups(sizes).values():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            batch = torch.stack([images[i] for i in part]).to(device)
            for i, p in zip(part, codec.compress(batch)):
                payloads[i] = p
    return bitstream.pack(codec.model_id, sizes, payloads)


def parse(model: nn.Module, data: bytes, limits: Limits = Limits()) -> Stream:
    """Unpack a stream and check it was written by this model."""
    stream = bitstream.unpack(data, limits)
    codec = _codec(model)
    if stream.model_id != codec.model_id:
        raise ModelMismatchError(
            f"bitstream was written by model id {stream.model_id:04x}, but the loaded model "
            f"{describe(model)} has id {codec.model_id:04x}: decode with the same weights "
            f"(--model / --quality / --weights) that encoded it")
    return stream


@torch.no_grad()
def decompress(model: nn.Module, data: bytes | Stream, limits: Limits = Limits(),
               batch_size: int = 64):
    """Yield (image indexes, image size, y_hat (b, M, h, w)) per same-size batch of the stream."""
    stream = data if isinstance(data, Stream) else parse(model, data, limits)
    codec = _codec(model)
    for size, idx in _groups(stream.sizes).items():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            y_hat = codec.decompress([stream.payloads[i] for i in part], size)
            yield part, size, y_hat.to(next(codec.parameters()).device)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    prob: float


def can_classify(model: nn.Module) -> bool:
    """Whether a model has a trained classifier: a ViT head, and not trained with alpha = 0
    (a codec-only run such as tica-photo's, whose head never saw a label)."""
    meta = getattr(model, "checkpoint_metadata", {}) or {}
    return hasattr(model, "classify_latent") and meta.get("alpha", 1.0) != 0


@torch.no_grad()
def classify_logits(model: nn.Module, data: bytes | Stream, limits: Limits = Limits()
                    ) -> torch.Tensor:
    """(num_images, num_classes) logits straight from the bitstream: entropy decoding and the
    ViT only; the pixel decoder g_s never runs."""
    if not hasattr(model, "classify_latent"):
        raise TicaError(f"model {model.config.name!r} has no classifier")
    if not can_classify(model):
        raise TicaError(f"{describe(model)} was trained as a codec only (alpha = 0): its "
                        f"classifier head never saw a label; decode it, or classify with a "
                        f"model trained with alpha > 0")
    stream = data if isinstance(data, Stream) else parse(model, data, limits)
    out = torch.empty(len(stream.payloads), model.config.num_classes)
    for part, _, y_hat in decompress(model, stream):
        out[part] = model.classify_latent(y_hat).float().cpu()
    return out


def top_k(model: nn.Module, logits: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
    labels = model.config.labels or tuple(f"class_{i}" for i in range(model.config.num_classes))
    probs = logits.softmax(-1)
    k = max(1, min(k, probs.shape[-1]))
    values, indexes = probs.topk(k, dim=-1)
    return [[Prediction(int(i), labels[int(i)], float(p)) for p, i in zip(vs, ix)]
            for vs, ix in zip(values, indexes)]


def classify(model: nn.Module, data: bytes | Stream, k: int = 5, limits: Limits = Limits()
             ) -> list[list[Prediction]]:
    """Top-k classes of every image in the stream."""
    return top_k(model, classify_logits(model, data, limits), k)


@torch.no_grad()
def reconstruct(model: nn.Module, data: bytes | Stream, limits: Limits = Limits()
                ) -> list[torch.Tensor]:
    """Decode every image of the stream to (3, H, W) in [0, 1]."""
    stream = data if isinstance(data, Stream) else parse(model, data, limits)
    out: list[torch.Tensor] = [torch.empty(0)] * len(stream.payloads)
    for part, size, y_hat in decompress(model, stream):
        for i, img in zip(part, model.reconstruct_latent(y_hat, size).float().cpu()):
            out[i] = img
    return out


def inspect(data: bytes, limits: Limits = Limits()) -> dict:
    """What a stream holds, without any model: sizes, bytes, bits per pixel."""
    stream = bitstream.unpack(data, limits)
    pixels = sum(h * w for h, w in stream.sizes)
    known = shipped_ids().get(stream.model_id)
    return {
        "version": bitstream.VERSION,
        "model_id": f"{stream.model_id:04x}",
        "model": f"{known[0]} q{known[1]}" if known else None,
        "images": len(stream.payloads),
        "sizes": [list(s) for s in stream.sizes],
        "bytes": len(data),
        "payload_bytes": [len(p) for p in stream.payloads],
        "container_bytes": len(data) - sum(len(p) for p in stream.payloads),
        "bpp": 8 * len(data) / pixels,
    }
