"""Codec files side by side on the same held-out images: every standard quality from real
streams, and each file's verdict against the first (BD-rate of PSNR, top-1 at equal bpp),
as the shipping gate computes them. For a trial's arms (two continuations of one model)
and the shipped file they started from.

    python benchmarks/compare_codecs.py ../shared/data/cifar10-jpeg.tar.gz \\
        shipped:tica-cifar runs/trial/a.safetensors runs/trial/b.safetensors --limit 2000

A codec is `shipped:PRESET` (the package's file) or a path. --out writes the tables as
Markdown (atomically) besides printing them.
"""

from __future__ import annotations

import argparse
import sys
import time
from tica import api
from tica.evaluate import eval_data
from tica.output import write_output
from tica.registry import load_checkpoint
from tica_tools.rd import curve_rows, curve_verdict, curves_table, top1_gap_text


def load_codec(spec: str):
    """`shipped:PRESET` -> the package's codec of that preset; else a checkpoint file."""
    return api.load(spec.split(":", 1)[1]) if spec.startswith("shipped:") else load_checkpoint(spec)


def compare(data_source: str, specs: list[str], limit: int | None = None,
            split: str | None = None) -> str:
    """The Markdown tables: each codec's curve, then each one's verdict against the first."""
    data = eval_data(data_source, split, limit=limit)
    curves = {}
    for spec in specs:
        start = time.perf_counter()
        curves[spec] = curve_rows(load_codec(spec), data)
        print(f"{spec}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    lines = [f"{data.count} images of {data.name}, every standard quality, real streams:", "",
             *curves_table(curves), "",
             f"| codec | BD-rate (PSNR) vs {specs[0]} | top-1 at equal bpp [95% paired "
             "interval] | verdict |", "|---|---:|---:|---|"]
    for spec in specs[1:]:
        v = curve_verdict(curves[specs[0]], curves[spec])
        verdict = "better" if v["better"] else "worse" if v["worse"] else "same"
        lines.append(f"| {spec} | {v['bd_rate_psnr']:+.2f}% | {top1_gap_text(v)} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="an ImageFolder split, its archive, or a folder of images")
    parser.add_argument("codecs", nargs="+", help="shipped:PRESET or a checkpoint file; the "
                        "first is the reference")
    parser.add_argument("--limit", type=int, help="a class-balanced subset of this many images")
    parser.add_argument("--split", help="default: the held-out split")
    parser.add_argument("--out", help="also write the tables here (Markdown)")
    args = parser.parse_args(argv)
    if len(args.codecs) < 2:
        parser.error("give at least two codecs: a reference and one to compare")
    text = compare(args.data, args.codecs, args.limit, args.split)
    print(text, end="")
    if args.out:
        write_output(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
