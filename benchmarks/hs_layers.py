"""The integer h_s layer by layer, on one thread: how much of each layer's input is zero
(whole channels, and values), and each layer's time with its products dense (the digit
products this CPU runs fastest, `tica.nn.integer.digit_gemm`: int8, int16 or float32
GEMMs; int16's as uint8 ones for a hidden layer's activations, `_unsigned_input`), by the
nonzero values alone (`_intops.sparse_conv`), and as the library chooses
(`tica.nn.integer.SPARSE_SHARE`), on real images: tica-cifar on CIFAR-10 test images at q4,
tica-photo on Imagenette validation images at q2. Every way gives the same integers (checked).

    python benchmarks/hs_layers.py [--images 64] [--photos 16] [--rounds 7]

Prints a Markdown table (docs/design.md, "The h_s by its live channels and nonzero values").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import tica
from tica.data import load_split
from tica.nn import integer
from tica.nn.integer import TablesAndMeans
from tica_tools.timing import cpu_name, interleaved_median_ms

ROOT = Path(__file__).resolve().parents[1]
CASES = {"tica-cifar": (4.0, "cifar10-jpeg.tar.gz", "test"),
         "tica-photo": (2.0, "imagenette-224.tar.gz", "val")}
WAYS = {"dense": 0.0, "sparse": float("inf"), "chosen": None}     # SPARSE_SHARE of each


def layer_calls(model, z: torch.Tensor, quality: float) -> list[dict]:
    """Per layer of the model's integer h_s: its input's shape, live channels and zeros,
    and a call per way that runs the layer (with its end) on that input."""
    int_hs, x, rows = model.integer_h_s, z.double().add(0.0), []   # -0.0 as the h_s takes it
    gemm = integer.digit_gemm()[0] or "float32"
    for i, layer in enumerate(int_hs.layers):
        last = i == len(int_hs.layers) - 1
        end = (TablesAndMeans(model.gaussian_conditional.scale_bounds,
                              model.entropy_gain(quality, 1)).compiled_end(layer)
               if last else integer._hidden_end(layer))
        live = integer._live_channels(x)
        kept = x if live is None else x[:, live]
        in_bits = int_hs.layers[i - 1].act_bits if i else None   # activations: unsigned
        row = {"layer": f"{i + 1}{' (transposed)' if layer.transposed else ''}",
               "shape": "x".join(str(d) for d in x.shape[1:]),
               "live": x.shape[1] if live is None else int(live.sum()),
               "zeros": float((kept == 0).float().mean()), "calls": {}}
        for way, share in WAYS.items():
            def call(layer=layer, x=x, end=end, share=share, in_bits=in_bits):
                saved = integer.SPARSE_SHARE
                integer.SPARSE_SHARE = (saved if share is None
                                        else dict.fromkeys(saved, share))
                try:
                    return integer._digit_linear(layer, x, 1, gemm, end, in_bits)
                finally:
                    integer.SPARSE_SHARE = saved
            row["calls"][way] = call
        outs = [row["calls"][way]() for way in WAYS]
        if not all(torch.equal(o, outs[0]) for o in outs[1:]):
            raise AssertionError(f"layer {i + 1}: the ways disagree")
        rows.append(row)
        x = outs[0]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64, help="CIFAR-10 test images")
    p.add_argument("--photos", type=int, default=16, help="Imagenette validation images")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--data", type=Path, default=Path(os.environ.get(
        "TICA_DATA", ROOT.parent / "shared" / "data")))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    counts = {"tica-cifar": args.images, "tica-photo": args.photos}
    print(f"The integer h_s layer by layer, one thread of {cpu_name()}, "
          f"{integer.digit_gemm()[0] or 'float32'} digit products; ms per batch, the "
          f"median of {args.rounds} interleaved rounds:\n")
    print("| model (batch) | layer | input | live channels | zeros among them | dense ms | "
          "by nonzero values ms | chosen ms |\n|---|---|---|---:|---:|---:|---:|---:|")
    for name, (quality, archive, split) in CASES.items():
        model = tica.load(name)
        images = load_split(args.data / archive, split, limit=counts[name]).images.float() / 255
        z = model.analyze(images, quality)[0]
        rows = layer_calls(model, z, quality)
        calls = {(i, way): fn for i, r in enumerate(rows) for way, fn in r["calls"].items()}
        ms = interleaved_median_ms(calls, args.rounds)
        totals = {way: 0.0 for way in WAYS}
        for i, r in enumerate(rows):
            for way in WAYS:
                totals[way] += ms[i, way]
            print(f"| {name} ({len(images)}) | {r['layer']} | {r['shape']} | {r['live']} | "
                  f"{100 * r['zeros']:.0f}% | {ms[i, 'dense']:.2f} | {ms[i, 'sparse']:.2f} | "
                  f"{ms[i, 'chosen']:.2f} |")
        print(f"| {name} ({len(images)}) | all | | | | {totals['dense']:.2f} | "
              f"{totals['sparse']:.2f} | {totals['chosen']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
