"""tica's MS-SSIM (tica.evaluate.ms_ssim_any_size) against pytorch_msssim, the reference it
matches: seconds per call side by side in one run, and the largest difference, on the sizes
the evaluator meets (a Kodak image, a batch of Imagenette images, a batch of CIFAR-10
images: the last has no pytorch_msssim counterpart, its windows are tica's own).

    python benchmarks/ms_ssim.py             # writes docs/benchmarks/ms_ssim.md and .json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tica.evaluate import ms_ssim_any_size
from tica_tools.timing import cpu_name, interleaved_median_ms, write_benchmark

ROOT = Path(__file__).resolve().parents[1]
CASES = {"Kodak, one 768x512 image": (1, 512, 768), "Imagenette, 250 images of 224x224":
         (250, 224, 224), "CIFAR-10, 250 images of 32x32": (250, 32, 32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    from pytorch_msssim import ms_ssim
    g = torch.Generator().manual_seed(0)
    rows = []
    for case, (n, h, w) in CASES.items():
        x = torch.rand(n, 3, h, w, generator=g)
        y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        calls = {"tica_s": lambda: ms_ssim_any_size(x, y)}
        if min(h, w) > 160:
            calls["pytorch_msssim_s"] = lambda: ms_ssim(x, y, data_range=1.0, size_average=False)
        row = {"case": case, **{k: ms / 1000 for k, ms in
                                interleaved_median_ms(calls, args.repeats).items()}}
        if len(calls) > 1:
            row["max_abs_diff"] = float((calls["tica_s"]() - calls["pytorch_msssim_s"]())
                                        .abs().max())
        rows.append(row)
    result = {"machine": cpu_name(), "threads": torch.get_num_threads(), "rows": rows}
    lines = ["# MS-SSIM: tica's against pytorch_msssim", "",
             f"`python benchmarks/ms_ssim.py` on {result['machine']}, {result['threads']} "
             "threads; median of the calls after a warm-up, the two taking turns.", "",
             "| inputs | tica s | pytorch_msssim s | speed-up | largest difference |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        ref = r.get("pytorch_msssim_s")
        lines.append(f"| {r['case']} | {r['tica_s']:.3f} | "
                     + (f"{ref:.3f} | {ref / r['tica_s']:.1f}x | {r['max_abs_diff']:.1e} |"
                        if ref else "(its own windows) | | |"))
    write_benchmark(args.out, "ms_ssim", "\n".join(lines) + "\n", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
