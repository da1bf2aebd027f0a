"""Compute and latency of classify-from-bitstream against decode-then-classify."""

from __future__ import annotations

import pytest
import torch

import tica
from tica_tools.timing import classify_paths, count_macs, interleaved_median_ms
from tica.evaluate import classify_pixels, quantize_8bit


def test_macs_are_counted_exactly():
    layer = torch.nn.Linear(64, 32)
    assert count_macs(lambda: layer(torch.zeros(5, 64))) == 5 * 64 * 32
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(lambda: conv(torch.zeros(1, 3, 10, 10))) == 10 * 10 * 8 * 3 * 9


def test_interleaved_timing_takes_the_median_of_interleaved_runs(monkeypatch):
    """On a fake clock each call advances by a known amount: the result is exactly the median
    of the timed runs (the warm-up not among them), and the paths take turns."""
    import tica_tools.timing
    clock, calls = [0.0], []
    costs = {"a": iter([9.0, 3.0, 5.0, 4.0]), "b": iter([9.0, 1.0, 1.0, 7.0])}   # s; first: warm-up

    def path(key):
        def run():
            calls.append(key)
            clock[0] += next(costs[key])
        return run

    monkeypatch.setattr(tica_tools.timing.time, "perf_counter", lambda: clock[0])
    ms = interleaved_median_ms({"a": path("a"), "b": path("b")}, repeats=3)
    assert ms == {"a": 4000.0, "b": 1000.0}
    assert calls == ["a", "b"] + ["a", "b"] * 3


def test_classify_from_bitstream_skips_the_decoder(tica_cifar, hyperprior_cifar):
    classifier = tica.create_model("vit-pixel-cifar").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = classify_paths(tica_cifar, images, classifier, "test", repeats=1,
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
    # the counts are exact: the stream's classification, and decoding plus the pixel ViT
    stream = tica.compress(tica_cifar, images)
    n = len(images)
    assert own == count_macs(lambda: tica.classify_logits(tica_cifar, stream)) / n / 1e9
    x_hat = quantize_8bit(torch.stack(tica.reconstruct(tica_cifar, stream)))
    decode = count_macs(lambda: tica.reconstruct(tica_cifar, stream)) + \
        count_macs(lambda: classify_pixels(classifier, x_hat))
    assert by_path["decode (tica-cifar) + pixel ViT"].gmacs_per_image == pytest.approx(decode / n / 1e9)
    assert all(r.setting == "test" and r.ms_per_image > 0 for r in rows)
