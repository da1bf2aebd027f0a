"""The library's front door: load a model, turn images into a tica bitstream, and classify,
decode or reconstruct from it. Every function takes a model and bytes or tensors and
returns values; the CLI and the server are thin layers over these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import bitstream
from .bitstream import Limits, Stream
from .config import TOP_K, quality_code, quality_from_code
from .cost import Budget
from .entropy import parallel
from .errors import BitstreamError, ConfigError, LimitError, ModelMismatchError, TicaError
from .image import ImageLike, encode_png, read_image
from .io import WeightsInfo
from .models import CompressionModel
from .models import refine as refinement
from .registry import (DEFAULT_MODEL, create_model, find_weights, get_config, load_checkpoint,
                       verified_file, weights_for_id)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Where the networks run: "auto" is the first CUDA GPU when one is visible, else the
    CPU; "cuda" (or "cuda:N") with none visible is refused. Entropy coding always runs on
    the CPU's coder threads (tica.entropy.parallel); the integer h_s runs on the GPU too,
    exactly, so streams decode the same on either."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU is visible to this process: use --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}") from None


# images per forward pass when the caller names no batch size: a GPU wants large batches;
# a CPU decodes fastest with about CPU_POSITIONS latent positions a batch (64 CIFAR images,
# 20 at 224x224: docs/design.md, "Two cores for decoding"), what the h_s and the ViT hold
# of a batch staying in cache
CPU_BATCH, GPU_BATCH = 64, 512
CPU_POSITIONS = 4096
# a CPU decodes batches of at most this many latent positions several at once (one a coder
# thread); larger ones one at a time on every thread, so that memory stays one batch's
CONCURRENT_POSITIONS = 4 * CPU_POSITIONS


def _batch_size(model: nn.Module, batch_size: int | None,
                size: tuple[int, int] | None = None) -> int:
    """The caller's batch size, else a GPU's, else a CPU's: for decoding images of `size`,
    as many as hold about CPU_POSITIONS latent positions (at most CPU_BATCH, at least 1)."""
    if batch_size is not None:
        return batch_size
    if next(model.parameters()).device.type == "cuda":
        return GPU_BATCH
    if size is None:
        return CPU_BATCH
    h, w = model.latent_grid(size)
    return max(1, min(CPU_BATCH, CPU_POSITIONS // max(1, h * w)))


def load(name: str | None = None, *, weights: str | Path | None = None,
         device: str | torch.device = "cpu", untrained: bool = False) -> nn.Module:
    """A coding-ready model in eval mode.

    weights: a checkpoint file (its config names the architecture). Otherwise the shipped
    weights of preset `name` (tica.registry's manifest). A preset with no shipped weights is
    refused unless `untrained=True` asks for its seeded random model, which is then labelled
    so. The rate is not part of the model: pass `quality` to `compress`.
    """
    device = resolve_device(device)
    if weights is not None:
        model = load_checkpoint(weights, device)
    else:
        name = name or DEFAULT_MODEL
        get_config(name)                        # an unknown preset is named as such
        entry = find_weights(name, "codec") or find_weights(name, "classifier")
        if entry is not None:
            model = load_checkpoint(verified_file(entry), device)
        elif untrained:
            model = create_model(name).to(device).eval()
            model.weights_info = WeightsInfo(untrained=True, seed=0)
        else:
            raise ConfigError(f"no trained weights are shipped for {name}; pass --weights "
                              "FILE, or --untrained for its seeded random model")
    if isinstance(model, CompressionModel) and not model.is_updated:
        model.update()
    return model


# With no model named, images up to this side get the CIFAR model and larger ones the photo
# model (`choose_model`).
SMALL_IMAGE_SIDE = 64
SMALL_IMAGE_MODEL = "tica-cifar"
PHOTO_MODEL = "tica-photo"
AUTO_MODELS = (SMALL_IMAGE_MODEL, PHOTO_MODEL)
AUTO = "auto"               # a server's model setting: serve AUTO_MODELS, pick one per image


def choose_model(sizes: Sequence[tuple[int, int]]) -> str:
    """The preset for images of these (H, W) when none is named; one stream has one model:
    tica-cifar if no side of any image exceeds SMALL_IMAGE_SIDE (64), else tica-photo.

    Why 64: the two presets classify different things (tica-cifar CIFAR-10's classes from a
    32x32 image's 8x8 tokens, tica-photo Imagenette's from 224x224 photographs), and up to
    64 px tica-cifar's grid stays within 4x the one it was trained on. Past it, tica-cifar's
    4x-downsampled grid makes a photograph a long sequence (7.0 GFLOP to classify 128x128
    against tica-photo's 0.9; 120 GFLOP for a 768x512 photo against 28). Measured on centre
    crops of 8 Kodak photos (`docs/design.md`, "The default model"): tica-photo codes photo
    crops in fewer bits at equal PSNR at every side (32 px: 0.43 bpp / 23.3 dB at its q1
    against tica-cifar's 0.82 / 22.9 at q3) but its curve flattens at 24.5-25.5 dB, where
    tica-cifar goes on to 30 dB (q8, 3.4 bpp)."""
    if not sizes:
        raise TicaError("no images to choose a model for")
    side = max(max(h, w) for h, w in sizes)
    return SMALL_IMAGE_MODEL if side <= SMALL_IMAGE_SIDE else PHOTO_MODEL


# Above this many pixels `png_bytes` does not compress: PNG takes ~0.4 s a megapixel here, and
# a photograph that large is many times any of its streams as a lossless PNG
PNG_CHECK_PIXELS = 1 << 22


def png_bytes(images: ImageLike | Sequence[ImageLike]) -> int | None:
    """Bytes the images take as lossless PNGs (8 bits a channel): what a stream should beat.
    None above PNG_CHECK_PIXELS in all (not worth the seconds)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if all(isinstance(t, torch.Tensor) for t in items) and sum(
            t.numel() // 3 for t in items) > PNG_CHECK_PIXELS:
        return None                                       # before any conversion
    images = _as_batch_list(images)
    if sum(img.shape[-1] * img.shape[-2] for img in images) > PNG_CHECK_PIXELS:
        return None
    return sum(len(encode_png(img)) for img in images)


def load_for_stream(data: bytes, device: str | torch.device = "cpu") -> nn.Module:
    """The shipped model whose id the stream carries, else the default model (which then
    refuses a stream it did not write with a clear ModelMismatchError)."""
    entry = weights_for_id(bitstream.peek_model_id(data))
    if entry is None:
        return load(device=device)
    return load_checkpoint(verified_file(entry), resolve_device(device))


def describe(model: nn.Module, quality: float | Sequence[float | None] | None = None) -> str:
    """"preset qQ": the model and the quality it codes at (or a stream was coded at; with
    none, its default, or a fixed-rate model's own rate point); for several qualities
    (a stream's, one an image) "preset qLOW..HIGH" where they differ."""
    info = model.weights_info
    label = model.config.name
    if isinstance(quality, Sequence):
        known = [q for q in quality if q is not None]
        quality = None if not known else known[0] if len(set(known)) == 1 else (min(known),
                                                                                max(known))
    if quality is None:
        quality = model.config.default_quality or info.quality
    if isinstance(quality, tuple):
        label += f" q{quality[0]:g}..{quality[1]:g}"
    elif quality is not None:
        label += f" q{quality:g}"
    return label + (" (UNTRAINED: random weights, seed 0)" if info.untrained else "")


def _as_batch_list(images) -> list[torch.Tensor]:
    """One image (anything `tica.image.read_image` reads: a path, file bytes, a PIL image, a
    numpy array, a (3, H, W) tensor), a batch ((B, 3, H, W) tensor, (B, H, W, C) array) or a
    list of images -> (3, H, W) tensors in [0, 1]. ImageError for anything else."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise TicaError("no images to compress")
    return [read_image(item) for item in items]


def _codec(model: nn.Module) -> CompressionModel:
    if not isinstance(model, CompressionModel):
        raise TicaError(f"model {model.config.name!r} has no codec (it works on pixels)")
    return model


def _groups(keys: Sequence) -> dict:
    """{key: indexes of the items with that key}, keys in first-seen order."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def check_encode(codec: CompressionModel, images: Sequence[torch.Tensor],
                 budget: Budget | None, refine: int = 0) -> None:
    """Before any work: encoding `images` (with `refine` steps of refinement: steps >= 0, each
    image within the refinement's size) and every operation on the stream it writes within
    `budget` (None: any). TicaError, LimitError or BudgetError otherwise."""
    sizes = [tuple(img.shape[-2:]) for img in images]
    try:
        bitstream.check_sizes(sizes)
    except LimitError as exc:
        raise LimitError(f"a stream of these images would be refused by its decoder: {exc}; "
                         "encode fewer or smaller images a stream") from None
    refinement.check_steps(refine, sizes)
    if budget is not None:
        budget.check(codec, sizes, codec.operations, refine)


@torch.no_grad()
def compress(model: nn.Module, images: ImageLike | Sequence[ImageLike],
             quality: float | Sequence[float] | None = None, batch_size: int | None = None,
             budget: Budget | None = Budget(), refine: int = 0) -> bytes:
    """Images (one, a list, or a (B, 3, H, W) batch; each a path, file bytes, a PIL image,
    a numpy array or a (3, H, W) tensor in [0, 1]: tica.image.read_image) -> one tica
    bitstream. A variable-rate model codes at `quality`: one for all images, or one per image
    (default: its config's `default_quality`); the stream records it. BudgetError, before any work, if
    encoding or any operation on the stream it writes is over `budget` (None: unbounded),
    so no stream comes out that its own decoder would refuse. `refine` > 0: that many steps
    of encoder-side refinement per image (tica.models.refine): a better stream for the same
    decoder, at about `refine` x 3 reconstructions of encoding time."""
    codec = _codec(model)
    images = _as_batch_list(images)
    check_encode(codec, images, budget, refine)
    if quality is None or isinstance(quality, (int, float)):
        quality = [quality] * len(images)
    if len(quality) != len(images):
        raise TicaError(f"{len(quality)} qualities for {len(images)} images")
    qualities = [codec.check_quality(q) for q in quality]
    keys = [(tuple(img.shape[-2:]), q) for img, q in zip(images, qualities)]
    payloads: list[bytes] = [b""] * len(images)
    device = next(codec.parameters()).device
    batch_size = _batch_size(codec, batch_size)
    for (_, q), idx in _groups(keys).items():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            batch = (images[part[0]][None] if len(part) == 1        # no copy of a photo
                     else torch.stack([images[i] for i in part])).to(device)
            for i, p in zip(part, codec.compress(batch, q, refine)):
                payloads[i] = p
    codes = None if codec.quality_range is None else [quality_code(q) for q in qualities]
    return bitstream.pack(codec.model_id, [k[0] for k in keys], payloads, codes)


@torch.no_grad()
def qualities_for_bpp(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                      target_bpp: float, budget: Budget | None = Budget(), refine: int = 0
                      ) -> list[float]:
    """Per image, the highest quality (on the stream's 1/16 grid) whose single-image stream
    takes at most `target_bpp` bits per pixel, container included: a bisection over real
    streams (written with `refine` steps of refinement, as `compress` will write them). An
    image that exceeds the target even at the lowest quality gets that one. BudgetError first
    if `compress` would refuse the images."""
    codec = _codec(model)
    rng = codec.quality_range
    if rng is None:
        raise ConfigError(f"{codec.config.name} is a fixed-rate model: a target bpp needs a "
                          f"variable-rate one")
    if not target_bpp > 0:
        raise ConfigError(f"the target bpp must be positive, got {target_bpp}")
    images = _as_batch_list(images)
    check_encode(codec, images, budget, refine)
    device = next(codec.parameters()).device

    def bpp(img: torch.Tensor, code: int) -> float:
        q = quality_from_code(code)
        payload = codec.compress(img[None].to(device), q, refine)[0]
        nbytes = len(bitstream.pack(codec.model_id, [tuple(img.shape[-2:])], [payload], [code]))
        return 8 * nbytes / (img.shape[-1] * img.shape[-2])

    out = []
    for img in images:
        lo, hi = quality_code(rng[0]), quality_code(rng[1])   # invariant: answer in [lo, hi]
        if bpp(img, hi) <= target_bpp:
            out.append(quality_from_code(hi))
            continue
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bpp(img, mid) <= target_bpp:
                lo = mid
            else:
                hi = mid - 1
        out.append(quality_from_code(lo))
    return out


def stream_qualities(stream: Stream) -> list[float | None]:
    """The quality each image of a stream was coded at (None: a fixed-rate model's)."""
    if stream.quality_codes is None:
        return [None] * len(stream.payloads)
    return [quality_from_code(c) for c in stream.quality_codes]


def parse(model: nn.Module, data: bytes, limits: Limits = Limits()) -> Stream:
    """Unpack a stream and check it was written by this model (`check_stream`)."""
    stream = bitstream.unpack(data, limits)
    check_stream(model, stream)
    return stream


def check_stream(model: nn.Module, stream: Stream) -> None:
    """ModelMismatchError unless `model` wrote the stream; BitstreamError unless its quality
    codes are what that model's streams hold (one per image, in its range, for a
    variable-rate model; none for a fixed-rate one)."""
    codec = _codec(model)
    if stream.model_id != codec.model_id:
        raise ModelMismatchError(
            f"bitstream was written by model id {stream.model_id:04x}, but the loaded model "
            f"{describe(model)} has id {codec.model_id:04x}: decode with the same weights "
            f"(--model / --weights) that encoded it")
    rng = codec.quality_range
    if (rng is None) != (stream.quality_codes is None):
        raise BitstreamError("malformed stream: " + (
            "it records a quality, but its model codes at one fixed rate" if rng is None
            else "its variable-rate model needs the quality it was coded at, and it records none"))
    if rng is not None and not all(rng[0] <= q <= rng[1] for q in stream_qualities(stream)):
        raise BitstreamError(f"malformed stream: a quality code lies outside the model's range "
                             f"{rng[0]:g}..{rng[1]:g}")


def parse_within(model: nn.Module, data: bytes | Stream, op: str, limits: Limits = Limits(),
                 budget: Budget | None = Budget()) -> Stream:
    """`parse`, then BudgetError if `op` on the whole stream is over `budget` (None:
    unbounded): from the header's image sizes alone, before anything is decoded."""
    stream = data if isinstance(data, Stream) else parse(model, data, limits)
    if budget is not None:
        budget.check(model, stream.sizes, (op,))
    return stream


def decompress(model: nn.Module, data: bytes | Stream, limits: Limits = Limits(),
               batch_size: int | None = None, budget: Budget | None = Budget()):
    """Yield (image indexes, image size, y_hat (b, M, h, w)) per batch of images of one size
    (and one quality) in the stream. The budget is checked on the call, before anything is
    decoded (not on the first next())."""
    codec = _codec(model)
    stream = parse_within(model, data, "decompress", limits, budget)
    return _decompress(codec, stream, batch_size)


def _decompress(codec: CompressionModel, stream: Stream, batch_size: int | None):
    """The stream's batches decoded, in order; on a CPU several at once, each on a coder
    thread of its own (`parallel.in_order`), the h_s and the coder of one batch beside
    another's, where every batch holds at most CONCURRENT_POSITIONS latent positions."""
    keys = list(zip(stream.sizes, stream_qualities(stream)))
    batches, positions = [], 0
    for (size, quality), idx in _groups(keys).items():
        step = _batch_size(codec, batch_size, size)
        h, w = codec.latent_grid(size)
        positions = max(positions, min(step, len(idx)) * h * w)
        batches += [(idx[start:start + step], size, quality)
                    for start in range(0, len(idx), step)]
    device = next(codec.parameters()).device

    @torch.no_grad()                        # grad mode is per thread: set in the one that runs
    def decode(batch: tuple[list[int], tuple[int, int], float | None]):
        part, size, quality = batch
        y_hat = codec.decompress([stream.payloads[i] for i in part], size, quality)
        return part, size, y_hat.to(device)

    if codec.coding_device.type != "cpu" or positions > CONCURRENT_POSITIONS:
        return map(decode, batches)
    return parallel.in_order(decode, batches)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    prob: float


def can_classify(model: nn.Module) -> bool:
    """Whether a model may classify: it has a ViT head that its weights do not say was left
    untrained (`WeightsInfo.classifier_trained` False: a codec-only run, alpha = 0, whose
    head never saw a label). Seeded random weights, asked for explicitly, classify at chance."""
    info = model.weights_info
    return hasattr(model, "classify_latent") and (info.untrained or info.classifier_trained is not False)


@torch.no_grad()
def classify_logits(model: nn.Module, data: bytes | Stream, limits: Limits = Limits(),
                    budget: Budget | None = Budget()) -> torch.Tensor:
    """(num_images, num_classes) logits straight from the bitstream: entropy decoding and the
    ViT only; the pixel decoder g_s never runs. BudgetError first if that is over `budget`."""
    if not hasattr(model, "classify_latent"):
        raise TicaError(f"model {model.config.name!r} has no classifier")
    if not can_classify(model):
        raise TicaError(f"{describe(model)} was trained as a codec only (alpha = 0): its "
                        f"classifier head never saw a label; decode it, or classify with a "
                        f"model trained with alpha > 0")
    stream = parse_within(model, data, "classify", limits, budget)
    out = torch.empty(len(stream.payloads), model.config.num_classes)
    pending = []            # logits fetched at the end: a GPU need not finish one batch first
    for part, _, y_hat in decompress(model, stream, budget=None):
        pending.append((part, model.classify_latent(y_hat).float()))
    for part, logits in pending:
        out[part] = logits.cpu()
    return out


def size_json(size: tuple[int, int]) -> dict:
    """An image's (H, W) as JSON gives it: {"width", "height"} (people read W x H)."""
    return {"width": int(size[1]), "height": int(size[0])}


def classify_report(model: nn.Module, data: bytes, stream: Stream,
                    predictions: list[list[Prediction]]) -> dict:
    """The one JSON shape of a stream's classes, for one image or many, from the CLI and the
    server alike: the model, the stream's bytes and bpp, and per image its size, bytes, bpp,
    quality and top classes."""
    qualities = stream_qualities(stream)
    images = []
    for size, payload, quality, preds in zip(stream.sizes, stream.payloads, qualities,
                                             predictions):
        entry = {"size": size_json(size), "bytes": len(payload),
                 "bpp": 8 * len(payload) / (size[0] * size[1])}
        if quality is not None:
            entry["quality"] = quality
        entry["top"] = [{"label": p.label, "index": p.index, "prob": round(p.prob, 6)}
                        for p in preds]
        images.append(entry)
    pixels = sum(h * w for h, w in stream.sizes)
    return {"model": describe(model, qualities), "model_id": f"{stream.model_id:04x}",
            "bytes": len(data), "bpp": 8 * len(data) / pixels, "images": images}


def top_k(model: nn.Module, logits: torch.Tensor, k: int = TOP_K) -> list[list[Prediction]]:
    labels = model.config.labels or tuple(f"class_{i}" for i in range(model.config.num_classes))
    probs = logits.softmax(-1)
    k = max(1, min(k, probs.shape[-1]))
    values, indexes = probs.topk(k, dim=-1)
    return [[Prediction(int(i), labels[int(i)], float(p)) for p, i in zip(vs, ix)]
            for vs, ix in zip(values, indexes)]


def classify(model: nn.Module, data: bytes | Stream, k: int = TOP_K, limits: Limits = Limits(),
             budget: Budget | None = Budget()) -> list[list[Prediction]]:
    """Top-k classes of every image in the stream."""
    return top_k(model, classify_logits(model, data, limits, budget), k)


@torch.no_grad()
def reconstruct(model: nn.Module, data: bytes | Stream, limits: Limits = Limits(),
                budget: Budget | None = Budget()) -> list[torch.Tensor]:
    """Decode every image of the stream to (3, H, W) in [0, 1]; BudgetError first if that
    is over `budget` (None: unbounded)."""
    stream = parse_within(model, data, "reconstruct", limits, budget)
    out: list[torch.Tensor] = [torch.empty(0)] * len(stream.payloads)
    for part, size, y_hat in decompress(model, stream, budget=None):
        for i, img in zip(part, model.reconstruct_latent(y_hat, size).float().cpu()):
            out[i] = img
    return out


def inspect(data: bytes, limits: Limits = Limits()) -> dict:
    """What a stream holds, without any model: sizes, bytes, bits per pixel."""
    stream = bitstream.unpack(data, limits)
    pixels = sum(h * w for h, w in stream.sizes)
    known = weights_for_id(stream.model_id)
    qualities = stream_qualities(stream)
    label = None
    if known is not None:
        label = known.preset + ("" if qualities[0] is None else f" q{qualities[0]:g}"
                                + (" ..." if len(set(qualities)) > 1 else ""))
    return {
        "version": bitstream.VERSION,
        "model_id": f"{stream.model_id:04x}",
        "model": label,
        "qualities": qualities,
        "images": len(stream.payloads),
        "sizes": [size_json(s) for s in stream.sizes],
        "bytes": len(data),
        "payload_bytes": [len(p) for p in stream.payloads],
        "container_bytes": len(data) - sum(len(p) for p in stream.payloads),
        "bpp": 8 * len(data) / pixels,
    }
