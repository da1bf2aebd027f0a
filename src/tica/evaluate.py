"""Evaluation from real bitstreams: every image is compressed to bytes, classified from those
bytes and decoded from them; bpp counts the whole single-image container."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from . import api, bitstream
from .data import ImageFolderSplit
from .losses import psnr

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_any_size(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image, on [0, 1] inputs. Standard (5 levels, 11-tap window) where the image
    allows it (sides > 160 px); on smaller images, 3-tap windows and as many levels as fit
    (3 at 32x32), the standard weights of those levels renormalised."""
    if min(x.shape[-2:]) > 160:
        return ms_ssim(x, y, data_range=1.0, size_average=False)
    levels = 1
    while levels < 5 and min(x.shape[-2:]) // 2 ** levels >= 4:
        levels += 1
    weights = x.new_tensor(MSSSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    win = _fspecial_gauss_1d(3, 1.5).repeat([x.shape[1], 1, 1, 1])
    values = []
    for i in range(levels):
        ssim_c, cs = _ssim(x, y, win=win, data_range=1.0, size_average=False, K=(0.01, 0.03))
        if i < levels - 1:
            values.append(torch.relu(cs))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    values.append(torch.relu(ssim_c))
    stacked = torch.stack(values)                               # (levels, B, C)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


@dataclass
class EvalResult:
    quality: int | None
    top1: float
    top5: float
    bpp: float
    psnr: float
    ms_ssim: float
    images: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_codec(model, split: ImageFolderSplit, batch: int = 250, quality: int | None = None
                   ) -> EvalResult:
    """Top-1/top-5 classified from real bitstreams, mean bpp of single-image streams (the
    11-byte container included), PSNR (of the mean MSE, in dB) and mean MS-SSIM."""
    start = time.perf_counter()
    correct1 = correct5 = 0
    bits = sq_err = ssim_sum = 0.0
    can_classify = hasattr(model, "classify_latent")
    for s in range(0, len(split), batch):
        x = split.images[s:s + batch].float().div(255)
        labels = split.labels[s:s + batch]
        stream = bitstream.unpack(api.compress(model, x))
        for size, payload in zip(stream.sizes, stream.payloads):
            bits += 8 * len(bitstream.pack(stream.model_id, [size], [payload]))
        if can_classify:
            top = api.classify_logits(model, stream).topk(5, dim=1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(1).sum())
        x_hat = torch.stack(api.reconstruct(model, stream))
        x_hat = (x_hat * 255).round() / 255                       # what a PNG would hold
        sq_err += float(F.mse_loss(x_hat * 255, x * 255, reduction="sum"))
        ssim_sum += float(ms_ssim_any_size(x_hat, x).sum())
    n = len(split)
    pixels = n * split.images.shape[-1] * split.images.shape[-2]
    return EvalResult(
        quality=quality, top1=correct1 / n if can_classify else float("nan"),
        top5=correct5 / n if can_classify else float("nan"), bpp=bits / pixels,
        psnr=float(psnr(torch.tensor(sq_err / (pixels * 3)))), ms_ssim=ssim_sum / n, images=n,
        seconds=time.perf_counter() - start)
