"""Regenerate every result of docs/RESULTS.md: tica against its baselines on the CIFAR-10
test split, rate-distortion on Kodak, compute and latency, plots.

    python benchmarks/run_all.py                 # reuses cached rate points whose weights,
                                                 # codec versions and image count match
    python benchmarks/run_all.py --fresh         # recompute everything that can be
    python benchmarks/run_all.py --limit 500     # a class-balanced CIFAR subset (smoke run)

Results: docs/results/{cifar10,kodak,compute}.{json,csv}, docs/results/*.png, docs/RESULTS.md.
Weights: shipped ones from the package; the ablations and the runs not shipped from --runs
(scripts/train_baselines.sh, scripts/train_photo.sh). A rate point whose weights are absent
reuses its cached result and says so; with no cache either, it is left out and listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

import tica
from tica import rd
from tica.codecs import CLASSICAL_CODECS
from tica.data import load_split
from tica.evaluate import (ClassicalPipeline, LearnedPipeline, Pipeline, Uncompressed, evaluate,
                           split_batches, write_results)
from tica.image import load_image
from tica.registry import find_weights, standard_qualities

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_page import (CLEAN, CODEC_LABELS, HYPER, HYPER_FIXED, TICA,  # noqa: E402
                          TICA_FIXED, TICA_NOFAM, curves, plot, render, state_claims)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "results"
CLASSIFIER = "vit-pixel-cifar"
PHOTO_CLASSIFIER = "vit-pixel-photo"     # the clean-pixel ViT beside tica-photo (Imagenette)
IMAGENETTE_CODECS = ("jpeg", "webp")


def digest(module: torch.nn.Module) -> str:
    """Short identity of a model's weights (the stream id's fingerprint for codecs)."""
    if hasattr(module, "fingerprint"):
        return module.fingerprint.hex()[:16]
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def codec_version(name: str) -> str:
    if name == "jxl":
        import imagecodecs
        return f"imagecodecs {imagecodecs.__version__}"
    import PIL
    return f"Pillow {PIL.__version__}"


@dataclass
class Spec:
    """One rate point to evaluate: a cache key and a way to build its pipeline (None when its
    weights are not here)."""

    label: str
    quality: float | None
    key: str | None
    build: Callable[[], Pipeline] | None


class Cache:
    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        old = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else []
        self.old = [] if fresh else old
        self.stale = old            # usable when weights are missing, even with --fresh
        self.results: list[dict] = []
        self.notes: list[str] = []
        self.measured = self.reused = 0

    def save(self) -> None:
        """Write every result of the section, the reused ones too."""
        write_results(self.results, self.path)

    def read_back(self) -> None:
        """A section not run this time: its last results, as they are."""
        self.results = list(self.stale)
        self.reused += len(self.results)
        self.notes.append(f"{self.path.name}: section not run, {len(self.results)} results read "
                          f"back from {self.path.name}.json")

    def run(self, spec: Spec, batches: Callable, images: int, only: str | None = None) -> None:
        if only and not re.search(only, spec.label):
            hit = next((r for r in self.stale if r["pipeline"] == spec.label
                        and r["quality"] == spec.quality and r["images"] == images), None)
            if hit:
                print(f"  cached   {spec.label} q={spec.quality} (not selected by --only)")
                self.results.append(hit)
                self.reused += 1
            return
        hit = next((r for r in self.old if spec.key and r.get("key") == spec.key), None)
        if hit:
            print(f"  cached   {spec.label} q={spec.quality}")
            self.results.append(hit)
            self.reused += 1
            return
        if spec.build is None:
            hit = next((r for r in self.stale if r["pipeline"] == spec.label
                        and r["quality"] == spec.quality and r["images"] == images), None)
            if hit:
                print(f"  cached   {spec.label} q={spec.quality} (weights not here)")
                self.notes.append(f"{spec.label} q={spec.quality}: cached result of "
                                  f"{hit.get('date', '?')}, its weights are not in this checkout")
                self.results.append(hit)
                self.reused += 1
            else:
                print(f"  missing  {spec.label} q={spec.quality}: no weights, no earlier result")
                self.notes.append(f"{spec.label} q={spec.quality}: not evaluated (no weights)")
            return
        result = evaluate(spec.build(), batches()).to_dict()
        result.update(key=spec.key, date=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
        print(f"  measured {spec.label} q={spec.quality}: bpp {result['bpp']:.3f}"
              + (f" top-1 {result['top1']:.4f}" if result["top1"] is not None else "")
              + (f" PSNR {result['psnr']:.2f}" if result["psnr"] is not None else "")
              + f" ({result['seconds']:.0f} s)")
        self.results.append(result)
        self.measured += 1
        write_results(self.results, self.path)      # progress survives an interrupted run


def _run_weights(runs: Path, folder: str) -> Path | None:
    path = runs / folder / "model.safetensors"
    return path if path.is_file() else None


def learned_spec(label: str, quality: int, weights: Callable[[], torch.nn.Module] | None,
                 extra: str, classifier=None) -> Spec:
    if weights is None:
        return Spec(label, quality, None, None)
    model = weights()
    key = f"{label}|{quality}|{digest(model)}|{extra}"
    return Spec(label, quality, key,
                lambda: LearnedPipeline(model, name=label, quality=quality, classifier=classifier))


def shipped(name: str, q: int) -> Callable[[], torch.nn.Module] | None:
    return (lambda: tica.load(name, quality=q)) if q in standard_qualities(name) else None


def from_run(path: Path | None) -> Callable[[], torch.nn.Module] | None:
    return (lambda: tica.load(weights=path)) if path else None


def cifar_specs(classifier, runs: Path, images: int) -> list[Spec]:
    cls_id = digest(classifier)
    extra = f"n={images}"
    specs = [Spec(CLEAN, None, f"{CLEAN}|{cls_id}|{extra}", lambda: Uncompressed(classifier, CLEAN))]
    for q in standard_qualities("tica-cifar"):
        specs.append(learned_spec(TICA, q, shipped("tica-cifar", q), extra))
    # scripts/train_cifar.sh: a fixed-rate model at standard point 6's weights, same budget
    specs.append(learned_spec(TICA_FIXED, 6, from_run(_run_weights(runs, "tica-cifar-fixed-q6")), extra))
    for q in (1,):                       # scripts/train_baselines.sh nofam trains q1's recipe
        specs.append(learned_spec(TICA_NOFAM, q, from_run(_run_weights(runs, f"tica-cifar-nofam-q{q}")), extra))
    for q in standard_qualities("hyperprior-cifar") or (1, 2, 3, 4):
        source = shipped("hyperprior-cifar", q) or from_run(_run_weights(runs, f"hyperprior-cifar-q{q}"))
        specs.append(learned_spec(HYPER, q, source, f"{extra}|cls={cls_id}", classifier))
    # scripts/train_baselines.sh: the hyperprior at standard point 5's weights alone, same budget
    specs.append(learned_spec(HYPER_FIXED, 5, from_run(_run_weights(runs, "hyperprior-cifar-fixed-q5")),
                              f"{extra}|cls={cls_id}", classifier))
    return specs + classical_specs(CLASSICAL_CODECS, classifier, extra)


def classical_specs(codecs: dict, classifier, extra: str) -> list[Spec]:
    """codec -> decode -> `classifier`, at each of the codec's qualities."""
    cls_id = digest(classifier)
    specs = []
    for name, codec in codecs.items():
        label = f"{CODEC_LABELS[name]} -> decode -> ViT"
        for q in codec.qualities:
            key = f"{label}|{q}|{codec_version(name)}|cls={cls_id}|{extra}"
            specs.append(Spec(label, q, key, lambda c=codec, q=q, label=label:
                              ClassicalPipeline(c, q, classifier, label)))
    return specs


def imagenette_specs(classifier, images: int) -> list[Spec]:
    """The paper's use case: tica-photo classifies Imagenette photographs from their streams;
    the same-size ViT on clean pixels, and on JPEG / WebP decodes."""
    extra = f"imagenette|n={images}"
    specs = [Spec(CLEAN, None, f"{CLEAN}|{digest(classifier)}|{extra}",
                  lambda: Uncompressed(classifier, CLEAN))]
    for q in standard_qualities("tica-photo"):
        specs.append(learned_spec(TICA, q, shipped("tica-photo", q), extra))
    codecs = {name: CLASSICAL_CODECS[name] for name in IMAGENETTE_CODECS}
    return specs + classical_specs(codecs, classifier, extra)


def kodak_specs(runs: Path) -> list[Spec]:
    specs = []
    for q in standard_qualities("tica-photo") or (1, 2, 3, 4):
        specs.append(learned_spec("tica-photo", q, shipped("tica-photo", q) or
                                  from_run(_run_weights(runs, f"photo-q{q}")), "kodak"))
    for q in (1, 2, 3, 4):
        specs.append(learned_spec("tica-photo, no FAM", q,
                                  from_run(_run_weights(runs, f"photo-nofam-q{q}")), "kodak"))
    for name, codec in CLASSICAL_CODECS.items():
        for q in codec.qualities:
            specs.append(Spec(CODEC_LABELS[name], q, f"{name}|{q}|{codec_version(name)}|kodak",
                              lambda c=codec, q=q: ClassicalPipeline(c, q, name=CODEC_LABELS[c.name])))
    return specs


# ---- analysis ---------------------------------------------------------------------------------

def accuracy_margins(results: list[dict]) -> list[dict]:
    """tica's top-1 against every baseline's over the bpp range they share: at each tica rate
    point, and at each of the baseline's Pareto points that fall inside tica's measured range.
    The baseline's value comes from its Pareto front (linear in log-bpp, its best value held
    above its last point: a codec that reaches it at some rate reaches it at any higher one);
    tica's between its own points is linear in log-bpp. Margin NaN where the baseline's curve
    does not reach down to that bpp."""
    acc = curves(results, "top1")
    if TICA not in acc:
        return []
    tica_curve = acc[TICA]
    low, high = min(tica_curve[0]), max(tica_curve[0])
    quality_at = {r["bpp"]: r["quality"] for r in results if r["pipeline"] == TICA}
    rows = []
    for label, curve in acc.items():
        if label in (TICA, TICA_NOFAM, TICA_FIXED):
            continue
        front = rd.monotone_upper(curve)
        rates = sorted(set(tica_curve[0]) | {b for b in front[0] if low < b < high})
        for bpp in rates:
            mine = rd.value_at(tica_curve, bpp)
            base = rd.value_at(front, bpp, hold_above=True)
            rows.append({"quality": quality_at.get(bpp), "bpp": bpp, "tica_top1": mine,
                         "baseline": label, "baseline_top1": base, "margin": mine - base})
    return rows


def variable_rate_cost(results: list[dict]) -> list[dict]:
    """What one variable-rate model costs against a fixed-rate model trained alone at one of
    its standard points with the same budget: the variable-rate model's bpp at the fixed
    model's PSNR (a BD-rate at one point) and its top-1 at the fixed model's bpp. For each
    (variable-rate, fixed-rate) pair of pipelines that was measured."""
    rows = []
    for variable, fixed_label in ((TICA, TICA_FIXED), (HYPER, HYPER_FIXED)):
        vr = [r for r in results if r["pipeline"] == variable]
        if len(vr) < 2:
            continue
        psnr_curve = ([r["bpp"] for r in vr], [r["psnr"] for r in vr])
        acc_curve = ([r["bpp"] for r in vr], [r["top1"] for r in vr])
        for fixed in (r for r in results if r["pipeline"] == fixed_label):
            same_psnr = rd.rate_at(psnr_curve, fixed["psnr"])
            rows.append({"model": variable, "quality": fixed["quality"], "fixed_bpp": fixed["bpp"],
                         "fixed_psnr": fixed["psnr"], "fixed_top1": fixed["top1"],
                         "variable_bpp_at_psnr": same_psnr,
                         "rate_cost_percent": 100 * (same_psnr / fixed["bpp"] - 1),
                         "variable_top1_at_bpp": rd.value_at(acc_curve, fixed["bpp"])})
    return rows


def bd_rates(results: list[dict]) -> list[dict]:
    psnr = curves(results, "psnr_per_image")
    pairs = [("tica-photo", "JPEG"), ("tica-photo", "WebP"), ("tica-photo", "AVIF"),
             ("tica-photo", "JPEG XL"), ("tica-photo", "CompressAI bmshj2018-hyperprior (published)"),
             ("tica-photo", "tica-photo, no FAM")]
    psnr["CompressAI bmshj2018-hyperprior (published)"] = tuple(
        map(list, zip(*rd.COMPRESSAI_HYPERPRIOR_KODAK)))
    rows = []
    for test, anchor in pairs:
        if test not in psnr or anchor not in psnr:
            continue
        try:
            value = rd.bd_rate(psnr[anchor], psnr[test])
        except tica.TicaError as exc:
            value, why = float("nan"), str(exc)
        else:
            why = ""
        lo = max(min(psnr[anchor][1]), min(psnr[test][1]))
        hi = min(max(psnr[anchor][1]), max(psnr[test][1]))
        rows.append({"test": test, "anchor": anchor, "bd_rate_percent": value,
                     "psnr_range": [lo, hi], "note": why})
    return rows


# ---- compute ----------------------------------------------------------------------------------

def compute_section(repeats: int, runs: Path) -> list[dict]:
    from tica.bench import classify_paths, photo_timing_models
    classifier = tica.load(CLASSIFIER)
    model = tica.load("tica-cifar")
    hyper = shipped("hyperprior-cifar", 2) or from_run(_run_weights(runs, "hyperprior-cifar-q2"))
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
    kodim = load_image(DATA / "kodak" / "kodim01.png")[None]
    top, left = (kodim.shape[-2] - 224) // 2, (kodim.shape[-1] - 224) // 2
    rows += [c.to_dict() for c in classify_paths(photo, kodim[..., top:top + 224, left:left + 224],
                                                 pixel, "tica-photo, 224x224, batch 1", repeats)]
    rows += [c.to_dict() for c in classify_paths(photo, kodim, pixel, "tica-photo, 768x512, batch 1",
                                                 max(2, repeats // 2))]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="training run folders")
    parser.add_argument("--limit", type=int, help="CIFAR-10 test images (default: all 10,000)")
    parser.add_argument("--kodak", type=int, help="Kodak images (default: all 24)")
    parser.add_argument("--imagenette", type=int, default=1000,
                        help="Imagenette validation images, a class-balanced subset (default "
                             "1,000 of 3,925)")
    parser.add_argument("--sections", default="cifar,kodak,imagenette,compute",
                        help="sections to run; the others are read back from their result files")
    parser.add_argument("--only", metavar="REGEX",
                        help="measure only the pipelines whose name matches; the rest come from "
                             "their result files")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--repeats", type=int, default=7, help="latency repeats")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    classifier = tica.load(CLASSIFIER)
    if classifier.weights_info.untrained:
        print(f"warning: {CLASSIFIER} has no trained weights here: its numbers mean nothing",
              file=sys.stderr)
    sections = set(args.sections.split(","))
    split = load_split(args.data / "cifar10-jpeg.tar.gz", "test", limit=args.limit)
    cifar = Cache(args.out / "cifar10", args.fresh)
    if "cifar" in sections:
        print(f"CIFAR-10 test split: {len(split)} images")
        for spec in cifar_specs(classifier, args.runs, len(split)):
            cifar.run(spec, lambda: split_batches(split, 250), len(split), args.only)
        cifar.save()
    else:
        cifar.read_back()

    kodak = Cache(args.out / "kodak", args.fresh)
    if "kodak" in sections:
        kodak_files = sorted((args.data / "kodak").glob("kodim*.png"))[: args.kodak]
        kodak_images = [load_image(p)[None] for p in kodak_files]
        print(f"Kodak: {len(kodak_images)} images")
        for spec in kodak_specs(args.runs):
            kodak.run(spec, lambda: ((x, None) for x in kodak_images), len(kodak_images), args.only)
        kodak.save()
    else:
        kodak.read_back()

    imagenette = imagenette_section(args, sections)

    if "compute" in sections:
        print("Compute and latency")
        compute = compute_section(args.repeats, args.runs)
        write_results(compute, args.out / "compute")
    else:
        path = args.out / "compute.json"
        compute = json.loads(path.read_text()) if path.exists() else []

    margins = accuracy_margins(cifar.results)
    photo_margins = accuracy_margins(imagenette.results)
    bds = bd_rates(kodak.results)
    vr_cost = variable_rate_cost(cifar.results)
    (args.out / "comparisons.json").write_text(json.dumps(
        {"accuracy_margins": margins, "imagenette_accuracy_margins": photo_margins,
         "bd_rates": bds, "variable_rate_cost": vr_cost},
        indent=1, default=lambda v: None))
    ceiling = next((r["top1"] for r in cifar.results if r["pipeline"] == CLEAN), None)
    plot(cifar.results, "top1", args.out / "cifar10_accuracy.png",
         "CIFAR-10 test split: rate vs accuracy", "top-1 accuracy", ceiling=ceiling)
    plot(cifar.results, "psnr", args.out / "cifar10_psnr.png",
         "CIFAR-10 test split: rate vs PSNR", "PSNR (dB)")
    if imagenette.results:
        photo_ceiling = next((r["top1"] for r in imagenette.results if r["pipeline"] == CLEAN), None)
        plot(imagenette.results, "top1", args.out / "imagenette_accuracy.png",
             "Imagenette validation: rate vs accuracy", "top-1 accuracy", ceiling=photo_ceiling)
    published = {"CompressAI bmshj2018-hyperprior (published)":
                 tuple(map(list, zip(*rd.COMPRESSAI_HYPERPRIOR_KODAK)))}
    plot(kodak.results, "psnr_per_image", args.out / "kodak_psnr.png", "Kodak (24 images): rate vs PSNR",
         "PSNR (dB)", extra=published)

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "minutes": (time.perf_counter() - start) / 60,
            "measured": cifar.measured + kodak.measured + imagenette.measured,
            "cached": cifar.reused + kodak.reused + imagenette.reused,
            "machine": machine(), "cifar_images": len(split),
            "imagenette_images": max((r["images"] for r in imagenette.results), default=None),
            "evaluation_minutes": sum(r["seconds"] for r in cifar.results + kodak.results
                                      + imagenette.results) / 60,
            "budgets": budgets(),
            "imagenette": imagenette.results, "imagenette_margins": photo_margins}
    meta["claims"] = state_claims(cifar.results, kodak.results, margins, bds, compute, meta)
    meta["variable_rate_cost"] = vr_cost
    page = render(cifar.results, kodak.results, margins, bds, compute,
                  cifar.notes + kodak.notes + imagenette.notes, meta)
    page_path = args.out.parent / "RESULTS.md"
    page_path.write_text(page)
    print(f"wrote {page_path} in {meta['minutes']:.1f} min")
    return 0


def imagenette_section(args, sections: set[str]) -> Cache:
    """tica-photo against the clean-pixel ViT and codec -> decode -> ViT on Imagenette."""
    cache = Cache(args.out / "imagenette", args.fresh)
    archive = args.data / "imagenette-224.tar.gz"
    if "imagenette" not in sections or not args.imagenette:
        cache.read_back()
        return cache
    if find_weights(PHOTO_CLASSIFIER, "classifier") is None or not archive.exists():
        cache.read_back()
        cache.notes.append(f"imagenette: not measured here ({PHOTO_CLASSIFIER} weights or "
                           f"{archive.name} missing)")
        return cache
    classifier = tica.load(PHOTO_CLASSIFIER)
    split = load_split(archive, "val", limit=args.imagenette)
    print(f"Imagenette validation split: {len(split)} images")
    for spec in imagenette_specs(classifier, len(split)):
        cache.run(spec, lambda: split_batches(split, 50), len(split), args.only)
    cache.save()
    return cache


def budgets() -> dict[str, dict]:
    """How each shipped model was trained (the manifest's provenance), by preset."""
    from tica.registry import read_manifest
    return {e.preset: e.trained for e in read_manifest() if e.trained and e.role != "step1"}


def machine() -> str:
    import os
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


if __name__ == "__main__":
    sys.exit(main())
