"""Variable rate from one model (gain units): any quality in range, recorded in the stream,
decoded bit-exactly without flags; a target bpp found over real streams; training draws a
rate point per image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tica
from tica import bitstream
from tica.api import qualities_for_bpp, stream_qualities
from tica.config import TrainConfig
from tica.errors import BitstreamError, ConfigError
from tica.config import quality_code, quality_from_code
from tica.train import Objective, train

TINY = {"N": 16, "M": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "drop_path": 0.0}


@pytest.fixture(scope="module", params=[False, True], ids=["gain-on-y", "entropy-gain"])
def model(request):
    m = tica.create_model("tica-cifar", seed=1, rate_levels=4, entropy_gain=request.param,
                          **TINY).eval()
    with torch.no_grad():           # an untrained latent is tiny: give it a trained one's range
        m.g_a[-1].weight.mul_(40)
    m.update()
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 3, 8, 8, generator=g)
    # smooth 32x32 images (upsampled noise), a little like photographs
    return torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear").clamp(0, 1)


def test_gains_are_the_standard_vectors_at_integers_and_geometric_between():
    model = tica.create_model("tica-cifar", seed=1, rate_levels=4, **TINY)
    with torch.no_grad():
        model.log_gain.copy_(torch.randn_like(model.log_gain))
        g, ig = model.gains(torch.tensor([1.0, 3.0, 2.5]))
        assert torch.allclose(g[0, :, 0, 0], model.log_gain[0].exp())
        assert torch.allclose(g[1, :, 0, 0], model.log_gain[2].exp())
        assert torch.allclose(ig[1, :, 0, 0], model.log_inv_gain[2].exp())
        mid = (model.log_gain[1].exp() * model.log_gain[2].exp()).sqrt()
        assert torch.allclose(g[2, :, 0, 0], mid, rtol=1e-5)


def test_any_quality_round_trips_exactly_and_the_stream_says_which(model, images):
    sizes = {}
    for q in (1, 1.5, 2.6, 4):
        data = tica.compress(model, images, quality=q)
        stream = bitstream.unpack(data)
        coded = quality_from_code(quality_code(q))
        assert stream_qualities(stream) == [coded] * 3
        (part, _, y_hat), = tica.decompress(model, data)           # no quality passed
        assert torch.equal(y_hat, model.latent(images, coded))
        assert tica.classify_logits(model, data).shape == (3, 10)
        sizes[q] = len(data)
    assert sizes[1] < sizes[2.6] < sizes[4]              # higher quality, more bytes
    assert tica.inspect(data)["qualities"] == [4.0] * 3


def test_each_image_of_a_batch_stream_keeps_its_own_quality(model, images):
    data = tica.compress(model, images, quality=[1, 4, 2.5])
    assert stream_qualities(bitstream.unpack(data)) == [1.0, 4.0, 2.5]
    decoded = torch.empty(3, *model.latent(images[:1], 1).shape[1:])
    for part, _, y_hat in tica.decompress(model, data):
        decoded[part] = y_hat
    for i, q in enumerate((1, 4, 2.5)):
        assert torch.equal(decoded[i], model.latent(images[i:i + 1], q)[0])


def test_with_entropy_gain_the_tables_follow_the_quality_without_z():
    """entropy_gain: h_s predicts the un-gained latent's scale and mean and both are
    multiplied by the gain, so a z that says nothing still gives a low quality small scales
    (cheap zeros) and a high one large scales; the gain coding uses is exact to 1/256."""
    model = tica.create_model("tica-cifar", seed=1, rate_levels=4, entropy_gain=True, **TINY)
    with torch.no_grad():
        model.log_gain.copy_(torch.linspace(-2.0, 1.0, 4)[:, None].expand_as(model.log_gain))
    model.eval().update()
    gain = model.entropy_gain(2.5, 2)
    assert gain.dtype == torch.float64 and gain.shape == (2, 16, 1, 1)
    assert torch.equal(gain * 256, torch.round(gain * 256))
    assert gain[0, 0].item() == pytest.approx(math.exp(-0.5), abs=1 / 512)
    z = torch.zeros(1, 16, 2, 2, dtype=torch.float64)
    low, _ = model._hyper_decode(z, 1.0)
    high, _ = model._hyper_decode(z, 4.0)
    scales = model.integer_h_s(z).chunk(2, dim=1)[0]
    conditional = model.gaussian_conditional
    assert (low == conditional.indexes(scales * model.entropy_gain(1.0, 1)).numpy()).all()
    assert (high == conditional.indexes(scales * model.entropy_gain(4.0, 1)).numpy()).all()
    assert (low <= high).all() and low.sum() < high.sum()
    plain = tica.create_model("tica-cifar", seed=1, rate_levels=4, **TINY).eval()
    plain.update()
    assert plain.entropy_gain(2.5, 1) is None
    assert (plain._hyper_decode(z, 1.0)[0] == plain._hyper_decode(z, 4.0)[0]).all()


def test_qualities_out_of_range_or_for_a_fixed_rate_model_are_refused(model, images):
    with pytest.raises(ConfigError, match="outside"):
        tica.compress(model, images, quality=4.5)
    with pytest.raises(ConfigError, match="outside"):
        tica.compress(model, images, quality=0.5)
    fixed = tica.create_model("tica-cifar", seed=1, **TINY).eval()
    fixed.update()
    with pytest.raises(ConfigError, match="fixed-rate"):
        tica.compress(fixed, images, quality=2)
    assert bitstream.unpack(tica.compress(fixed, images)).quality_codes is None


def test_a_stream_whose_quality_does_not_fit_its_model_is_a_bitstream_error(model, images):
    stream = bitstream.unpack(tica.compress(model, images[:1], quality=2))
    for codes in (None, [quality_code(4) + 1]):        # missing, or beyond the range
        forged = bitstream.pack(stream.model_id, list(stream.sizes), list(stream.payloads), codes)
        with pytest.raises(BitstreamError, match="quality"):
            tica.reconstruct(model, forged)
    for cut in range(1, 8):                             # truncations never get past parsing
        with pytest.raises(BitstreamError):
            tica.reconstruct(model, tica.compress(model, images[:1], quality=2)[:-cut])


def test_target_bpp_finds_the_highest_quality_under_it(model, images):
    data_hi = tica.compress(model, images[:1], quality=4)
    data_lo = tica.compress(model, images[:1], quality=1)
    bpp = lambda d: 8 * len(d) / (32 * 32)
    target = (bpp(data_hi) + bpp(data_lo)) / 2
    (q,) = qualities_for_bpp(model, images[:1], target)
    assert 1 <= q < 4
    assert bpp(tica.compress(model, images[:1], quality=q)) <= target
    step_up = quality_from_code(quality_code(q) + 1)
    assert bpp(tica.compress(model, images[:1], quality=step_up)) > target
    assert qualities_for_bpp(model, images[:1], 1e6) == [4.0]        # anything fits: the top
    assert qualities_for_bpp(model, images[:1], 1e-3) == [1.0]       # nothing fits: the bottom


def test_rate_points_are_geometric_between_the_lowest_and_highest():
    cfg = TrainConfig(alpha=0.5, alpha_max=50, beta=1e-4, beta_max=1e-2)
    points = cfg.rate_points(3)
    assert points[0] == (0.5, 1e-4) and points[2] == pytest.approx((50, 1e-2))
    assert points[1] == pytest.approx((5.0, 1e-3))
    assert TrainConfig(alpha=0, beta=0.01, beta_max=0.1).rate_points(2)[1][0] == 0.0


def test_training_draws_a_rate_point_per_image_and_weighs_it(monkeypatch):
    model = tica.create_model("tica-cifar", seed=2, rate_levels=3, **TINY).train()
    cfg = TrainConfig(step=2, alpha=1.0, alpha_max=100.0, beta=1e-3, beta_max=1e-1)
    objective = Objective(model, cfg)
    seen = {}

    def forward(x, entropy=True, quality=None):
        seen["quality"] = quality
        return {"logits": torch.zeros(len(x), 10), "x_hat": x + 1 / 255}

    monkeypatch.setattr(model, "forward", forward)
    torch.manual_seed(0)
    x, labels = torch.rand(64, 3, 32, 32), torch.zeros(64, dtype=torch.long)
    terms = objective(x, labels)
    q = seen["quality"]
    assert q.shape == (64,) and set(q.tolist()) == {1, 2, 3}        # every point drawn
    alphas = torch.tensor([1.0, 10.0, 100.0])[q - 1]
    betas = torch.tensor([1e-3, 1e-2, 1e-1])[q - 1]
    expected = (alphas * math.log(10)).mean() + (betas * 1.0).mean()   # CE of uniform logits,
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-4)   # MSE of one level


def test_the_rate_point_weights_move_to_the_training_device():
    # on a GPU the objective's per-point (alpha, beta) tables must sit where the drawn levels
    # are (they once stayed on the CPU, and every step-2 run failed at its first step there);
    # the meta device stands in for the GPU here
    from tica.train.objective import make_optimizer

    device = torch.device("meta")
    model = tica.create_model("tica-cifar", seed=2, rate_levels=3, **TINY).to(device)
    cfg = TrainConfig(step=2, alpha=1.0, alpha_max=100.0, beta=1e-3, beta_max=1e-1, ema=0)
    objective = make_optimizer(model, cfg, None, device, world=1)[0]
    assert objective.alphas.device == device and objective.betas.device == device


def test_a_variable_rate_run_exports_one_model_for_every_rate(tmp_path):
    cfg = TrainConfig(model="tica-cifar", step=2, data="synthetic", run_dir=str(tmp_path / "run"),
                      max_steps=3, batch_size=8, train_limit=16, eval_images=0, log_every=1,
                      progress=False, alpha=0.5, alpha_max=5, beta=1e-3, beta_max=1e-2,
                      model_overrides={**TINY, "rate_levels": 2})
    result = train(cfg)
    shipped = tica.load(weights=result.weights)
    assert shipped.quality_range == (1.0, 2.0) and shipped.weights_info.quality is None
    assert shipped.weights_info.rate_points == [[0.5, 1e-3], [5.0, pytest.approx(1e-2)]]
    assert shipped.weights_info.classifier_trained      # alpha 0.5 and 5.0: the head was trained
    records = [json.loads(l) for l in Path(cfg.run_dir, "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    # the objective lies between its lowest and highest rate point's weighting; the
    # auxiliary loss (thousands at the start) is logged apart, not summed into it
    for r in logged:
        low = 0.5 * r["ce"] + 1e-3 * r["mse"] + r["bpp"]
        high = 5 * r["ce"] + 1e-2 * r["mse"] + r["bpp"]
        assert low - 1e-3 <= r["loss"] <= high + 1e-3 and r["aux"] > 0
    assert tica.reconstruct(shipped, tica.compress(shipped, torch.rand(3, 32, 32), 1.5))[0].shape == (3, 32, 32)
