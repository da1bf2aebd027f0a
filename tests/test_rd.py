"""Curve comparisons: BD-rate, values at a rate, Pareto fronts."""

from __future__ import annotations

import math

import pytest

from tica.errors import TicaError
from tica_tools.rd import COMPRESSAI_HYPERPRIOR_KODAK, bd_rate, monotone_upper, shared_range, value_at

ANCHOR = ([0.2, 0.4, 0.8, 1.6], [28.0, 31.0, 34.0, 37.0])


def test_bd_rate_of_a_curve_that_needs_fewer_bits():
    assert bd_rate(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-9)
    cheaper = ([r * 0.7 for r in ANCHOR[0]], ANCHOR[1])
    assert bd_rate(ANCHOR, cheaper) == pytest.approx(-30.0, abs=1e-6)
    assert bd_rate(cheaper, ANCHOR) == pytest.approx(100 / 0.7 - 100, abs=1e-6)


def test_bd_rate_on_the_published_curve_and_no_overlap():
    published = tuple(map(list, zip(*COMPRESSAI_HYPERPRIOR_KODAK)))
    better = ([r * 0.9 for r in published[0]], published[1])
    assert bd_rate(published, better) == pytest.approx(-10.0, abs=1e-6)
    with pytest.raises(TicaError, match="no quality range"):
        bd_rate(ANCHOR, ([0.1, 0.2, 0.3, 0.4], [10.0, 11.0, 12.0, 13.0]))


def test_values_between_and_beyond_points():
    curve = ([1.0, 4.0], [0.5, 0.7])
    assert value_at(curve, 2.0) == pytest.approx(0.6)            # halfway in log-rate
    assert math.isnan(value_at(curve, 0.5)) and math.isnan(value_at(curve, 5.0))
    assert value_at(curve, 5.0, hold_above=True) == pytest.approx(0.7)
    assert monotone_upper(([3.0, 1.0, 2.0, 4.0], [0.6, 0.5, 0.4, 0.55])) == ([1.0, 3.0], [0.5, 0.6])
    assert shared_range(curve, ([2.0, 8.0], [0, 1])) == (2.0, 4.0)
    assert shared_range(curve, ([5.0, 8.0], [0, 1])) is None


def _rows(psnr_shift=0.0, top1_shift=0.0, labelled=True):
    bpp = [0.3, 0.6, 1.0, 1.7, 2.8, 4.0]
    return [{"bpp": b, "psnr": 18 + 4 * math.log2(b / 0.3) + psnr_shift,
             "top1": (0.55 + 0.06 * math.log2(b / 0.3) + top1_shift) if labelled else None}
            for b in bpp]


def test_curve_verdict_wants_no_loss_on_either_curve_and_a_gain_on_one():
    from tica_tools.rd import curve_verdict
    better = curve_verdict(_rows(), _rows(psnr_shift=0.3, top1_shift=0.01))
    assert better["better"] and better["bd_rate_psnr"] < 0
    assert better["bd_top1_points"] == pytest.approx(1.0, abs=1e-6)
    assert curve_verdict(_rows(), _rows(top1_shift=0.005))["better"]          # same PSNR
    same = curve_verdict(_rows(), _rows())                                    # no gain
    assert not same["better"] and not same["worse"]
    for mixed in (curve_verdict(_rows(), _rows(psnr_shift=0.5, top1_shift=-0.002)),
                  curve_verdict(_rows(), _rows(psnr_shift=-0.2, top1_shift=0.02))):
        assert not mixed["better"] and mixed["worse"]
    unlabelled = curve_verdict(_rows(labelled=False), _rows(psnr_shift=0.2, labelled=False))
    assert unlabelled["better"] and unlabelled["bd_top1_points"] is None
    assert curve_verdict(_rows(labelled=False), _rows(psnr_shift=-0.1, labelled=False))["worse"]
    # a top-1 difference under one image of the split is not measurable: neither way
    tiny = curve_verdict(_rows(), _rows(psnr_shift=0.2, top1_shift=-0.00004))
    assert tiny["worse"] and not tiny["better"]
    measured = curve_verdict(_rows(), _rows(psnr_shift=0.2, top1_shift=-0.00004),
                             top1_resolution=0.01)
    assert measured["better"] and not measured["worse"]
    assert measured["bd_top1_points"] == pytest.approx(-0.004, abs=1e-6)
    assert curve_verdict(_rows(), _rows(psnr_shift=0.2, top1_shift=-0.0002),
                         top1_resolution=0.01)["worse"]


def _paired_rows(right, bpp_scale=1.0, psnr_shift=0.0):
    """Evaluation rows of 1,000 images at six rates with per-image records: `right` a
    (qualities, images) array of 0/1 answers; every image costs the same bits at a rate."""
    from tica.evaluate import PerImage
    n = right.shape[1]
    rows = []
    for q, b in enumerate([0.3, 0.6, 1.0, 1.7, 2.8, 4.0]):
        bits = [round(b * bpp_scale * 1024)] * n
        rows.append({"bpp": sum(bits) / (1024 * n), "psnr": 18 + 4 * math.log2(b / 0.3) + psnr_shift,
                     "top1": float(right[q].mean()),
                     "per_image": PerImage(bits, [1024] * n, [bool(v) for v in right[q]])})
    return rows


def _answers(seed=1, n=1000):
    import numpy as np
    rng = np.random.default_rng(seed)
    p = np.array([0.55, 0.62, 0.68, 0.73, 0.77, 0.80])
    return (rng.random((6, n)) < p[:, None]).astype(int)


def _flip(right, lost, won=0):
    """The same answers with `lost` right images turned wrong and `won` wrong ones right at
    every rate (two codecs of similar accuracy disagree both ways on some images)."""
    out = right.copy()
    for q in range(len(out)):
        out[q, right[q].nonzero()[0][:lost]] = 0
        out[q, (1 - right[q]).nonzero()[0][:won]] = 1
    return out


def test_a_paired_test_tells_a_few_images_from_a_real_loss_of_accuracy():
    """With per-image records the gate asks whether a top-1 difference at equal bpp is more
    than chance on these images (paired bootstrap), rather than more than one image."""
    from tica_tools.rd import curve_verdict, paired_top1_interval
    right = _answers()
    anchor = _paired_rows(right)
    same = paired_top1_interval(anchor, _paired_rows(right))
    assert same == (0.0, 0.0)                             # the same answers: no doubt at all
    # 30 images lost and 27 won at every rate (-0.3 points): within chance, so a codec
    # with fewer bits at equal PSNR passes; the one-image rule would have kept it out
    few = curve_verdict(anchor, _paired_rows(_flip(right, 30, 27), psnr_shift=0.2))
    assert few["bd_top1_points"] == pytest.approx(-0.3, abs=1e-6)
    low, high = few["bd_top1_interval"]
    assert low < -0.3 < high and 0 <= high and few["better"] and not few["worse"]
    assert "paired bootstrap over 1000 images" in few["top1_test"]
    # the same -0.3 points lost without a single image won at any rate is no chance
    assert curve_verdict(anchor, _paired_rows(_flip(right, 3), psnr_shift=0.2))["worse"]
    # 45 lost and 20 won at every rate (-2.5 points): kept out despite the PSNR gain
    many = curve_verdict(anchor, _paired_rows(_flip(right, 45, 20), psnr_shift=0.2))
    assert many["bd_top1_interval"][1] < 0 and many["worse"] and not many["better"]
    # and gains count the same way: better even at equal PSNR
    won = curve_verdict(_paired_rows(_flip(right, 45, 20)), anchor)
    assert won["bd_top1_interval"][0] > 0 and won["better"]
    # the interval is the same on every run (a fixed draw), and it is paired: answers of
    # the same accuracy drawn independently look far noisier than 57 disagreements a rate
    again = curve_verdict(anchor, _paired_rows(_flip(right, 30, 27), psnr_shift=0.2))
    assert again["bd_top1_interval"] == few["bd_top1_interval"]
    unpaired = paired_top1_interval(anchor, _paired_rows(_answers(seed=2)))
    assert unpaired[1] - unpaired[0] > 2 * (high - low)


def test_a_paired_test_refuses_curves_of_different_images():
    from tica.evaluate import PerImage
    from tica_tools.rd import paired_top1_interval
    right = _answers()
    other = _paired_rows(right[:, :999])
    with pytest.raises(TicaError, match="same images"):
        paired_top1_interval(_paired_rows(right), other)
    unlabelled = _paired_rows(right)
    unlabelled[2]["per_image"] = PerImage(unlabelled[2]["per_image"].bits,
                                          unlabelled[2]["per_image"].pixels, None)
    with pytest.raises(TicaError, match="same labelled images"):
        paired_top1_interval(unlabelled, _paired_rows(right))


def test_a_curve_better_on_average_that_gives_up_one_rate_point_is_worse():
    """The reviewer's case: 1.5 dB down at the lowest rate, 0.3 dB up elsewhere, BD-rate
    negative; the point test holds every candidate point to the old curve within
    POINT_TOLERANCE_DB, so it is worse; a dip inside the tolerance is not."""
    from tica_tools.rd import POINT_TOLERANCE_DB, curve_verdict
    dips = _rows(psnr_shift=0.3, labelled=False)
    dips[0]["psnr"] -= 1.8
    verdict = curve_verdict(_rows(labelled=False), dips)
    assert verdict["bd_rate_psnr"] < 0
    assert verdict["worst_point_db"] == pytest.approx(-1.5, abs=1e-6)
    assert verdict["worse"] and not verdict["better"]
    slight = _rows(psnr_shift=0.3, labelled=False)
    slight[0]["psnr"] -= 0.3 + POINT_TOLERANCE_DB / 2
    assert curve_verdict(_rows(labelled=False), slight)["better"]
    # its lowest point moved below the old curve's first rate, where the old curve is held to
    # the new one: 1.6 dB below the old point at 0.3 bpp, the rest 0.3 dB above
    moved = _rows(psnr_shift=0.3, labelled=False)
    moved[0].update(bpp=0.2, psnr=13.0)
    verdict = curve_verdict(_rows(labelled=False), moved)
    assert verdict["worst_point_db"] < -POINT_TOLERANCE_DB and verdict["worse"]
