"""Compute and latency of classify-from-bitstream against decode-then-classify."""

from __future__ import annotations

import pytest
import torch

import tica
from tica.bench import classify_paths, count_macs, interleaved_median_ms


def test_macs_are_counted_exactly():
    layer = torch.nn.Linear(64, 32)
    assert count_macs(lambda: layer(torch.zeros(5, 64))) == 5 * 64 * 32
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(lambda: conv(torch.zeros(1, 3, 10, 10))) == 10 * 10 * 8 * 3 * 9


def test_interleaved_timing_returns_every_path():
    ms = interleaved_median_ms({"a": lambda: sum(range(1000)), "b": lambda: None}, repeats=3)
    assert set(ms) == {"a", "b"} and ms["a"] > ms["b"] >= 0


def test_classify_from_bitstream_skips_the_decoder(tica_cifar, hyperprior_cifar):
    classifier = tica.create_model("vit-pixel-cifar").eval()
    rows = classify_paths(tica_cifar, torch.rand(2, 3, 32, 32), classifier, "test", repeats=1,
                          decoders={"hp": hyperprior_cifar})
    by_path = {r.path: r for r in rows}
    assert set(by_path) == {"classify from bitstream", "decode (tica-cifar) + pixel ViT",
                            "decode (hp) + pixel ViT"}
    own = by_path["classify from bitstream"].gmacs_per_image
    # decode-then-classify runs g_s (and the FAM's blocks) and a ViT of the same size on top
    D = tica_cifar.config.embed_dim                       # the FAM feeds g_s D channels
    g_s = count_macs(lambda: tica_cifar.g_s(torch.zeros(1, D, 8, 8))) / 1e9
    assert by_path["decode (tica-cifar) + pixel ViT"].gmacs_per_image > own + g_s
    assert by_path["decode (hp) + pixel ViT"].gmacs_per_image > own
    assert all(r.ms_per_image > 0 for r in rows)
