"""The evaluator measures real bitstreams and the metrics are right."""

from __future__ import annotations

import json

import pytest
import torch

import tica
from tica import bitstream
from tica.data import ImageFolderSplit
from tica.evaluate import evaluate_codec, ms_ssim_any_size


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    for size in (32, 200):
        x = torch.rand(2, 3, size, size, generator=g)
        assert torch.allclose(ms_ssim_any_size(x, x), torch.ones(2), atol=1e-5)
        noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        assert (ms_ssim_any_size(noisy, x) < 0.95).all()


def test_eval_counts_real_bytes_and_real_predictions(tica_cifar, cifar_samples, cifar_images):
    labels = torch.tensor([i // 2 for i in range(len(cifar_images))])
    split = ImageFolderSplit((cifar_images * 255).round().to(torch.uint8), labels,
                             tuple(tica_cifar.config.labels))
    result = evaluate_codec(tica_cifar, split, batch=7)
    x = split.images.float() / 255
    streams = [tica.compress(tica_cifar, img) for img in x]
    assert result.bpp == pytest.approx(sum(8 * len(s) for s in streams) / (len(x) * 32 * 32))
    assert all(bitstream.overhead(bitstream.unpack(s)) == 11 for s in streams)
    logits = torch.cat([tica.classify_logits(tica_cifar, s) for s in streams])
    assert result.top1 == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    top5 = logits.topk(5, 1).indices
    assert result.top5 == pytest.approx(float((top5 == labels[:, None]).any(1).float().mean()))
    x_hat = torch.stack([tica.reconstruct(tica_cifar, s)[0] for s in streams])
    mse = float((((x_hat * 255).round() - x * 255) ** 2).mean())
    assert result.psnr == pytest.approx(10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item(), rel=1e-4)
    assert 0 <= result.ms_ssim <= 1 and result.images == len(x)


def test_eval_cli_json(archive, capsys):
    from tica.cli import main
    from tica.registry import shipped_weights
    assert main(["eval", "--data", str(archive), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    shipped = sorted(shipped_weights().get("tica-cifar", {}))
    assert [r["quality"] for r in results] == (shipped or [None])     # every rate point
    for result in results:
        assert set(result) >= {"quality", "top1", "top5", "bpp", "psnr", "ms_ssim"}
        assert result["images"] == 4 and result["bpp"] > 0
    assert main(["eval", "--data", str(archive.parent / "missing"), "--json"]) == 1
    assert "not found" in capsys.readouterr().err
