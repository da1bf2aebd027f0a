"""Regenerate every result of docs/RESULTS.md: tica against its baselines on the CIFAR-10
test split, rate-distortion on Kodak, compute and latency, plots.

    python benchmarks/run_all.py                 # reuses cached rate points whose weights,
                                                 # codec versions and image count match
    python benchmarks/run_all.py --fresh         # recompute everything that can be
    python benchmarks/run_all.py --limit 500     # a class-balanced CIFAR subset (smoke run)

Results: docs/results/{cifar10,kodak,compute}.{json,csv}, docs/results/*.png, docs/RESULTS.md.
Weights: shipped ones from the package; the ablations and the runs not shipped from --runs
(scripts/plans/cpu-ablations.json; the device plan's under gpu-plan/). A rate point whose weights are absent
reuses its cached result and says so; with no cache either, it is left out and listed.
The analysis lives in `tica_tools.report`; this is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tica.cli import data_root
from tica.data import cache_dir
from tica_tools.report import SECTIONS, ReportOptions, run_report

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(data_root())
OUT = ROOT / "docs" / "results"


def parse_args(argv: list[str] | None = None) -> ReportOptions:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=Path, default=cache_dir() / "runs",
                        help="training run folders (default $TICA_CACHE/runs, where "
                             "the training plans put them)")
    parser.add_argument("--limit", type=int, help="CIFAR-10 test images (default: all 10,000)")
    parser.add_argument("--kodak", type=int, help="Kodak images (default: all 24)")
    parser.add_argument("--imagenette", type=int, default=ReportOptions.imagenette,
                        help="Imagenette validation images, a class-balanced subset (default "
                             "%(default)s of 3,925)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="sections to run; the others are read back from their result files")
    parser.add_argument("--only", metavar="REGEX",
                        help="measure only the pipelines whose name matches; the rest come from "
                             "their result files")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--repeats", type=int, default=ReportOptions.repeats,
                        help="latency repeats (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    return ReportOptions(data=args.data, runs=args.runs, out=args.out, limit=args.limit,
                         kodak=args.kodak, imagenette=args.imagenette,
                         sections=set(args.sections.split(",")), only=args.only,
                         fresh=args.fresh, repeats=args.repeats)


def main(argv: list[str] | None = None) -> int:
    run_report(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
