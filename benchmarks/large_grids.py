"""Large token grids: global attention against attention in windows of the trained grid.

    python benchmarks/large_grids.py                      # the table of docs/design.md
    python benchmarks/large_grids.py --cifar 100 --imagenette 40 --kodak 4   # a quick look
    python benchmarks/large_grids.py --kodak 0 --imagenette 0 --cifar 300   # one case again;
                                                          # the others keep their results

Each case decodes the same real streams once (entropy decoding is the same either way), then
runs the ViT (classify) and the ViT blocks + FAM + g_s (reconstruct) from the same y_hat in
both modes, side by side in one process: top-1 against the labels, PSNR against the original,
and the time of each, as a ratio. The cases are grids larger than the trained one:

- tica-photo (trained on 224x224, a 14x14 grid) on Kodak (768x512: 48x32, 7.8x the tokens);
- tica-photo on Imagenette validation photographs shown at 448x448 (28x28, 4x);
- tica-cifar (trained on 32x32, 8x8) on CIFAR-10 test images shown at 128x128 (32x32, 16x).

Writes docs/results/large_grids.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tica.cli import data_root
import tica
from tica.data import load_split
from tica.image import read_image
from tica.io import atomic_write_text
from tica.losses import psnr

ROOT = Path(__file__).resolve().parents[1]
MODES = ("global", "window", "pool")      # pool: classification only (reconstruct = window)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@torch.no_grad()
def run_case(model, images: list[torch.Tensor], labels: list[int] | None, quality: float) -> dict:
    """Both attention modes on the same decoded latents of `images` (each (3, H, W))."""
    stats = {m: {"classify_s": 0.0, "reconstruct_s": 0.0, "correct": 0, "psnr": []} for m in MODES}
    agree = {m: 0 for m in MODES[1:]}
    for i, image in enumerate(images):
        data = tica.compress(model, image[None], quality=quality, budget=None)
        (_, size, y_hat), = list(tica.decompress(model, data, budget=None))
        top = {}
        for mode in MODES:
            model.vit.attention = mode
            logits, t_cls = _timed(lambda: model.classify_latent(y_hat))
            s = stats[mode]
            s["classify_s"] += t_cls
            top[mode] = int(logits.argmax())
            if labels is not None:
                s["correct"] += int(top[mode] == labels[i])
            if mode == "pool":
                continue
            x_hat, t_rec = _timed(lambda: model.reconstruct_latent(y_hat, size))
            s["reconstruct_s"] += t_rec
            mse = F.mse_loss(x_hat[0] * 255, image * 255)
            s["psnr"].append(float(psnr(mse)))
        for mode in MODES[1:]:
            agree[mode] += int(top["global"] == top[mode])
    n = len(images)
    out = {"images": n, "grid": list(y_hat.shape[-2:]), "trained_grid": list(model.vit.grid),
           "size": list(size), "quality": quality, "model_id": f"{model.model_id:04x}"}
    for mode, s in stats.items():
        model.vit.attention = mode
        out[mode] = {"classify_s": s["classify_s"],
                     "reconstruct_s": s["reconstruct_s"] if s["psnr"] else None,
                     "psnr": sum(s["psnr"]) / n if s["psnr"] else None,
                     "top1": s["correct"] / n if labels is not None else None,
                     "agreement": agree[mode] / n if mode in agree else None,
                     "classify_gflop": model.cost(tuple(size), "classify"),
                     "reconstruct_gflop": model.cost(tuple(size), "reconstruct")}
    model.vit.attention = "auto"
    return out


def _upscaled(split, limit: int, factor: int) -> tuple[list[torch.Tensor], list[int]]:
    images = split.images[:limit].float() / 255
    images = F.interpolate(images, scale_factor=factor, mode="bicubic", align_corners=False)
    return list(images.clamp(0, 1)), split.labels[:limit].tolist()


def cases(args) -> dict:
    data, out = args.data, {}
    photo, cifar = tica.load("tica-photo"), tica.load("tica-cifar")
    if args.kodak:
        kodak = sorted((data / "kodak").glob("kodim*.png"))[: args.kodak]
        images = [read_image(p) for p in kodak]
        out["tica-photo, Kodak 768x512"] = run_case(photo, images, None, args.quality)
    if args.imagenette:
        split = load_split(data / "imagenette-224.tar.gz", "val", limit=args.imagenette)
        images, labels = _upscaled(split, args.imagenette, 2)
        out["tica-photo, Imagenette val at 448x448"] = run_case(photo, images, labels, args.quality)
    if args.cifar:
        split = load_split(data / "cifar10-jpeg.tar.gz", "test", limit=args.cifar)
        images, labels = _upscaled(split, args.cifar, 4)
        out["tica-cifar, CIFAR-10 test at 128x128"] = run_case(cifar, images, labels, args.quality)
    return out


def table(results: dict) -> str:
    rows = ["| case | images | grid (trained) | mode | top-1 | same top-1 as global | PSNR "
            "| classify time | classify GFLOP | reconstruct time | reconstruct GFLOP |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"           # noqa: E731
    for name, r in results.items():
        g, t, base = r["grid"], r["trained_grid"], r["global"]
        for mode in MODES:
            m = r[mode]
            rec = ("-", "-", "-") if m["psnr"] is None else (
                f"{m['psnr']:.2f} dB", f"{m['reconstruct_s'] / base['reconstruct_s']:.2f}x",
                f"{m['reconstruct_gflop']:.1f}")
            rows.append(f"| {name} | {r['images']} | {g[0]}x{g[1]} ({t[0]}x{t[1]}) | {mode} | "
                        f"{pct(m['top1'])} | {pct(m['agreement'])} | {rec[0]} | "
                        f"{m['classify_s'] / base['classify_s']:.2f}x | {m['classify_gflop']:.1f} | "
                        f"{rec[1]} | {rec[2]} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(data_root()))
    parser.add_argument("--kodak", type=int, default=24)
    parser.add_argument("--imagenette", type=int, default=300)
    parser.add_argument("--cifar", type=int, default=1000)
    parser.add_argument("--quality", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "large_grids.json")
    args = parser.parse_args()
    # cases not run this time (a count of 0) keep their earlier results
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update(cases(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
