"""Rate points and their cache: a result is reused while its key (weights, codec version,
image count) matches, and a stale one stands in for a rate point whose weights are absent."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch

from tica.evaluate import Pipeline, evaluate, write_results


def digest(module: torch.nn.Module) -> str:
    """Short identity of a model's weights (the stream id's fingerprint for codecs)."""
    if hasattr(module, "fingerprint"):
        return module.fingerprint.hex()[:16]
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def codec_version(name: str) -> str:
    """The library and version that runs a classical codec, part of its cache key."""
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


Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]]


class Cache:
    """One section's results (`path`.json / .csv): reused, measured or read back."""

    def __init__(self, path: Path, fresh: bool, log: Callable[[str], None] = print) -> None:
        self.path = path
        old = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else []
        self.old = [] if fresh else old
        self.stale = old            # usable when weights are missing, even with --fresh
        self.results: list[dict] = []
        self.notes: list[str] = []
        self.measured = self.reused = 0
        self.log = log

    def save(self) -> None:
        """Write every result of the section, the reused ones too."""
        write_results(self.results, self.path)

    def read_back(self) -> None:
        """A section not run this time: its last results, as they are."""
        self.results = list(self.stale)
        self.reused += len(self.results)
        self.notes.append(f"{self.path.name}: section not run, {len(self.results)} results read "
                          f"back from {self.path.name}.json")

    def run(self, spec: Spec, batches: Batches, images: int, only: str | None = None) -> None:
        """Reuse the rate point's cached result, or measure it, or say why neither."""
        if only and not re.search(only, spec.label):
            hit = self._stale_hit(spec, images)
            if hit:
                self._reuse(hit, spec, " (not selected by --only)")
            return
        hit = next((r for r in self.old if spec.key and r.get("key") == spec.key), None)
        if hit:
            self._reuse(hit, spec)
        elif spec.build is None:
            self._without_weights(spec, images)
        else:
            self._measure(spec, batches)

    def _stale_hit(self, spec: Spec, images: int) -> dict | None:
        """The last result of the same pipeline, rate point and image count, whatever its key."""
        return next((r for r in self.stale if r["pipeline"] == spec.label
                     and r["quality"] == spec.quality and r["images"] == images), None)

    def _reuse(self, hit: dict, spec: Spec, why: str = "") -> None:
        self.log(f"  cached   {spec.label} q={spec.quality}{why}")
        self.results.append(hit)
        self.reused += 1

    def _without_weights(self, spec: Spec, images: int) -> None:
        # the last result on as many images, else on any count (it cannot be measured again
        # here, and a comparison it belongs to was measured on its own count: the note says)
        hit = self._stale_hit(spec, images) or next(
            (r for r in self.stale if r["pipeline"] == spec.label
             and r["quality"] == spec.quality), None)
        if hit:
            self._reuse(hit, spec, " (weights not here)")
            count = "" if hit["images"] == images else f" on {hit['images']:,} images"
            self.notes.append(f"{spec.label} q={spec.quality}: cached result of "
                              f"{hit.get('date', '?')}{count}, its weights are not in this "
                              f"checkout")
        else:
            self.log(f"  missing  {spec.label} q={spec.quality}: no weights, no earlier result")
            self.notes.append(f"{spec.label} q={spec.quality}: not evaluated (no weights)")

    def _measure(self, spec: Spec, batches: Batches) -> None:
        result = evaluate(spec.build(), batches()).to_dict()
        result.update(key=spec.key, date=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
        self.log(f"  measured {spec.label} q={spec.quality}: bpp {result['bpp']:.3f}"
                 + (f" top-1 {result['top1']:.4f}" if result["top1"] is not None else "")
                 + (f" PSNR {result['psnr']:.2f}" if result["psnr"] is not None else "")
                 + f" ({result['seconds']:.0f} s)")
        self.results.append(result)
        self.measured += 1
        # progress survives an interrupted run, and so do the earlier results of the rate
        # points this run has not reached yet (save() at the end keeps only this run's)
        done = {(r["pipeline"], r["quality"]) for r in self.results}
        pending = [r for r in self.stale if (r["pipeline"], r["quality"]) not in done]
        write_results(self.results + pending, self.path)
