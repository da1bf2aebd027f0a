"""Which preset suits a small image: tica-cifar against tica-photo on photo crops.

    python benchmarks/default_model.py             # the table of docs/design.md, "The default model"
    python benchmarks/default_model.py --photos 2  # a quick look

Centre crops of the first Kodak photographs at several sides, each coded by both shipped
presets at standard qualities 1, 3, 6 and 8 (real streams): mean bpp and PSNR per crop side,
and what each preset's classification costs at that side (tica.cost). `tica.choose_model`'s
rule (tica-cifar up to 64 px) is argued from this table and the presets' label sets.
Writes docs/results/default_model.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tica.cli import data_root
import tica
from tica.image import read_image
from tica.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("tica-cifar", "tica-photo")
QUALITIES = (1, 3, 6, 8)


def centre_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[1:]
    top, left = (h - side) // 2, (w - side) // 2
    return x[:, top:top + side, left:left + side]


def measure(model, quality: int, crops: list[torch.Tensor]) -> dict:
    bpp, psnr = [], []
    for crop in crops:
        data = tica.compress(model, crop, quality=quality)
        bpp.append(8 * len(data) / crop[0].numel())
        mse = (tica.reconstruct(model, data)[0].clamp(0, 1) - crop).square().mean().item()
        psnr.append(10 * math.log10(1 / mse))
    return {"bpp": sum(bpp) / len(bpp), "psnr": sum(psnr) / len(psnr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=Path, default=Path(data_root()) / "kodak")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--sides", default="32,64,128")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "default_model.json")
    args = parser.parse_args()
    photos = [read_image(p) for p in sorted(args.kodak.glob("*.png"))[: args.photos]]
    rows = []
    print("| side | preset | " + " | ".join(f"q{q}: bpp / PSNR" for q in QUALITIES)
          + " | classify GFLOP |")
    print("|---:|---|" + "---:|" * (len(QUALITIES) + 1))
    models = {name: tica.load(name) for name in PRESETS}
    for side in (int(s) for s in args.sides.split(",")):
        crops = [centre_crop(x, side) for x in photos]
        for name, model in models.items():
            points = {f"q{q}": measure(model, q, crops) for q in QUALITIES}
            gflop = model.cost((side, side), "classify")
            rows.append({"side": side, "preset": name, "points": points, "classify_gflop": gflop})
            cells = " | ".join(f"{p['bpp']:.2f} / {p['psnr']:.2f} dB" for p in points.values())
            print(f"| {side} | {name} | {cells} | {gflop:.2f} |")
    atomic_write_text(args.out, json.dumps({"photos": len(photos), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
