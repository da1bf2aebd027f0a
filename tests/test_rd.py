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
