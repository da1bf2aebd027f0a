"""What a narrower integer h_s would buy and cost, side by side in one run: the rate of real
streams and the h_s's speed when its weights and activations get fewer bits, on CIFAR-10
test images (tica-cifar) and Imagenette validation images (tica-photo). The table for
docs/design.md, "The int8 h_s at the products' peak".

    python benchmarks/narrow_h_s.py [--images 256] [--photos 64] [--repeats 5]

Each variant rebuilds the model's integer h_s from the same float weights with other widths
(IntegerHyperSynthesis.build's, as ModelConfig.hs_format sets them for a model), codes the
images at several qualities with it, and reports the bytes against the default widths'
(14-bit weights, activations in steps of 1/256 below 2^20) and the h_s alone in images/s.
Fewer bits mean fewer int8 digit products a layer: 7-bit weights are one digit rather than
two, activations below 2^7 one rather than two. This is the cost after the fact, the float
weights untouched; a model trained with narrow widths (quantization-aware) is measured by
`tica eval` like any other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import tica
from tica.cli import data_root
from tica.data import load_split
from tica_tools.timing import median_seconds as timed

# (label, weight bits, activation fractional bits, activation bits)
VARIANTS = [
    ("default: 14-bit weights, activations 1/256 below 2^20", 14, 8, 20),
    ("7-bit weights, activations as the default", 7, 8, 20),
    ("7-bit weights, activations 1/64 below 2^20", 7, 6, 20),
    ("7-bit weights, 7-bit activations (1/32 below 4): one product a layer", 7, 5, 7),
]
CASES = {"tica-cifar": ("cifar10-jpeg.tar.gz", "test", (1.0, 4.0, 8.0), 4.0),
         "tica-photo": ("imagenette-224.tar.gz", "val", (1.0, 2.0, 4.0, 8.0), 2.0)}


def measure(model, x: torch.Tensor, qualities, speed_quality: float, repeats: int) -> dict:
    """Bytes of real streams per quality, and the h_s's images/s on z at speed_quality."""
    z = model.analyze(x, speed_quality)[0].double()
    int_hs = model.integer_h_s
    return {"bytes": {q: sum(len(p) for p in model.compress(x, q)) for q in qualities},
            "img_s": len(x) / timed(lambda: int_hs(z), repeats)}


def run_case(name: str, limit: int, repeats: int) -> list[tuple[str, dict]]:
    archive, split, qualities, speed_quality = CASES[name]
    x = load_split(Path(data_root()) / archive, split, limit=limit).images.float() / 255
    rows = []
    for label, *widths in VARIANTS:
        model = tica.load(name)
        model.config = model.config.replace(hs_weight_bits=widths[0], hs_act_frac_bits=widths[1],
                                            hs_act_bits=widths[2])
        model.refresh_coding_state()         # the integer h_s of these widths
        with torch.no_grad():
            rows.append((label, measure(model, x, qualities, speed_quality, repeats)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="CIFAR-10 test images")
    p.add_argument("--photos", type=int, default=64, help="Imagenette validation images")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    for name, limit in (("tica-cifar", args.images), ("tica-photo", args.photos)):
        rows = run_case(name, limit, args.repeats)
        qualities = CASES[name][2]
        base = rows[0][1]
        print(f"\n{name}, {limit} images: bytes against the default widths at each quality; "
              f"the h_s alone at q{CASES[name][3]:g}\n")
        print("| integer h_s | " + " | ".join(f"q{q:g}" for q in qualities)
              + " | h_s images/s | vs the default |")
        print("|---|" + "---:|" * (len(qualities) + 2))
        for label, r in rows:
            change = " | ".join(f"{100 * (r['bytes'][q] / base['bytes'][q] - 1):+.2f}%"
                                for q in qualities)
            print(f"| {label} | {change} | {r['img_s']:,.0f} | "
                  f"{r['img_s'] / base['img_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
