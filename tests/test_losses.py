"""The objective and the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tica.losses import WSD_DECAY, bits_per_pixel, psnr, rda_loss, schedule_lr


def test_rda_loss_combines_the_terms_with_their_weights():
    x = torch.full((2, 3, 4, 4), 0.5)
    out = {"logits": torch.tensor([[10.0, 0.0], [0.0, 10.0]]), "x_hat": x + 1 / 255,
           "likelihoods": {"y": torch.full((2, 1, 2, 2), 0.5), "z": torch.full((2, 1, 1, 1), 0.25)}}
    labels = torch.tensor([0, 1])
    terms = rda_loss(out, x, labels, alpha=2.0, beta=0.5, label_smoothing=0.0, rate_weight=0.25)
    assert terms["mse"].item() == pytest.approx(1.0, rel=1e-4)            # one level on 0-255
    assert terms["bpp"].item() == pytest.approx((2 * 4 * 1 + 2 * 1 * 2) / (2 * 16))
    assert terms["acc"].item() == 1.0
    expected = 2.0 * terms["ce"] + 0.5 * terms["mse"] + 0.25 * terms["bpp"]
    assert terms["loss"].item() == pytest.approx(expected.item())
    assert psnr(torch.tensor(1.0)).item() == pytest.approx(20 * math.log10(255))
    assert bits_per_pixel({"a": torch.full((1, 8), 0.5)}, 4).item() == 2.0


@pytest.mark.parametrize("z_weight", [0.0, 0.5])
def test_the_hyper_latent_rate_can_be_charged_apart(z_weight):
    """z_rate_weight scales only z's share of the rate in the loss; the reported bpp is the
    whole rate (y: 8 bits an image, z: 2 bits an image, on 16 pixels)."""
    x = torch.full((2, 3, 4, 4), 0.5)
    out = {"likelihoods": {"y": torch.full((2, 1, 2, 2), 0.25), "z": torch.full((2, 2, 1, 1), 0.5)}}
    terms = rda_loss(out, x, None, 0.0, 0.0, rate_weight=0.5, z_rate_weight=z_weight)
    assert terms["bpp"].item() == pytest.approx(10 / 16)
    assert terms["loss"].item() == pytest.approx(0.5 * (8 + z_weight * 2) / 16)


def test_models_without_a_term_leave_it_out():
    x = torch.rand(1, 3, 4, 4)
    terms = rda_loss({"logits": torch.zeros(1, 3)}, x, torch.tensor([1]), 1.0, 1.0)
    assert set(terms) == {"ce", "acc", "loss"}


def test_a_distillation_head_learns_the_teachers_labels_and_the_class_head_the_true_ones():
    import torch.nn.functional as F
    x = torch.rand(3, 3, 4, 4)
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 4.0]])
    dist = torch.tensor([[0.0, 5.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels, teacher = torch.tensor([0, 1, 0]), torch.tensor([1, 1, 2])
    out = {"logits": logits, "logits_dist": dist}
    terms = rda_loss(out, x, labels, 2.0, 0.0, label_smoothing=0.0, teacher_labels=teacher,
                     distill=0.25)
    ce = F.cross_entropy(logits, labels, reduction="none")
    taught = F.cross_entropy(dist, teacher, reduction="none")
    assert terms["loss"].item() == pytest.approx(2.0 * (0.75 * ce + 0.25 * taught).mean().item())
    assert terms["ce"].item() == pytest.approx(ce.mean().item())
    predicted = ((logits + dist) / 2).argmax(1)                  # [1, 1, 2]: the heads' mean
    assert terms["acc"].item() == pytest.approx((predicted == labels).float().mean().item())
    assert terms["agree"].item() == 1.0
    alone = rda_loss(out, x, labels, 1.0, 0.0, label_smoothing=0.0)   # no teacher: labels
    both = (ce + F.cross_entropy(dist, labels, reduction="none")) / 2
    assert alone["loss"].item() == pytest.approx(both.mean().item())


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [schedule_lr("cosine", s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert schedule_lr("cosine", 100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_the_wsd_schedule_holds_the_peak_then_anneals_over_its_last_fifth():
    lrs = [schedule_lr("wsd", s, 100, 5, 1.0, 0.01) for s in range(101)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)     # warm-up
    hold = int(5 + (100 - 5) * (1 - WSD_DECAY))
    assert all(lr == 1.0 for lr in lrs[5:hold + 1])                         # stable
    assert all(a > b for a, b in zip(lrs[hold + 1:], lrs[hold + 2:]))        # decays
    assert lrs[100] == pytest.approx(0.01)
    # the cosine schedule is already below its peak where wsd still holds it
    assert schedule_lr("cosine", 50, 100, 5, 1.0, 0.01) < 0.6 < lrs[50]


def test_a_schedule_run_to_a_deadline_still_warms_up_step_by_step():
    """A slow first (compiled) step puts a deadline's schedule 1,409 of 7,200 steps along at
    step 1: the warm-up counts the steps taken, not the schedule's, and then the schedule's
    position sets the rate (wsd: still at its peak; cosine: past it)."""
    assert schedule_lr("wsd", 1409, 7200, 100, 6e-4, 0.01, steps_taken=1) == pytest.approx(1.2e-5)
    assert schedule_lr("wsd", 1409, 7200, 100, 6e-4, 0.01, steps_taken=100) == pytest.approx(6e-4)
    at = schedule_lr("cosine", 3650, 7200, 100, 1.0, 0.01)
    assert at < 0.6
    assert schedule_lr("cosine", 3650, 7200, 100, 1.0, 0.01, steps_taken=100) == pytest.approx(at)
    # the ramp rises to the schedule's rate there, never above it
    ramp = [schedule_lr("cosine", 3650, 7200, 100, 1.0, 0.01, steps_taken=k) for k in range(101)]
    assert ramp[0] == pytest.approx(at / 100) and ramp[99] == pytest.approx(at)
    assert all(a <= b <= at + 1e-12 for a, b in zip(ramp, ramp[1:]))
