"""One evaluator for every pipeline: tica from its bitstream, a learned codec or a classical
codec followed by decode and a pixel classifier, or clean pixels. Every image is turned into
real bytes (a single-image tica stream or a whole image file), classified and decoded from
them; the metrics are the same code for all.

    pipeline.run(x) -> Coded(bytes, payload bytes, x_hat, logits) -> evaluate() -> EvalResult
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from . import api, bitstream
from .data import (ImageFolderSplit, data_name, held_out_split, image_files, is_image_folder,
                   load_split)
from .errors import ImageError, TicaError
from .image import read_image
from .io import atomic_write_text
from .losses import psnr

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MSSSIM_CHUNK_PIXELS = 1 << 18   # pixels a pass: its five maps stay in cache (about 4x faster)


def ms_ssim_any_size(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image, on [0, 1] inputs. Standard where the image allows it (sides > 160
    px): Wang et al.'s 5 levels, an 11-tap Gaussian window of sigma 1.5, odd sides padded
    before each 2x average pooling (the numbers pytorch_msssim gives, within float32
    rounding); on smaller images, 3-tap windows and as many levels as fit (4 at 32x32), the
    standard weights of those levels renormalised. A few images a pass (MSSSIM_CHUNK_PIXELS).
    ImageError for a side under 3 px (no window fits)."""
    side = min(x.shape[-2:])
    if side < 3:
        raise ImageError(f"MS-SSIM needs images of at least 3x3 pixels, got "
                         f"{x.shape[-1]}x{x.shape[-2]}")
    size, levels = (11, 5) if side > 160 else (3, 1)
    while levels < 5 and side // 2 ** levels >= 4:
        levels += 1
    weights = x.new_tensor(MSSSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    window = _gaussian_window(size, 1.5).to(x)
    step = max(1, MSSSIM_CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
    return torch.cat([_ms_ssim(x[i:i + step], y[i:i + step], window, weights)
                      for i in range(0, len(x), step)])


def _ms_ssim(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, weights: torch.Tensor
             ) -> torch.Tensor:
    values = []
    for _ in range(len(weights) - 1):
        values.append(torch.relu(_ssim_and_cs(x, y, window, ssim=False)[1]))
        pad = [s % 2 for s in x.shape[-2:]]
        x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    values.append(torch.relu(_ssim_and_cs(x, y, window)[0]))
    stacked = torch.stack(values)                               # (levels, B, C)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The separable Gaussian window over each channel, 'valid' (no padding)."""
    c = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, window.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor,
                 k: tuple[float, float] = (0.01, 0.03), ssim: bool = True
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(SSIM, contrast-structure term) per image and channel, data range 1 (Wang et al.);
    SSIM None unless `ssim`. The five local moments in one blur."""
    c1, c2 = k[0] ** 2, k[1] ** 2
    mu_x, mu_y, xx, yy, xy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1),
                                   window).chunk(5, dim=1)
    mu_xy, mu_xx, mu_yy = mu_x * mu_y, mu_x ** 2, mu_y ** 2
    cs_map = (2 * (xy - mu_xy) + c2) / (xx - mu_xx + yy - mu_yy + c2)
    if not ssim:
        return None, cs_map.flatten(2).mean(-1)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


# ---- pipelines -----------------------------------------------------------------------------

@dataclass
class Coded:
    """What a pipeline made of a batch: bytes per image (the whole file or single-image
    stream), the bytes a deployment could not share out of band, the decoded pixels (8-bit
    values in [0, 1]) and the class logits (None where a pipeline has none)."""

    nbytes: list[int]
    payload: list[int]
    x_hat: torch.Tensor | None
    logits: torch.Tensor | None
    z_bytes: list[int] | None = None      # learned codecs: the hyper-latent's share


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of the decoded image would hold."""
    return (x.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def classify_pixels(classifier, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier.classify_pixels(x[s:s + batch].to(device)).float().cpu()
                      for s in range(0, len(x), batch)])


class Pipeline:
    """Images in, Coded out. `name` and `quality` label the rate point in results."""

    name: str = "pipeline"
    quality: float | None = None

    def run(self, x: torch.Tensor, classify: bool = True) -> Coded:
        """x (B, 3, H, W) in [0, 1]; `classify` False: the images have no labels, and the
        logits (None) need not be computed."""
        raise NotImplementedError


class Uncompressed(Pipeline):
    """The accuracy ceiling: a pixel classifier on the clean images (24 bpp of raw RGB)."""

    def __init__(self, classifier, name: str = "uncompressed") -> None:
        self.classifier, self.name = classifier, name

    def run(self, x: torch.Tensor, classify: bool = True) -> Coded:
        n = [3 * x.shape[-1] * x.shape[-2]] * len(x)
        return Coded(n, n, None, classify_pixels(self.classifier, x) if classify else None)


class LearnedPipeline(Pipeline):
    """A tica-family codec through real single-image bitstreams. With no `classifier`, the
    model classifies straight from the bitstream (tica); with one, the decoded pixels go to
    it (codec, then decode, then classify)."""

    def __init__(self, model, name: str | None = None, quality: float | None = None,
                 classifier=None, refine: int = 0) -> None:
        self.model, self.classifier, self.refine = model, classifier, refine
        self.name = name or model.config.name
        if model.config.quality_range is None:
            # a fixed-rate model codes at its one rate: `quality` (else its file's) labels it
            self.coding_quality = None
            self.quality = quality if quality is not None else model.weights_info.quality
        else:
            self.coding_quality = self.quality = model.check_quality(quality)

    def run(self, x: torch.Tensor, classify: bool = True) -> Coded:
        q = self.coding_quality
        # a batch of the evaluation's own images: no per-request budget (tica.cost) applies
        stream = bitstream.unpack(api.compress(self.model, x, quality=q, budget=None,
                                               refine=self.refine))
        nbytes = [len(bitstream.pack(stream.model_id, [size], [payload],
                                     None if code is None else [code]))
                  for size, payload, code in zip(stream.sizes, stream.payloads,
                                                 stream.quality_codes or [None] * len(x))]
        x_hat = quantize_8bit(torch.stack(api.reconstruct(self.model, stream, budget=None)))
        if not classify:
            logits = None
        elif self.classifier is not None:
            logits = classify_pixels(self.classifier, x_hat)
        elif api.can_classify(self.model):
            logits = api.classify_logits(self.model, stream, budget=None)
        else:
            logits = None
        return Coded(nbytes, [len(p) for p in stream.payloads], x_hat, logits,
                     self.model.z_bytes(stream.payloads, x.shape[-2:]))


# ---- the evaluator ---------------------------------------------------------------------------

@dataclass
class EvalResult:
    """One rate point of one pipeline. bpp counts whole files / streams; bpp_payload the part
    not shareable out of band. psnr is the PSNR of the mean MSE (finite even when some images
    come back exact), psnr_per_image the mean of per-image PSNRs (CompressAI's convention for
    Kodak). None: not applicable (no labels, no decoder)."""

    pipeline: str
    quality: float | None
    top1: float | None
    top5: float | None
    bpp: float
    bpp_payload: float
    psnr: float | None
    psnr_per_image: float | None
    ms_ssim: float | None
    images: int
    seconds: float
    z_fraction: float | None = None      # learned codecs: share of the payload bytes spent on z
    per_image: PerImage | None = field(default=None, repr=False, compare=False)

    @classmethod
    def metric_names(cls) -> list[str]:
        """The aggregate metrics' names: every field but `per_image` (a results file's columns)."""
        return [f.name for f in fields(cls) if f.name != "per_image"]

    def to_dict(self) -> dict:
        """The aggregate metrics (not `per_image`)."""
        return {name: getattr(self, name) for name in self.metric_names()}


@dataclass
class PerImage:
    """What each image of an evaluation cost and got, in the data's order: its file or stream
    bits, its pixels and (labelled data) whether its top-1 class was right and which class it
    was. Two pipelines evaluated on the same data can be compared image by image (a paired
    test: tica_tools.rd.curve_verdict; the share of answers that changed)."""

    bits: list[int]
    pixels: list[int]
    correct: list[bool] | None
    predicted: list[int] | None = None


def split_batches(split: ImageFolderSplit, batch: int = 250
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for s in range(0, len(split), batch):
        yield split.images[s:s + batch].float().div(255), split.labels[s:s + batch]


Batches = Iterable[tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class EvalData:
    """What an evaluation runs over: a labelled split (same-size images, in batches) or a
    plain folder of images (any sizes, one at a time, no labels: Kodak). `batches()` starts
    a fresh pass; `name` is the results' key, e.g. cifar10_test_10k or kodak_24."""

    name: str
    count: int
    batches: Callable[[], Batches]
    split: ImageFolderSplit | None = None        # the labelled split, when there is one


def eval_data(data: str | Path, split: str | None = None, limit: int | None = None,
              batch: int = 250) -> EvalData:
    """`data` as an evaluation reads it: a class-per-folder data set or its archive (its
    held-out split unless `split` names one; `limit`: a class-balanced subset), or a folder
    of images (`limit`: the first images by name; a file that is not a readable image is an
    ImageError naming it)."""
    def count(n: int) -> str:
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)

    if limit is not None and limit < 1:
        raise TicaError(f"--limit must be at least 1, got {limit}")
    if is_image_folder(data):
        if split is not None:
            raise TicaError(f"{data} is a folder of images without splits: drop --split")
        files = image_files(data)[:limit]
        return EvalData(f"{data_name(data)}_{count(len(files))}", len(files),
                        lambda: ((read_image(f)[None], None) for f in files))
    split = split or held_out_split(data)
    loaded = load_split(data, split, limit=limit)
    return EvalData(f"{data_name(data)}_{split}_{count(len(loaded))}", len(loaded),
                    lambda: split_batches(loaded, batch), loaded)


@torch.no_grad()
def evaluate(pipeline: Pipeline, batches: Batches) -> EvalResult:
    """Run `pipeline` over (images in [0, 1], labels or None) batches and score it."""
    start = time.perf_counter()
    correct5 = 0
    payload_bits = sq_err_sum = ssim_sum = 0.0
    z_bytes: int | None = None
    psnrs: list[float] = []
    image_bits: list[int] = []
    image_pixels: list[int] = []
    right: list[bool] = []
    predicted: list[int] = []
    for x, labels in batches:
        coded = pipeline.run(x, classify=labels is not None)
        image_bits += [8 * b for b in coded.nbytes]
        image_pixels += [x.shape[-1] * x.shape[-2]] * len(x)
        payload_bits += 8 * sum(coded.payload)
        if coded.z_bytes is not None:
            z_bytes = (z_bytes or 0) + sum(coded.z_bytes)
        if coded.logits is not None and labels is not None:
            top = coded.logits.topk(min(5, coded.logits.shape[1]), dim=1).indices
            right += (top[:, 0] == labels).tolist()
            predicted += top[:, 0].tolist()
            correct5 += int((top == labels[:, None]).any(1).sum())
        if coded.x_hat is not None:
            mse = ((coded.x_hat * 255 - x * 255) ** 2).flatten(1).mean(1)      # (B,)
            sq_err_sum += float(mse.sum())
            psnrs += psnr(mse).tolist()
            ssim_sum += float(ms_ssim_any_size(coded.x_hat, x).sum())
    n = len(image_bits)
    if n == 0:
        raise ValueError("no images to evaluate")
    decoded = bool(psnrs)
    bits, pixels, labelled = sum(image_bits), sum(image_pixels), len(right)
    answers = (right, predicted) if labelled == n else (None, None)   # one per image, or none
    return EvalResult(
        pipeline=pipeline.name, quality=pipeline.quality,
        top1=sum(right) / labelled if labelled else None,
        top5=correct5 / labelled if labelled else None,
        bpp=bits / pixels, bpp_payload=payload_bits / pixels,
        psnr=float(psnr(torch.tensor(sq_err_sum / n))) if decoded else None,
        psnr_per_image=sum(psnrs) / len(psnrs) if decoded else None,
        ms_ssim=ssim_sum / n if decoded else None, images=n,
        seconds=time.perf_counter() - start,
        z_fraction=8 * z_bytes / payload_bits if z_bytes is not None and payload_bits else None,
        per_image=PerImage(image_bits, image_pixels, *answers))


def evaluate_codec(model, split: ImageFolderSplit, batch: int = 250, quality: int | None = None
                   ) -> EvalResult:
    """A tica-family model from real single-image bitstreams over a labelled split."""
    return evaluate(LearnedPipeline(model, quality=quality), split_batches(split, batch))


def evaluate_curve(model, data: EvalData, qualities: Iterable[float | None] | None = None,
                   refine: int = 0) -> Iterator[EvalResult]:
    """A tica-family model's rate points on `data`, one EvalResult per quality as it is
    measured: `qualities` (checked against the model), default its standard points (one
    point, None, for a fixed-rate model); streams encoded with `refine` steps of
    refinement (tica.models.refine)."""
    if qualities is None:
        qualities = model.config.standard_qualities or [None]
    for q in qualities:
        q = model.check_quality(q) if q is not None else None
        name = f"{model.config.name}, refined ({refine} steps)" if refine else None
        yield evaluate(LearnedPipeline(model, name, q, refine=refine), data.batches())


def write_results(results: list[dict], path: str | Path) -> None:
    """`path`.json (a list of result dicts) and `path`.csv, each written atomically."""
    path = Path(path)
    results = [{k: _finite(v) for k, v in r.items()} for r in results]
    atomic_write_text(path.with_suffix(".json"), json.dumps(results, indent=1))
    columns = EvalResult.metric_names()
    columns += sorted({k for r in results for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    atomic_write_text(path.with_suffix(".csv"), buf.getvalue())


def _finite(value):
    """Strict JSON has no NaN or infinity: they become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
