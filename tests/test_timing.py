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


@pytest.mark.parametrize("gemm", ["int8", "float32", "float64"])
def test_the_integer_h_s_counts_as_its_convolutions_on_every_path(gemm, monkeypatch):
    """Whichever digit product the CPU runs (int8 products are invisible to the counter,
    float32 ones are one per digit: the default h_s has two-digit weights), the count is
    the h_s's convolutions, and the path the process chose is left as it was."""
    monkeypatch.setenv("TICA_INTEGER_GEMM", gemm)
    model = tica.create_model("tica-cifar", N=32, M=48).eval()
    model.update()
    z = torch.randint(-2, 3, (1, 32, 4, 4)).float()
    convolutions = sum(count_macs(lambda m=m, x=x: m(x)) for m, x in _h_s_inputs(model, z))
    assert count_macs(lambda: model.integer_h_s(z)) == convolutions > 0
    import os
    assert os.environ["TICA_INTEGER_GEMM"] == gemm


def _h_s_inputs(model, z):
    """Each convolution of the float h_s with the input it sees."""
    x, out = z, []
    for m in model.h_s:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            out.append((m, x))
        x = m(x)
    return out


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


def test_photo_timing_times_the_shipped_photo_codec_against_a_pixel_vit_of_its_size():
    """The shipped tica-photo (it classifies) and a pixel ViT that sees as many tokens at
    224x224 (16x16 patches against 16x downsampling) through a ViT of the same size."""
    from tica_tools.timing import photo_timing_models
    photo, pixel = photo_timing_models()
    assert photo.model_id == tica.load("tica-photo").model_id and photo.is_updated
    assert "classify" in photo.operations
    c, p = photo.config, pixel.config
    assert (p.depth, p.embed_dim, p.num_heads, p.patch_size) == (c.depth, c.embed_dim,
                                                                 c.num_heads, 2 ** c.stages)
