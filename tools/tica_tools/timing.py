"""Compute and latency of classifying from the bitstream against decoding, then classifying
pixels, measured side by side in one process.

MACs come from `torch.utils.flop_counter` (multiply-accumulates = counted FLOPs / 2; the
integer h_s is counted like a float convolution, the entropy decoder is not counted: it is
the same rANS kernel call on both paths). Latency is the median of interleaved runs, so a
noisy machine slows both paths alike."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

from tica import api
from tica.evaluate import classify_pixels, quantize_8bit
from tica.io import atomic_write_text
from tica.nn.integer import GEMM_ENV


def cpu_name() -> str:
    """The CPU's model name and its widest vector unit (AVX-512 or AVX2) where the system
    says, else what `platform` knows: one description for every benchmark's header."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return cpu
    names = [l.split(":", 1)[1].strip() for l in info if l.startswith("model name")]
    flags = next((l.split() for l in info if l.startswith("flags")), [])
    cpu = names[0] if names else cpu
    return cpu + (", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else "")


def count_macs(fn: Callable[[], object]) -> float:
    """Multiply-accumulates of one call of `fn`, the integer h_s counted as the
    convolutions it computes: it runs on its float64 path while counted, since the CPU's
    digit products would count it as nothing (int8 products, which the counter does not
    see) or once per digit product (float32, where a weight has two digits)."""
    with mock.patch.dict(os.environ, {GEMM_ENV: "float64"}), \
            FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def median_seconds(fn: Callable[[], object], repeats: int,
                   device: torch.device | None = None) -> float:
    """Median seconds of one call of `fn` over `repeats` calls after a warm-up; on a CUDA
    device each call is timed to its end (synchronized)."""
    def once() -> float:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    once()
    return statistics.median(once() for _ in range(repeats))


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms per call of each function, run in turn `repeats` times after a warm-up."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass
class PathCost:
    setting: str              # e.g. "tica-cifar q3, 32x32, batch 1"
    path: str                 # "classify from bitstream" or "decode (codec) + pixel ViT"
    gmacs_per_image: float
    ms_per_image: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def classify_paths(model, images: torch.Tensor, classifier, setting: str, repeats: int = 5,
                   decoders: dict | None = None) -> list[PathCost]:
    """Cost of tica's classify-from-bitstream and of every decode-then-classify path:
    tica's own decoder and each codec of `decoders` ({label: codec model}), followed by the
    pixel classifier. Every path starts from real bytes of its own codec."""
    n = len(images)
    streams = {"tica": api.compress(model, images)}
    paths: dict[str, Callable[[], object]] = {
        "classify from bitstream": lambda: api.classify_logits(model, streams["tica"]),
    }

    def decode_then_classify(codec, key: str) -> Callable[[], object]:
        return lambda: classify_pixels(
            classifier, quantize_8bit(torch.stack(api.reconstruct(codec, streams[key]))))

    paths[f"decode ({model.config.name}) + pixel ViT"] = decode_then_classify(model, "tica")
    for label, codec in (decoders or {}).items():
        streams[label] = api.compress(codec, images)
        paths[f"decode ({label}) + pixel ViT"] = decode_then_classify(codec, label)
    ms = interleaved_median_ms(paths, repeats)
    return [PathCost(setting, key, count_macs(fn) / n / 1e9, ms[key] / n)
            for key, fn in paths.items()]


def photo_timing_models(classifier: str = "vit-pixel-cifar"):
    """(tica-photo, pixel ViT) for timing at photo sizes: the shipped tica-photo, and a
    pixel ViT of its ViT's size on 16x16 patches, so both see the same token count (an
    untrained one: speed depends on shapes only)."""
    from tica.registry import create_model

    photo = api.load("tica-photo")
    c = photo.config
    pixel = create_model(classifier, patch_size=16, img_size=256, depth=c.depth,
                         embed_dim=c.embed_dim, num_heads=c.num_heads).eval()
    return photo, pixel


def write_benchmark(folder: Path, name: str, page: str, numbers: dict | list) -> None:
    """A benchmark's results: its page `name`.md and its numbers `name`.json in `folder`
    (docs/benchmarks by default), each written atomically; the page printed."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.md", page)
    atomic_write_text(folder / f"{name}.json", json.dumps(numbers, indent=1) + "\n")
    print(page)
