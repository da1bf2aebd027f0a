"""Token grids larger than the trained one (tica.models.vit): attention in windows of the
trained grid once global attention would dominate the cost, so the work grows with the area,
not its square."""

from __future__ import annotations

import pytest
import torch

import tica
from tica import cost
from tica.models import vit as vit_module
from tica.models.vit import VisionTransformer, window_origins


def small_vit(grid=(4, 4)) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(dim=32, depth=3, num_heads=2, mlp_ratio=2.0, drop_path=0.0,
                             num_classes=5, grid=grid).eval()


@pytest.mark.parametrize("n, size", [(8, 4), (10, 4), (4, 4), (3, 4), (17, 8), (64, 8)])
def test_windows_cover_every_token_and_stay_inside(n, size):
    size = min(size, n)
    origins = window_origins(n, size)
    covered = {i for o in origins for i in range(o, o + size)}
    assert covered == set(range(n))
    assert all(0 <= o <= n - size for o in origins) and origins == sorted(origins)
    assert len(origins) == -(-n // size)                     # no more windows than needed


@torch.no_grad()
def test_a_window_sees_exactly_what_the_trained_grid_would():
    """Each window runs as its own sequence with its own class token and the trained position
    embedding: its tokens come out as if that window were a whole image of the trained size."""
    model = small_vit()
    model.attention = "window"
    tokens = torch.randn(2, 8 * 12, 32)                        # an 8x12 grid: 2x3 windows of 4x4
    feats, (inter,) = model.forward_intermediates(tokens, (8, 12), (2,))
    grid = tokens.reshape(2, 8, 12, 32)
    model.attention = "global"
    cls = []
    for y in (0, 4):
        for x in (0, 4, 8):
            alone = grid[:, y:y + 4, x:x + 4].reshape(2, 16, 32)
            f, (i,) = model.forward_intermediates(alone, (4, 4), (2,))
            got = inter.reshape(2, 8, 12, 32)[:, y:y + 4, x:x + 4].reshape(2, 16, 32)
            torch.testing.assert_close(got, i)
            torch.testing.assert_close(feats.reshape(2, -1, 32)[:, 1:].reshape(2, 8, 12, 32)
                                       [:, y:y + 4, x:x + 4].reshape(2, 16, 32), f[:, 1:])
            cls.append(f[:, 0])
    torch.testing.assert_close(feats[:, 0], torch.stack(cls, 1).mean(1))   # the windows' mean


@torch.no_grad()
def test_auto_keeps_global_attention_while_it_does_not_dominate():
    model = small_vit()                                        # D 32, MLP ratio 2
    assert model.global_limit == vit_module.ATTENTION_SHARE * (2 + 2) * 32 == 512
    tokens = torch.randn(1, 22 * 22, 32)                       # 484 tokens, 30x the trained grid
    assert model.window((22, 22)) is None and model.sequences((22, 22)) == (1, 1 + 484)
    auto = model.forward_features(tokens, (22, 22))
    model.attention = "global"
    torch.testing.assert_close(auto, model.forward_features(tokens, (22, 22)))
    model.attention = "auto"
    assert model.window((24, 24)) == (4, 4)                    # 576 tokens: windows of 4x4
    assert model.sequences((24, 24)) == (36, 17)
    assert model.forward_features(torch.randn(1, 576, 32), (24, 24)).shape == (1, 577, 32)
    # a grid narrower than the trained one along an axis keeps that axis whole
    model.attention = "window"
    assert model.window((2, 40)) == (2, 4) and model.sequences((2, 40)) == (10, 9)
    # at the trained grid or inside it, every mode is global attention
    assert all(model.window((4, 4)) is None for model.attention in vit_module.ATTENTION_MODES)


@torch.no_grad()
def test_pooled_classification_runs_the_trained_grid_once():
    model = small_vit()
    model.attention = "pool"
    tokens = torch.randn(1, 16 * 16, 32)
    assert model.sequences((16, 16), classify=True) == (1, 17)
    pooled = tokens.reshape(1, 4, 4, 4, 4, 32).mean((2, 4)).reshape(1, 16, 32)  # 4x4 blocks
    model_global = small_vit()
    torch.testing.assert_close(model.forward_head(model.forward_features(tokens, (16, 16))),
                               model_global.forward_head(model_global.forward_features(pooled, (4, 4))))


def test_windows_make_a_large_grid_linear_in_the_area():
    cifar = tica.load("tica-cifar")
    try:
        cifar.vit.attention = "global"
        quadratic = cifar.cost((2048, 2048), "classify") / cifar.cost((512, 512), "classify")
        cifar.vit.attention = "auto"
        linear = cifar.cost((2048, 2048), "classify") / cifar.cost((512, 512), "classify")
    finally:
        cifar.vit.attention = "auto"
    assert quadratic > 150 and linear == pytest.approx(16, rel=0.05)
    # the stream, a 1024x1024 image through the CIFAR model, now fits the default budget
    assert cifar.cost((1024, 1024), "classify") < cost.DEFAULT_MAX_GFLOP / 2


@torch.no_grad()
def test_the_shipped_photo_model_decodes_a_large_photo_in_windows(photo_path):
    """A grid 2.6x tica-photo's trained 14x14: windows change the decoded picture by little
    (0.00 dB on all of Kodak, docs/design.md); here a made-up photograph."""
    from tica.image import read_image
    photo = tica.load("tica-photo")
    image = read_image(photo_path)[:, :256, :512]               # 16x32 tokens
    data = tica.compress(photo, image[None])
    (_, size, y_hat), = list(tica.decompress(photo, data))
    out = {}
    for mode in ("global", "window"):
        photo.vit.attention = mode
        out[mode] = photo.reconstruct_latent(y_hat, size)[0]
    photo.vit.attention = "auto"
    mse = lambda x: float(((x - image) ** 2).mean())           # noqa: E731
    assert abs(mse(out["window"]) - mse(out["global"])) < 0.05 * mse(out["global"])
    assert not torch.equal(out["window"], out["global"])             # it did run in windows
