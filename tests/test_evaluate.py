"""The evaluator measures real bitstreams and the metrics are right."""

from __future__ import annotations

import json

import pytest
import torch

import tica
from tica import bitstream
from tica.io import WeightsInfo
from tica.data import ImageFolderSplit
from tica_tools.classical import ClassicalPipeline, get_codec
from tica.evaluate import (LearnedPipeline, Uncompressed, evaluate,
                           evaluate_codec, ms_ssim_any_size, split_batches, write_results,
                           MSSSIM_CHUNK_PIXELS)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    for size in (32, 200):
        x = torch.rand(2, 3, size, size, generator=g)
        assert torch.allclose(ms_ssim_any_size(x, x), torch.ones(2), atol=1e-5)
        noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        assert (ms_ssim_any_size(noisy, x) < 0.95).all()


def test_small_image_ssim_matches_pytorch_msssim():
    """The small-image path's SSIM (3-tap window) is pytorch_msssim's, per image."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from tica.evaluate import _gaussian_window, _ssim_and_cs
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = _ssim_and_cs(x, y, _gaussian_window(3, 1.5))[0].mean(1)
    theirs = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False, win_size=3)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_standard_ms_ssim_matches_pytorch_msssim_in_passes_of_a_few_images():
    """Above 160 px a side, MS-SSIM is the standard one (pytorch_msssim's numbers), odd sides
    included, whether the batch fits one pass or several."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(2)
    for shape in ((3, 3, 300, 300), (1, 3, 181, 203)):
        x = torch.rand(shape, generator=g)
        y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        theirs = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
        assert torch.allclose(ms_ssim_any_size(x, y), theirs, atol=2e-6)
        assert torch.allclose(ms_ssim_any_size(x[:1], y[:1]), theirs[:1], atol=2e-6)
    assert 3 * 300 * 300 > MSSSIM_CHUNK_PIXELS          # the first batch took two passes


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
    errors = (((x_hat * 255).round() - x * 255) ** 2).flatten(1).mean(1)
    assert result.psnr == pytest.approx(10 * torch.log10(255.0 ** 2 / errors.mean()).item(), rel=1e-4)
    assert result.psnr_per_image == pytest.approx(
        float((10 * torch.log10(255.0 ** 2 / errors)).mean()), rel=1e-4)
    assert 0 <= result.ms_ssim <= 1 and result.images == len(x)


def test_eval_cli_json(archive, capsys):
    from tica.cli import main
    from tica.registry import standard_qualities
    assert main(["eval", "--data", str(archive), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    shipped = standard_qualities("tica-cifar")
    assert [r["quality"] for r in results] == (shipped or [None])     # every rate point
    for result in results:
        assert set(result) >= {"quality", "top1", "top5", "bpp", "psnr", "ms_ssim"}
        assert result["images"] == 4 and result["bpp"] > 0
    assert main(["eval", "--data", str(archive.parent / "missing"), "--json"]) == 1
    assert "not found" in capsys.readouterr().err


def test_eval_cli_scores_a_pixel_classifier_on_clean_images(archive, capsys):
    from tica.cli import main
    from tica.data import load_split
    from tica.evaluate import Uncompressed, evaluate, split_batches

    assert main(["eval", "--data", str(archive), "--model", "vit-pixel-cifar", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    split = load_split(str(archive), "test")
    expected = evaluate(Uncompressed(tica.load("vit-pixel-cifar")), split_batches(split))
    assert result["images"] == 4 and result["top1"] == pytest.approx(expected.top1)
    assert result["bpp"] == 24.0 and result["quality"] is None       # raw RGB, no rate point
    assert main(["eval", "--data", str(archive), "--model", "vit-pixel-cifar",
                 "--quality", "2"]) == 1
    assert "no --quality" in capsys.readouterr().err


def test_eval_cli_on_a_folder_of_images_of_any_sizes(tmp_path, archive, capsys):
    """A folder of images without labels (Kodak's shape): each image coded alone at its own
    size, bytes and pixels from real streams, no accuracy; a classifier needs labels."""
    from PIL import Image
    from tica.cli import main
    from tica.evaluate import eval_data

    g = torch.Generator().manual_seed(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    images = [torch.rand(3, 32, 48, generator=g), torch.rand(3, 40, 32, generator=g)]
    for i, x in enumerate(images):
        rgb = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(folder / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")         # not an image file: skipped
    data = eval_data(folder)
    assert (data.name, data.count, data.split) == ("photos_2", 2, None)
    assert main(["eval", "--data", str(folder), "--quality", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    model = tica.load("tica-cifar")
    streams = [tica.compress(model, (x * 255).round() / 255, quality=3) for x in images]
    assert result["images"] == 2 and result["top1"] is None and result["quality"] == 3
    assert result["bpp"] == pytest.approx(8 * sum(map(len, streams)) / (32 * 48 + 40 * 32))
    assert 0 < result["z_fraction"] < 1 and result["psnr"] > 10
    assert main(["eval", "--data", str(folder), "--limit", "1", "--quality", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["images"] == 1
    assert main(["eval", "--data", str(folder), "--model", "vit-pixel-cifar"]) == 1
    assert "needs labelled data" in capsys.readouterr().err
    assert main(["eval", "--data", str(folder), "--split", "val"]) == 1
    assert "drop --split" in capsys.readouterr().err
    for data in (folder, archive):
        assert main(["eval", "--data", str(data), "--limit", "0"]) == 1
        assert "--limit must be at least 1" in capsys.readouterr().err
    (folder / "im2.png").write_bytes(b"\x89PNG broken")
    assert main(["eval", "--data", str(folder), "--quality", "3"]) == 1
    assert "im2.png" in capsys.readouterr().err


def test_z_bytes_from_the_payloads_are_z_coded_alone(tica_cifar, cifar_images):
    """What the side information costs, read from real payloads, is z's own code."""
    from tica.entropy.payload import z_payloads
    x = cifar_images[:5]
    payloads = tica_cifar.compress(x)
    z = tica_cifar.analyze(x)[0].int().numpy()
    expected = [len(p) for p in z_payloads(z, tica_cifar.entropy_bottleneck.tables)]
    assert tica_cifar.z_bytes(payloads, (32, 32)) == expected
    assert all(0 < e < len(p) for e, p in zip(expected, payloads))


@pytest.fixture(scope="module")
def classifier():
    return tica.create_model("vit-pixel-cifar").eval()


def _labelled(cifar_images):
    labels = torch.tensor([i // 2 for i in range(len(cifar_images))])
    x = (cifar_images * 255).round() / 255
    return x, labels


def test_classical_pipeline_scores_the_decoded_files(cifar_images, classifier):
    x, labels = _labelled(cifar_images)
    codec = get_codec("webp")
    result = evaluate(ClassicalPipeline(codec, 50, classifier, "WebP"), [(x[:9], labels[:9]), (x[9:], labels[9:])])
    rgb = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    files = [codec.encode(img, 50) for img in rgb]
    decoded = torch.stack([torch.from_numpy(codec.decode(f).copy()).permute(2, 0, 1) for f in files]) / 255
    assert result.pipeline == "WebP" and result.quality == 50
    assert result.bpp == pytest.approx(8 * sum(map(len, files)) / (len(x) * 32 * 32))
    assert result.bpp_payload == pytest.approx(8 * sum(len(f) - 27 for f in files) / (len(x) * 32 * 32))
    logits = classifier.classify_pixels(decoded.float())
    assert result.top1 == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    mse = ((decoded * 255 - x * 255) ** 2).flatten(1).mean(1)
    assert result.psnr == pytest.approx(float(10 * torch.log10(255 ** 2 / mse.mean())), rel=1e-5)


def test_codec_then_classifier_and_uncompressed(cifar_images, classifier, hyperprior_cifar):
    x, labels = _labelled(cifar_images)
    clean = evaluate(Uncompressed(classifier), [(x, labels)])
    assert clean.bpp == 24 and clean.psnr is None and clean.ms_ssim is None
    assert clean.top1 == pytest.approx(float((classifier.classify_pixels(x).argmax(1) == labels).float().mean()))
    piped = evaluate(LearnedPipeline(hyperprior_cifar, name="hp", quality=2, classifier=classifier),
                     [(x, labels)])
    x_hat = torch.stack(tica.reconstruct(hyperprior_cifar, tica.compress(hyperprior_cifar, x)))
    logits = classifier.classify_pixels((x_hat * 255).round() / 255)
    assert piped.top1 == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert piped.bpp > piped.bpp_payload > 0 and piped.quality == 2
    # each image's record, in order: what the paired accuracy test resamples
    record = piped.per_image
    assert record.correct == (logits.argmax(1) == labels).tolist()
    assert record.predicted == logits.argmax(1).tolist()
    assert sum(record.bits) / sum(record.pixels) == pytest.approx(piped.bpp)
    assert record.bits == [8 * len(tica.compress(hyperprior_cifar, x[i:i + 1]))
                           for i in range(len(x))]
    assert "per_image" not in piped.to_dict()
    # no labels (Kodak): accuracy is not applicable, the rest is measured
    unlabelled = evaluate(LearnedPipeline(hyperprior_cifar), [(x, None)])
    assert unlabelled.top1 is None and unlabelled.bpp == pytest.approx(piped.bpp)
    assert unlabelled.per_image.correct is None and unlabelled.per_image.predicted is None
    assert unlabelled.per_image.bits == record.bits


def test_results_files_round_trip(tmp_path, cifar_images, classifier):
    x, labels = _labelled(cifar_images)
    result = evaluate(Uncompressed(classifier), split_batches(
        ImageFolderSplit((x * 255).round().to(torch.uint8), labels, ()), batch=6)).to_dict()
    result["extra"] = float("nan")
    write_results([result], tmp_path / "r")
    loaded = json.loads((tmp_path / "r.json").read_text())     # strict JSON: NaN became null
    assert loaded[0]["psnr"] is None and loaded[0]["extra"] is None
    assert loaded[0]["top1"] == pytest.approx(result["top1"]) and loaded[0]["images"] == len(x)
    header, row = (tmp_path / "r.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["pipeline", "quality", "top1"]
    assert row.split(",")[0] == "uncompressed"


def test_a_codec_only_model_refuses_to_classify(cifar_images):
    model = tica.create_model("tica-cifar").eval()
    model.update()
    model.weights_info = WeightsInfo(alpha=0.0)         # as a codec-only (alpha = 0) run exports
    assert model.weights_info.classifier_trained is False
    data = tica.compress(model, cifar_images[:2])
    with pytest.raises(tica.TicaError, match="alpha = 0"):
        tica.classify(model, data)
    result = evaluate(LearnedPipeline(model), [(cifar_images[:2], torch.tensor([0, 1]))])
    assert result.top1 is None and result.psnr is not None


def test_ms_ssim_levels_by_size_and_a_too_small_image_is_an_image_error():
    from tica.errors import ImageError
    from tica.evaluate import ms_ssim_any_size
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ms_ssim_any_size(x, x), torch.ones(2))
    assert (ms_ssim_any_size(x, (x + 0.1).clamp(0, 1)) < 1).all()
    assert ms_ssim_any_size(x[..., :3, :5], x[..., :3, :5]).shape == (2,)
    with pytest.raises(ImageError, match="at least 3x3"):
        ms_ssim_any_size(x[..., :2, :9], x[..., :2, :9])
