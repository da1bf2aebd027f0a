"""Refitting a codec's hyperprior on its frozen latents (tica_tools.refit)."""

from __future__ import annotations

import pytest
import torch

import tica
from tica.data import synthetic_split
from tica.losses import rda_loss
from tica.train.state import transplant
from tica_tools.refit import hyper_parameters, latents, rate_bits, refit

SMALL = {"N": 32, "M": 48, "rate_levels": 4, "hs_weight_bits": 7, "hs_act_frac_bits": 5,
         "hs_act_bits": 7}


@pytest.mark.parametrize("latent_proxy", ["ste", "noise"])
def test_the_hyperprior_learns_from_the_rate_alone(latent_proxy):
    """The premise of the refit: the distortion and the classifier give h_a, h_s and z's
    density no gradient (they read y + noise, or y rounded straight-through about the means),
    while the rate gives all of them one."""
    torch.manual_seed(0)
    model = tica.create_model("tica-cifar", latent_proxy=latent_proxy, **SMALL).train()
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model(x, entropy=True, quality=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    without_rate = {k: v for k, v in out.items() if k != "likelihoods"}
    rda_loss(without_rate, x, labels, 1.0, 0.01)["loss"].backward()
    hyper, _ = hyper_parameters(model)
    assert all(p.grad is None or not p.grad.any() for p in hyper)
    assert model.g_a[0].weight.grad.abs().sum() > 0          # the rest did learn from it
    model.zero_grad()
    y = torch.randn(4, 48, 8, 8) * 3
    rate_bits(model, y, torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in hyper)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("g_a."))


def test_refit_lowers_the_real_rate_and_streams_stay_exact():
    """A few seconds of refitting a fresh hyperprior lowers the bytes of real streams at every
    rate point, and they still decode to the encoder's latent exactly."""
    torch.manual_seed(0)
    model = tica.create_model("tica-cifar", **SMALL).eval()
    images = synthetic_split(n=16).images
    y = latents(model, images)
    assert y.shape == (32, 48, 8, 8) and y.dtype == torch.float16
    with torch.no_grad():
        mirrored = model.g_a(images[:1].flip(-1).float() / 255)
    assert torch.allclose(y[16:17].float(), mirrored, atol=2e-3)   # the mirrors follow
    model.update()
    x = images[:8].float() / 255

    def sizes() -> list[int]:
        return [sum(map(len, model.compress(x, quality=q))) for q in (1, 4)]

    before = sizes()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("g_a.", "vit."))}
    stats = refit(model, y, seconds=600, batch=16, warmup=5, max_steps=40)
    after = sizes()
    assert stats["steps"] == 40 and stats["latents_seen"] == 640
    assert all(a < b for a, b in zip(after, before)) and sum(after) < 0.7 * sum(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    assert torch.equal(model.decompress(model.compress(x, quality=2), (32, 32), quality=2),
                       model.latent(x, quality=2))


def test_a_reshaped_h_s_keeps_every_tensor_whose_shape_is_kept():
    model = tica.create_model("tica-cifar", **SMALL)
    old = model.state_dict()

    def changed(shape: dict) -> set[str]:
        new = transplant(model, shape, seed=0).state_dict()
        return {k for k in new if new[k].shape != old[k].shape or not torch.equal(new[k], old[k])}
    narrow = transplant(model, {"hs_mid": 24, "hs_kernel": 1}, seed=0)
    assert (narrow.config.hs_mid, narrow.config.hs_kernel) == (24, 1)
    assert narrow.state_dict()["h_s.4.weight"].shape == (96, 24, 1, 1)
    assert changed({"hs_mid": 24, "hs_kernel": 1}) == {"h_s.2.weight", "h_s.2.bias",
                                                       "h_s.4.weight"}   # h_s.4.bias: (2M,)
    assert changed({"hs_first_kernel": 3}) == {"h_s.0.weight"}         # its bias: (M,)
    assert changed({"hs_mid_kernel": 3}) == {"h_s.2.weight"}           # its bias: (mid,)


def test_the_command_writes_a_reshaped_codec_and_its_lease(archive, tmp_path):
    """`python -m tica_tools.refit`: the latents are cached once (a second run reads them),
    the refit codec has the asked h_s, and its JSON is a lease for the manifest's history
    (scripts/ship_weights.py --lease)."""
    import json
    from tica.checkpoint import save_checkpoint
    from tica.registry import load_checkpoint
    from tica_tools.refit import main
    weights = tmp_path / "codec.safetensors"
    model = tica.create_model("tica-cifar", **SMALL).eval()
    model.update()
    from tica.io import WeightsInfo
    save_checkpoint(model, weights, WeightsInfo(step=2, alpha=0.3, beta=1e-4, model="tica-cifar"))
    out = tmp_path / "refit.safetensors"
    args = [str(weights), str(archive), "--out", str(out), "--minutes", "0.02", "--batch", "4",
            "--hs-mid", "24", "--hs-kernel", "1", "--hs-first-kernel", "3", "--hs-mid-kernel", "3"]
    assert main(args) == 0
    cached = list((tmp_path / "cache").glob("latents-*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    refit_model = load_checkpoint(out)
    c = refit_model.config
    assert (c.hs_width, c.hs_kernel, c.hs_first_kernel, c.hs_mid_kernel) == (24, 1, 3, 3)
    assert refit_model.is_updated
    known = load_checkpoint(weights).weights_info.to_metadata()      # the source's metadata
    assert refit_model.weights_info.to_metadata() == known and known["step"] == 2
    lease = json.loads(out.with_suffix(".json").read_text())
    assert lease["plan"] == "tools/tica_tools/refit.py" and lease["init"] == "file"
    assert lease["init_file"] == str(weights)              # which weights it started from
    assert lease["steps"] >= 1 and lease["latents_seen"] == 4 * lease["steps"]
    assert lease["images_seen"] == 0
    assert "hs_mid 24, hs_kernel 1, hs_first_kernel 3, hs_mid_kernel 3" in lease["steps_note"]
    by_steps = [a for a in args if a not in ("--minutes", "0.02")] + ["--steps", "3"]
    assert main(by_steps) == 0 and cached[0].stat().st_mtime_ns == stamp   # read, not remade
    lease = json.loads(out.with_suffix(".json").read_text())
    assert lease["steps"] == 3 and lease["latents_seen"] == 12          # a count of steps
    with pytest.raises(SystemExit):                                    # neither: refused
        main([a for a in args if a not in ("--minutes", "0.02")])
    assert main(by_steps + ["--flat", "5"]) == 0                       # + 5 flat images
    lease = json.loads(out.with_suffix(".json").read_text())
    assert "and of 5 flat images of random colours" in lease["steps_note"]


def test_flat_images_are_flat_and_differ():
    from tica_tools.refit import flat_images
    images = flat_images(6, (8, 12), seed=1)
    assert images.shape == (6, 3, 8, 12) and images.dtype == torch.uint8
    assert torch.equal(images, images[:, :, :1, :1].expand_as(images))   # one colour each
    assert len({tuple(c) for c in images[:, :, 0, 0].tolist()}) == 6
    assert torch.equal(images, flat_images(6, (8, 12), seed=1))         # seeded


def test_the_proxy_table_ranks_a_refit_with_the_same_draws(monkeypatch):
    """benchmarks/hyper_refit.py --proxy: the same latents and noise give the same numbers
    for the same weights, a refit that lowered the rate reads lower at every quality, and the
    models are left in the mode they were in."""
    from conftest import REPO, load_module
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))      # its sibling compare_codecs
    bench = load_module(REPO / "benchmarks" / "hyper_refit.py")
    torch.manual_seed(0)
    model = tica.create_model("tica-cifar", **SMALL).eval()
    y = model.g_a(torch.rand(8, 3, 32, 32)).detach()
    refitted = tica.create_model("tica-cifar", **SMALL)
    refitted.load_state_dict(model.state_dict())
    refit(refitted, torch.cat([y, y.flip(-1)]).half(), seconds=60, batch=8, warmup=5,
          max_steps=40)
    refitted.eval()
    table = bench.proxy_bpp({"a": model, "again": model, "refit": refitted}, y)
    assert len(table["a"]) == 4 and table["a"] == table["again"]
    assert all(r < a for r, a in zip(table["refit"], table["a"]))
    assert not model.training and not refitted.training
