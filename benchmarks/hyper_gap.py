"""The gap between a codec's training-time rate estimate and its real streams, and the spread
of its hyper-latent z: the table of docs/design.md on `hyper_proxy`.

    python benchmarks/hyper_gap.py [--images 256] [WEIGHTS[=QUALITY] ...]

With no weights: the shipped tica-cifar at quality 6 and the fixed-rate comparison run
of scripts/plans/cpu-ablations.json under $TICA_CACHE/runs/cpu-ablations
(tica-cifar-fixed-q6, and a tica-cifar-fixed-q6-noise beside it if kept). The estimate is -sum(log2 p) in training mode (uniform
noise on y and z, the proxy the rate term trains on); the real rate is that of the streams.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tica.cli import data_root
import tica
from tica.data import cache_dir, load_split
from tica.models.codec import nhwc, pad_to

ROOT = Path(__file__).resolve().parents[1]


def measure(model, x: torch.Tensor, quality: float | None) -> tuple[float, float, float]:
    """(training-mode estimate, real bpp, std of z) over the images x."""
    pixels = x[:, 0].numel()
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()
        _, likelihoods = model.encode_latent(x, quality=quality)
        model.eval()
        estimate = sum(-torch.log2(l).sum() for l in likelihoods.values()).item() / pixels
        y = model.g_a(nhwc(pad_to(x, model.config.stride))).float()
        gain, _ = model.gain_pair(quality, x.shape[0])
        z = model.h_a(model.hyper_input(y, gain))
    real = 8 * len(tica.compress(model, x, quality=quality)) / pixels
    return estimate, real, z.std().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", help="checkpoints, optionally =QUALITY")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--data", type=Path, default=Path(data_root()))
    args = parser.parse_args()
    split = load_split(args.data / "cifar10-jpeg.tar.gz", "test", limit=args.images)
    x = split.images[: args.images].float() / 255
    runs = cache_dir() / "runs" / "cpu-ablations"
    specs = args.weights or ["tica-cifar=6"] + [
        str(p) for p in (runs / "tica-cifar-fixed-q6-noise" / "model.safetensors",
                         runs / "tica-cifar-fixed-q6" / "model.safetensors") if p.is_file()]
    print("| model | estimate (noise) | real streams | z std |\n|---|---:|---:|---:|")
    for spec in specs:
        source, _, q = spec.partition("=")
        quality = float(q) if q else None
        model = (tica.load(source) if not source.endswith(".safetensors")
                 else tica.load_checkpoint(source))
        estimate, real, z_std = measure(model, x, quality)
        print(f"| {spec} | {estimate:.2f} bpp | {real:.2f} bpp | {z_std:.2f} |")


if __name__ == "__main__":
    main()
