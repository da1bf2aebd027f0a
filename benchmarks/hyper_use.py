"""How much a codec's hyper-latent z says, and what it costs: real streams of four Kodak
images at q1, q4 and q8 (bpp, PSNR), how much of z is non-zero, how often a y symbol's scale
index differs from its channel's most common one (0: one fixed scale per channel, a
factorized prior in all but name), and the q1 cost of a flat grey 512x512 image.

    python benchmarks/hyper_use.py                         # the shipped tica-photo
    python benchmarks/hyper_use.py runs/a/model.safetensors runs/b/model.safetensors

Prints one JSON line per model (docs/design.md, "z collapse")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tica.cli import data_root
import tica
from tica.image import read_image
from tica.losses import psnr

KODAK = ("kodim01", "kodim07", "kodim15", "kodim23")
DATA = Path(data_root())


def index_spread(model, image: torch.Tensor, quality: float) -> tuple[float, float]:
    """(share of z that is non-zero, share of y symbols whose scale index is not their
    channel's most common one) for one image."""
    z, indexes, _, _ = model.analyze(image[None], quality)
    idx = indexes[0]
    mode = np.array([np.bincount(idx[c].ravel()).argmax() for c in range(idx.shape[0])])
    return float((z != 0).float().mean()), float((idx != mode[:, None, None]).mean())


def score(model, images: list[torch.Tensor]) -> dict:
    out = {}
    for q in (1.0, 4.0, 8.0):
        bits = pixels = 0
        psnrs = []
        for x in images:
            data = tica.compress(model, x, quality=q, budget=None)
            x_hat = tica.reconstruct(model, data, budget=None)[0]
            bits, pixels = bits + 8 * len(data), pixels + x.shape[1] * x.shape[2]
            psnrs.append(float(psnr(F.mse_loss(x_hat * 255, x * 255))))
        out[f"q{q:g}"] = {"bpp": round(bits / pixels, 4), "psnr": round(float(np.mean(psnrs)), 3)}
    z_nonzero, off_mode = index_spread(model, images[0], 1.0)
    grey = torch.full((3, 512, 512), 0.5)
    out.update(z_nonzero=round(z_nonzero, 4), index_off_mode=round(off_mode, 4),
               grey512_q1_bpp=round(8 * len(tica.compress(model, grey, quality=1.0)) / 512 ** 2, 4))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", help="checkpoints (default: the shipped tica-photo)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    images = [read_image(args.data / "kodak" / f"{name}.png") for name in KODAK]
    for path in args.weights or [None]:
        model = tica.load("tica-photo") if path is None else tica.load(weights=path)
        print(json.dumps({"model": path or "tica-photo (shipped)", **score(model, images)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
