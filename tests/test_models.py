"""Every registered model: forward shapes, no NaN, every parameter receives a gradient."""

from __future__ import annotations

import pytest
import torch

import tica
from tica.registry import get_config


def _inputs(name: str) -> torch.Tensor:
    size = get_config(name).img_size
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _loss(out: dict, model) -> torch.Tensor:
    loss = torch.zeros(())
    for key in ("logits", "logits_dist"):
        if key in out:
            loss = loss + out[key].square().mean()
    if "x_hat" in out:
        loss = loss + out["x_hat"].square().mean()
    if out.get("likelihoods"):
        loss = loss + sum(-l.log2().mean() for l in out["likelihoods"].values())
        loss = loss + model.aux_loss()
    return loss


@pytest.mark.parametrize("name", tica.list_models())
def test_forward_shapes_finite_and_all_parameters_train(name):
    # no stochastic depth: with 2 images, both may skip a block and leave it without gradient
    model = tica.create_model(name, drop_path=0.0).train()
    cfg = model.config
    x = _inputs(name)
    out = model(x)
    if cfg.arch in ("tica", "vit-pixel"):
        assert out["logits"].shape == (2, cfg.num_classes)
        assert torch.isfinite(out["logits"]).all()
    if cfg.arch in ("tica", "hyperprior"):
        assert out["x_hat"].shape == x.shape
        assert torch.isfinite(out["x_hat"]).all()
        h, w = model.latent_grid(tuple(x.shape[-2:]))
        assert out["likelihoods"]["y"].shape == (2, cfg.M, h, w)
        assert out["likelihoods"]["z"].shape == (2, cfg.N, h // 2, w // 2)
        for lik in out["likelihoods"].values():
            assert ((lik > 0) & (lik <= 1)).all()
    _loss(out, model).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing[:8]}"


@pytest.mark.parametrize("name", ["tica-cifar", "hyperprior-cifar"])
def test_step_one_forward_skips_entropy_model(name):
    model = tica.create_model(name).train()
    out = model(_inputs(name), entropy=False)
    assert out["likelihoods"] is None
    _loss(out, model).backward()
    assert model.h_s[0].weight.grad is None           # hyperprior unused in step 1
    assert model.g_a[0].weight.grad.abs().sum() > 0


def test_fam_switch_feeds_decoder_from_latent():
    with_fam = tica.create_model("tica-cifar")
    without = tica.create_model("tica-cifar", fam=False)
    assert with_fam.fam is not None and without.fam is None
    assert with_fam.g_s[0].in_channels == with_fam.config.embed_dim
    assert without.g_s[0].in_channels == without.config.M
    out = without.train()(_inputs("tica-cifar"))
    assert out["x_hat"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("size", [(32, 32), (40, 24), (17, 33), (1, 1)])
def test_any_input_size_is_padded_and_cropped(size):
    model = tica.create_model("tica-cifar").eval()
    x = torch.rand(1, 3, *size)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["logits"].shape == (1, 10)


def test_pixel_vit_any_size():
    model = tica.create_model("vit-pixel-cifar").eval()
    assert model(torch.rand(1, 3, 30, 50))["logits"].shape == (1, 10)


def test_create_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tica.create_model("tica-cifar")
    after = torch.rand(1)
    b = tica.create_model("tica-cifar")
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_model_and_override_are_config_errors():
    with pytest.raises(tica.ConfigError, match="unknown model"):
        tica.create_model("tica-xl")
    with pytest.raises(tica.ConfigError, match="unknown config field"):
        tica.create_model("tica-cifar", widht=3)
    with pytest.raises(tica.ConfigError, match="fam_blocks"):
        tica.create_model("tica-cifar", depth=2)
    with pytest.raises(tica.ConfigError, match="scale_levels"):    # a table each: bounded
        get_config("tica-cifar", scale_levels=10**9)


def test_paper_preset_matches_spec():
    cfg = get_config("tica-s")
    assert (cfg.img_size, cfg.stages, cfg.N, cfg.M) == (224, 4, 128, 192)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.fam_blocks) == (384, 12, 6, (1, 2, 3))
    model = tica.create_model("tica-s")
    assert model.latent_grid((224, 224)) == (14, 14)


@pytest.mark.parametrize("overrides", [
    {"res_blocks": 1}, {"res_blocks": 2, "act": "gdn"}, {"act": "gelu"}, {"stages": 3, "res_blocks": 1},
    {"rate_levels": 3}, {"rate_levels": 2, "res_blocks": 1}, {"distill_token": True}])
def test_design_options_train_every_parameter(overrides):
    """The options of the design sweep (docs/design.md) and variable rate: shapes hold and
    every parameter gets a gradient (the gains through per-image qualities)."""
    model = tica.create_model("tica-cifar", embed_dim=64, depth=3, num_heads=2, N=32, M=32,
                              drop_path=0.0, **overrides).train()
    x = _inputs("tica-cifar")
    quality = torch.tensor([1.0, 2.0]) if overrides.get("rate_levels") else None
    out = model(x, quality=quality)
    assert out["x_hat"].shape == x.shape and out["logits"].shape == (2, 10)
    if overrides.get("res_blocks"):
        assert sum(type(m).__name__ == "ResidualBlock" for m in model.g_a.modules()) == \
            overrides["res_blocks"] * (model.config.stages - 1)
    _loss(out, model).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing[:8]}"


def test_hyper_proxy_ste_feeds_h_s_the_rounded_z_it_decodes_from():
    """hyper_proxy="ste": in training h_s sees round(z) (what decoding gives it) with an
    identity gradient into h_a; "noise" (the default, which leaves model ids as they were)
    sees z + noise. The rate of z uses the noise proxy either way."""
    seen = {}
    for proxy in ("noise", "ste"):
        model = tica.create_model("tica-cifar", embed_dim=64, depth=3, num_heads=2, N=32, M=32,
                                  hyper_proxy=proxy).train()
        model.h_s.register_forward_hook(lambda m, args, out, p=proxy: seen.__setitem__(p, args[0]))
        out = model(_inputs("tica-cifar"))
        _loss(out, model).backward()
        assert next(model.h_a.parameters()).grad.abs().sum() > 0
    assert torch.equal(seen["ste"], seen["ste"].round())
    assert not torch.equal(seen["noise"], seen["noise"].round())
    base = get_config("tica-cifar")
    assert base.hyper_proxy == "noise" and "hyper_proxy" not in base.identity_json()
    assert "hyper_proxy" in base.replace(hyper_proxy="ste").identity_json()
    with pytest.raises(tica.ConfigError):
        base.replace(hyper_proxy="round")


def test_a_distillation_token_adds_a_head_whose_mean_with_the_class_head_is_the_prediction():
    model = tica.create_model("vit-pixel-cifar", distill_token=True, drop_path=0.0).eval()
    x = _inputs("vit-pixel-cifar")
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(model.classify_pixels(x), (out["logits"] + out["logits_dist"]) / 2)
        assert not torch.allclose(out["logits"], out["logits_dist"])     # two heads of their own
        big = torch.rand(1, 3, 256, 320)                  # 64x80 tokens: attention in windows
        assert model.classify_pixels(big).shape == (1, 10)
    with pytest.raises(tica.ConfigError, match="distill_token"):
        tica.create_model("hyperprior-cifar", distill_token=True)


def test_a_distillation_token_added_to_trained_weights_starts_as_the_class_token():
    from tica.train.state import transplant
    source = tica.load("tica-cifar")
    model = transplant(source, {"distill_token": True}, seed=0).eval()
    vit, old = model.vit, source.vit
    assert torch.equal(vit.dist_token, old.cls_token)
    assert torch.equal(vit.head_dist.weight, old.head.weight)
    assert torch.equal(vit.pos_embed[:, 1], old.pos_embed[:, 0])
    assert torch.equal(vit.pos_embed[:, 2:], old.pos_embed[:, 1:])
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = source.latent(x, 4.0)
        moved = (model.classify_latent(y) - source.classify_latent(y)).abs().max()
    assert 0 < moved < 0.2
