"""The rate points of each section: which weights, which codec qualities, which cache key."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from tica import api
from tica.evaluate import LearnedPipeline, Uncompressed
from tica_tools.classical import CLASSICAL_CODECS, ClassicalCodec, ClassicalPipeline
from tica.registry import standard_qualities
from .cache import Spec, codec_version, digest
from .names import (CLEAN, CODEC_LABELS, HYPER, IMAGENETTE_CODECS, PHOTO,
                    PHOTO_DECODED, PHOTO_NOFAM, TICA, TICA_FIXED, TICA_NOFAM, TICA_NOFAM_POINTS, TICA_VR_BUDGET,
                    TICA_VR_BUDGET_POINTS, run_weights)

Weights = Callable[[], torch.nn.Module] | None


def learned_spec(label: str, quality: int, weights: Weights, extra: str,
                 classifier: torch.nn.Module | None = None) -> Spec:
    """A learned codec's rate point; its key names the weights' digest."""
    if weights is None:
        return Spec(label, quality, None, None)
    model = weights()
    key = f"{label}|{quality}|{digest(model)}|{extra}"
    return Spec(label, quality, key,
                lambda: LearnedPipeline(model, name=label, quality=quality, classifier=classifier))


@functools.lru_cache(maxsize=16)
def _loaded(name: str | None, path: Path | None, stamp: int | None) -> torch.nn.Module:
    """One model for all the rate points that share its weights (a load builds the coding
    tables and the integer h_s: about half a second); `stamp`, the file's mtime, keys it."""
    return api.load(name) if path is None else api.load(weights=path)


def shipped(name: str, q: int) -> Weights:
    """The packaged model of `name` when it has rate point `q` (the pipeline codes at it),
    else None."""
    return (lambda: _loaded(name, None, None)) if q in standard_qualities(name) else None


def from_run(runs: Path, label: str, q: int) -> Weights:
    """The weights a training run under `runs` left for this rate point, None without them."""
    path = run_weights(runs, label, q)
    return (lambda: _loaded(None, path, path.stat().st_mtime_ns)) if path else None


def cifar_specs(classifier: torch.nn.Module, runs: Path, images: int) -> list[Spec]:
    """tica, its ablations and fixed-rate twins, the hyperprior, then every classical codec."""
    cls_id = digest(classifier)
    extra = f"n={images}"
    specs = [Spec(CLEAN, None, f"{CLEAN}|{cls_id}|{extra}", lambda: Uncompressed(classifier, CLEAN))]
    for q in standard_qualities("tica-cifar"):
        specs.append(learned_spec(TICA, q, shipped("tica-cifar", q), extra))
    # scripts/plans/cpu-ablations.json: a fixed-rate model at standard point 6's weights, same budget
    specs.append(learned_spec(TICA_FIXED, 6, from_run(runs, TICA_FIXED, 6), extra))
    # ... and the variable-rate model at that budget, around point 6 (the shipped one trained on)
    for q in TICA_VR_BUDGET_POINTS:
        specs.append(learned_spec(TICA_VR_BUDGET, q, from_run(runs, TICA_VR_BUDGET, q), extra))
    for q in TICA_NOFAM_POINTS:          # the device plan's equal-budget FAM ablation
        specs.append(learned_spec(TICA_NOFAM, q, from_run(runs, TICA_NOFAM, q), extra))
    for q in standard_qualities("hyperprior-cifar") or (1, 2, 3, 4):
        source = shipped("hyperprior-cifar", q) or from_run(runs, HYPER, q)
        specs.append(learned_spec(HYPER, q, source, f"{extra}|cls={cls_id}", classifier))
    return specs + classical_specs(CLASSICAL_CODECS, classifier, extra)


def classical_specs(codecs: dict[str, ClassicalCodec], classifier: torch.nn.Module,
                    extra: str) -> list[Spec]:
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


def imagenette_specs(classifier: torch.nn.Module, images: int) -> list[Spec]:
    """The paper's use case: tica-photo classifies Imagenette photographs from their streams;
    the pixel ViT on clean pixels, on tica-photo's own decoded streams and on JPEG / WebP
    decodes."""
    extra = f"imagenette|n={images}|spread"       # the subset of data.spread (every class)
    specs = [Spec(CLEAN, None, f"{CLEAN}|{digest(classifier)}|{extra}",
                  lambda: Uncompressed(classifier, CLEAN))]
    for q in standard_qualities("tica-photo"):
        specs.append(learned_spec(TICA, q, shipped("tica-photo", q), extra))
    for q in (1, 4, 8):                  # three points: decoding 224x224 costs ~5 min a point
        specs.append(learned_spec(PHOTO_DECODED, q, shipped("tica-photo", q),
                                  f"{extra}|cls={digest(classifier)}", classifier))
    codecs = {name: CLASSICAL_CODECS[name] for name in IMAGENETTE_CODECS}
    return specs + classical_specs(codecs, classifier, extra)


def kodak_specs(runs: Path) -> list[Spec]:
    """Rate-distortion on Kodak: tica-photo with and without FAM, and every classical codec."""
    specs = []
    for q in standard_qualities("tica-photo") or (1, 2, 3, 4):
        specs.append(learned_spec(PHOTO, q, shipped("tica-photo", q) or
                                  from_run(runs, PHOTO, q), "kodak"))
    for q in (1, 2, 3, 4):               # q1, q3 and q4 from earlier recipes: cached results
        specs.append(learned_spec(PHOTO_NOFAM, q, from_run(runs, PHOTO_NOFAM, q), "kodak"))
    for name, codec in CLASSICAL_CODECS.items():
        for q in codec.qualities:
            specs.append(Spec(CODEC_LABELS[name], q, f"{name}|{q}|{codec_version(name)}|kodak",
                              lambda c=codec, q=q: ClassicalPipeline(c, q, name=CODEC_LABELS[c.name])))
    return specs
