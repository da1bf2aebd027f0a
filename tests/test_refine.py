"""Encoder-side refinement (tica.models.refine): the rate point it optimises, a better stream
by the model's own objective that every decoder reads, the weights left as they were, and
its refusals (budget, size, steps, weights that do not say what they were trained on)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tica
from tica import api
from tica.cli import main
from tica.cost import Budget
from tica.errors import BudgetError, LimitError, TicaError

from conftest import refinement_moves
from tica.image import read_image
from tica.models import refine as refine_module
from tica.models.refine import rate_point, refine


@pytest.fixture(scope="module")
def shipped_cifar():
    return tica.load("tica-cifar")


def test_rate_point_at_and_between_the_standard_points(shipped_cifar):
    points = shipped_cifar.weights_info.rate_points
    for q in (1, 4, 8):
        assert rate_point(shipped_cifar, float(q)) == pytest.approx(tuple(points[q - 1]))
    # log-linear halfway between q2 and q3: the geometric mean of each weight
    alpha, beta = rate_point(shipped_cifar, 2.5)
    assert alpha == pytest.approx(math.sqrt(points[1][0] * points[2][0]))
    assert beta == pytest.approx(math.sqrt(points[1][1] * points[2][1]))
    assert rate_point(shipped_cifar, 0.5) == pytest.approx(tuple(points[0]))   # clamped


def test_rate_point_refuses_weights_that_do_not_say(tica_cifar):
    # a preset's random weights: nothing known of their training
    with pytest.raises(TicaError, match="refinement needs"):
        rate_point(tica_cifar, 4.0)


def _objective(model, x, data, quality):
    """The real stream's bits per pixel + beta * MSE (0-255), per image."""
    _, beta = rate_point(model, quality)
    stream = api.parse(model, data)
    x_hat = torch.stack(tica.reconstruct(model, data))
    bits = torch.tensor([8.0 * len(p) for p in stream.payloads]) / (x.shape[-1] * x.shape[-2])
    return bits + beta * (x_hat * 255 - x * 255).square().flatten(1).mean(1)


def test_refined_stream_is_better_and_any_decoder_reads_it(shipped_cifar, cifar_images):
    model, x = shipped_cifar, cifar_images[:12]
    plain = tica.compress(model, x, quality=3.0)
    refined = tica.compress(model, x, quality=3.0, refine=15)
    assert refined != plain
    assert tica.compress(model, x, quality=3.0, refine=0) == plain     # 0: plain encoding
    # the same container and version, decoded by the ordinary path, with its quality
    assert api.stream_qualities(api.parse(model, refined)) == [3.0] * 12
    # the decoder rebuilds exactly the latent the refinement chose
    _, _, means, symbols = model.analyze(x, 3.0, refine=15)
    decoded = torch.cat([y for _, _, y in api.decompress(model, refined)])
    assert torch.equal(decoded, model.dequantize(symbols + means, 3.0))
    # lower on the model's own objective (real bits and real pixels), on average
    before = _objective(model, x, plain, 3.0).mean()
    after = _objective(model, x, refined, 3.0).mean()
    assert after < before * 0.995
    # the classes stay what the plain stream says, for nearly every image
    same = (api.classify_logits(model, plain).argmax(1)
            == api.classify_logits(model, refined).argmax(1)).float().mean()
    assert same >= 10 / 12


def test_refinement_keeps_each_images_best_and_leaves_the_weights(shipped_cifar, cifar_images):
    # all 20 images: refinement finds a better iterate for a few images in 5 steps (2-3 of
    # these 20 with the shipped 6f0e; rounding moves in steps, so most images keep theirs)
    model, x = shipped_cifar, cifar_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y0, z0 = refine(model, x, 2.0, 0)
    y, z = refine(model, x, 2.0, 5)
    assert y.shape == y0.shape and z.shape == z0.shape
    assert not torch.equal(y, y0)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a step size that can only make things worse: each image keeps its plain latents
    y_bad, z_bad = refine(model, x, 2.0, 3, lr=1e3)
    assert torch.equal(y_bad, y0) and torch.equal(z_bad, z0)


def test_refinement_costs_its_steps_in_the_budget(shipped_cifar, cifar_images):
    model = shipped_cifar
    plain = model.cost((32, 32), "encode")
    step = model.cost((32, 32), "encode", refine=1) - plain
    assert step > 0
    assert model.cost((32, 32), "encode", refine=10) == pytest.approx(plain + 10 * step)
    tight = Budget(max_gflop=len(cifar_images[:4]) * (plain + 5 * step))
    tica.compress(model, cifar_images[:4], quality=2.0, refine=4, budget=tight)
    with pytest.raises(BudgetError, match="6 refinement steps"):
        tica.compress(model, cifar_images[:4], quality=2.0, refine=6, budget=tight)


def test_refinement_refuses_negative_steps_and_huge_images(shipped_cifar, cifar_images,
                                                          monkeypatch):
    with pytest.raises(TicaError, match="refinement steps"):
        tica.compress(shipped_cifar, cifar_images[:1], refine=-1)
    monkeypatch.setattr(refine_module, "MAX_PIXELS", 32 * 32 - 1)
    with pytest.raises(LimitError, match="without refinement"):
        tica.compress(shipped_cifar, cifar_images[:1], refine=2)


def test_cli_encode_refine(tmp_path, cifar_samples, cifar_images, capsys):
    moved = refinement_moves(tica.load("tica-cifar"), cifar_images)[0]
    src = tmp_path / "img.jpg"
    src.write_bytes(cifar_samples[moved][0])
    out = tmp_path / "img.tica"
    args = ["encode", str(src), "-o", str(out), "--model", "tica-cifar", "--quality", "2"]
    assert main(args + ["--refine", "5"]) == 0
    refined = out.read_bytes()
    model = tica.load("tica-cifar")
    assert refined == tica.compress(model, read_image(src), quality=2.0, refine=5)
    assert refined != tica.compress(model, read_image(src), quality=2.0)
    capsys.readouterr()
    assert main(args + ["--refine", "-3"]) == 1
    assert "refinement steps" in capsys.readouterr().err


def test_eval_refine_names_its_rows(tmp_path, cifar_samples, cifar_images, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    moved = refinement_moves(tica.load("tica-cifar"), cifar_images, steps=4)
    for i in ([*moved, 0, 1, 2])[:3]:
        (folder / f"{i}.jpg").write_bytes(cifar_samples[i][0])
    args = ["eval", "--data", str(folder), "--model", "tica-cifar", "--quality", "2", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)["results"][0]
    assert main(args + ["--refine", "4"]) == 0
    refined = json.loads(capsys.readouterr().out)["results"][0]
    assert plain["pipeline"] == "tica-cifar"
    assert refined["pipeline"] == "tica-cifar, refined (4 steps)"
    assert refined["images"] == plain["images"] == 3
    assert refined["bpp"] != plain["bpp"] or refined["psnr"] != plain["psnr"]


def test_target_bpp_bisects_over_refined_streams(shipped_cifar, cifar_images):
    x = cifar_images[:2]
    target = 1.0
    qualities = api.qualities_for_bpp(shipped_cifar, x, target, refine=3)
    for img, q in zip(x, qualities):
        data = tica.compress(shipped_cifar, img, quality=q, refine=3)
        assert 8 * len(data) / (32 * 32) <= target
        if q < 8:       # the next quality up on the stream's grid is over the target
            over = tica.compress(shipped_cifar, img, quality=q + 1 / 16, refine=3)
            assert 8 * len(over) / (32 * 32) > target
