"""One run of the report: each section measured or read back, the comparisons, the plots and
docs/RESULTS.md. `benchmarks/run_all.py` is its command line."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from tica import api
from tica.data import load_split
from tica.entropy.parallel import available_cores
from tica.evaluate import split_batches, write_results
from tica.image import read_image
from tica.io import atomic_write_text
from tica.registry import find_weights

from ..timing import cpu_name
from .analysis import accuracy_margins, bd_rates, published_curves, variable_rate_cost
from .cache import Cache
from .claims import state_claims
from .names import CLASSIFIER, CLEAN, HYPER, PHOTO_CLASSIFIER
from .page import plot, render
from .specs import cifar_specs, from_run, imagenette_specs, kodak_specs, shipped

SECTIONS = ("cifar", "kodak", "imagenette", "compute")


@dataclass
class ReportOptions:
    """What to run and where: `data` holds the archives and kodak/, `runs` the training run
    folders, `out` the results (the page goes to its parent)."""

    data: Path
    runs: Path
    out: Path
    limit: int | None = None            # CIFAR-10 test images (None: all 10,000)
    kodak: int | None = None            # Kodak images (None: all 24)
    imagenette: int = 1000              # Imagenette validation images, class-balanced
    sections: set[str] = field(default_factory=lambda: set(SECTIONS))   # the rest read back
    only: str | None = None             # regex: measure only the pipelines it matches
    fresh: bool = False                 # ignore cached results
    repeats: int = 7                    # latency repeats
    log: Callable[[str], None] = print


def run_report(options: ReportOptions) -> Path:
    """Measure (or reuse) every section, compare, plot and write the page; its path."""
    start = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier()
    cifar, cifar_images = cifar_section(options, classifier)
    kodak = kodak_section(options)
    imagenette = imagenette_section(options)
    compute = compute_section(options)
    comparisons = write_comparisons(options.out, cifar.results, kodak.results, imagenette.results)
    write_plots(options.out, cifar.results, kodak.results, imagenette.results)
    sections = (cifar, kodak, imagenette)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "minutes": (time.perf_counter() - start) / 60,
            "measured": sum(s.measured for s in sections),
            "cached": sum(s.reused for s in sections),
            "machine": machine(), "cifar_images": cifar_images,
            "imagenette_images": max((r["images"] for r in imagenette.results), default=None),
            "evaluation_minutes": sum(r["seconds"] for s in sections for r in s.results) / 60,
            "budgets": budgets(),
            "imagenette": imagenette.results,
            "imagenette_margins": comparisons["imagenette_accuracy_margins"]}
    meta["claims"] = state_claims(cifar.results, kodak.results, comparisons["accuracy_margins"],
                                  comparisons["bd_rates"], compute, meta)
    meta["variable_rate_cost"] = comparisons["variable_rate_cost"]
    page = render(cifar.results, kodak.results, comparisons["accuracy_margins"],
                  comparisons["bd_rates"], compute, [n for s in sections for n in s.notes], meta)
    page_path = options.out.parent / "RESULTS.md"
    atomic_write_text(page_path, page)
    options.log(f"wrote {page_path} in {meta['minutes']:.1f} min")
    return page_path


def load_classifier() -> torch.nn.Module:
    """The CIFAR-10 pixel ViT behind every codec -> decode -> ViT pipeline."""
    classifier = api.load(CLASSIFIER)
    if classifier.weights_info.untrained:
        print(f"warning: {CLASSIFIER} has no trained weights here: its numbers mean nothing",
              file=sys.stderr)
    return classifier


def cifar_section(options: ReportOptions, classifier: torch.nn.Module) -> tuple[Cache, int]:
    """tica against its baselines on the CIFAR-10 test split; the cache and the image count."""
    split = load_split(options.data / "cifar10-jpeg.tar.gz", "test", limit=options.limit)
    cache = Cache(options.out / "cifar10", options.fresh, options.log)
    if "cifar" not in options.sections:
        cache.read_back()
        return cache, len(split)
    options.log(f"CIFAR-10 test split: {len(split)} images")
    for spec in cifar_specs(classifier, options.runs, len(split)):
        cache.run(spec, lambda: split_batches(split, 250), len(split), options.only)
    cache.save()
    return cache, len(split)


def kodak_section(options: ReportOptions) -> Cache:
    """Rate-distortion on Kodak at full resolution."""
    cache = Cache(options.out / "kodak", options.fresh, options.log)
    if "kodak" not in options.sections:
        cache.read_back()
        return cache
    files = sorted((options.data / "kodak").glob("kodim*.png"))[: options.kodak]
    images = [read_image(p)[None] for p in files]
    options.log(f"Kodak: {len(images)} images")
    for spec in kodak_specs(options.runs):
        cache.run(spec, lambda: ((x, None) for x in images), len(images), options.only)
    cache.save()
    return cache


def imagenette_section(options: ReportOptions) -> Cache:
    """tica-photo against the clean-pixel ViT and codec -> decode -> ViT on Imagenette."""
    cache = Cache(options.out / "imagenette", options.fresh, options.log)
    archive = options.data / "imagenette-224.tar.gz"
    if "imagenette" not in options.sections or not options.imagenette:
        cache.read_back()
        return cache
    if find_weights(PHOTO_CLASSIFIER, "classifier") is None or not archive.exists():
        cache.read_back()
        cache.notes.append(f"imagenette: not measured here ({PHOTO_CLASSIFIER} weights or "
                           f"{archive.name} missing)")
        return cache
    classifier = api.load(PHOTO_CLASSIFIER)
    split = load_split(archive, "val", limit=options.imagenette)
    options.log(f"Imagenette validation split: {len(split)} images")
    for spec in imagenette_specs(classifier, len(split)):
        cache.run(spec, lambda: split_batches(split, 50), len(split), options.only)
    cache.save()
    return cache


def compute_section(options: ReportOptions) -> list[dict]:
    """Compute and latency, measured and written, or read back from compute.json."""
    if "compute" not in options.sections:
        path = options.out / "compute.json"
        return json.loads(path.read_text()) if path.exists() else []
    options.log("Compute and latency")
    rows = measure_compute(options.repeats, options.runs, options.data / "kodak" / "kodim01.png")
    write_results(rows, options.out / "compute")
    return rows


def measure_compute(repeats: int, runs: Path, kodim: Path) -> list[dict]:
    """Classify from the bitstream against decode-then-classify: tica-cifar at 32x32 (batch 1
    and 64), then tica-photo at the paper's 224x224 (a centre crop of `kodim`) and whole."""
    from tica_tools.timing import classify_paths, photo_timing_models
    classifier = api.load(CLASSIFIER)
    model = api.load("tica-cifar")
    hyper = shipped("hyperprior-cifar", 2) or from_run(runs, HYPER, 2)
    decoders = {"hyperprior-cifar": hyper()} if hyper else {}
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in (1, 64):
        x = torch.rand(batch, 3, 32, 32, generator=g)
        rows += [c.to_dict() for c in classify_paths(
            model, x, classifier, f"tica-cifar, 32x32, batch {batch}", repeats, decoders)]
    # Photo sizes: the photo codec's latent against its decoder + a pixel ViT of the same size
    # with the same token count: the paper's 224x224 (a centre crop), then a whole Kodak image.
    photo, pixel = photo_timing_models(CLASSIFIER)
    image = read_image(kodim)[None]
    top, left = (image.shape[-2] - 224) // 2, (image.shape[-1] - 224) // 2
    rows += [c.to_dict() for c in classify_paths(photo, image[..., top:top + 224, left:left + 224],
                                                 pixel, "tica-photo, 224x224, batch 1", repeats)]
    whole = f"tica-photo, {image.shape[-1]}x{image.shape[-2]}, batch 1"
    rows += [c.to_dict() for c in classify_paths(photo, image, pixel, whole, max(2, repeats // 2))]
    return rows


def write_comparisons(out: Path, cifar: list[dict], kodak: list[dict],
                      imagenette: list[dict]) -> dict[str, list[dict]]:
    """Margins, BD-rates and the variable-rate cost, written to comparisons.json."""
    comparisons = {"accuracy_margins": accuracy_margins(cifar),
                   "imagenette_accuracy_margins": accuracy_margins(imagenette),
                   "bd_rates": bd_rates(kodak), "variable_rate_cost": variable_rate_cost(cifar)}
    atomic_write_text(out / "comparisons.json",
                      json.dumps(_rounded(comparisons), indent=1, default=lambda v: None))
    return comparisons


def _rounded(value, digits: int = 10):
    """`value` with every float to `digits` significant digits: the file is then the same
    on every CPU (BD-rate integrals differ in their last bits between vector units)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def write_plots(out: Path, cifar: list[dict], kodak: list[dict], imagenette: list[dict]) -> None:
    """The page's PNGs: CIFAR-10 rate-accuracy and rate-PSNR, Imagenette's, Kodak's RD."""
    ceiling = next((r["top1"] for r in cifar if r["pipeline"] == CLEAN), None)
    plot(cifar, "top1", out / "cifar10_accuracy.png",
         "CIFAR-10 test split: rate vs accuracy", "top-1 accuracy", ceiling=ceiling)
    plot(cifar, "psnr", out / "cifar10_psnr.png",
         "CIFAR-10 test split: rate vs PSNR", "PSNR (dB)")
    if imagenette:
        photo_ceiling = next((r["top1"] for r in imagenette if r["pipeline"] == CLEAN), None)
        plot(imagenette, "top1", out / "imagenette_accuracy.png",
             "Imagenette validation: rate vs accuracy", "top-1 accuracy", ceiling=photo_ceiling)
    plot(kodak, "psnr_per_image", out / "kodak_psnr.png", "Kodak (24 images): rate vs PSNR",
         "PSNR (dB)", extra=published_curves())


def budgets() -> dict[str, dict]:
    """How each shipped model was trained (the manifest's provenance), by preset."""
    from tica.registry import read_manifest
    return {e.preset: e.trained for e in read_manifest() if e.trained and e.role != "step1"}


def machine() -> str:
    """The CPU, its cores and torch's threads, for the page's header."""
    return f"{cpu_name()}, {available_cores()} cores, {torch.get_num_threads()} torch threads"
