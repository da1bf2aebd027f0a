"""Comparing rate-distortion and rate-accuracy curves.

BD-rate comes from the maintained `bjontegaard` package (Herglotz et al., the JVET/VCEG
method family), with piecewise cubic Hermite (pchip) interpolation over the distortion range
both curves share; the rest are small helpers for "at equal bpp" comparisons."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from tica.errors import TicaError

# CompressAI's published Kodak curve of bmshj2018-hyperprior (MSE, qualities 1-8): bpp, PSNR.
COMPRESSAI_HYPERPRIOR_KODAK = (
    (0.131, 27.58), (0.209, 29.20), (0.320, 30.97), (0.478, 32.84),
    (0.669, 34.53), (0.939, 36.74), (1.259, 38.58), (1.660, 40.56),
)


def _curve(rates: Sequence[float], dists: Sequence[float], least: int = 2
           ) -> tuple[np.ndarray, np.ndarray]:
    r, d = np.asarray(rates, float), np.asarray(dists, float)
    if r.shape != d.shape or r.ndim != 1 or len(r) < least:
        raise TicaError(f"a curve needs at least {least} (rate, value) points of equal count")
    order = np.argsort(r)
    return r[order], d[order]


def bd_rate(anchor: tuple[Sequence[float], Sequence[float]],
            test: tuple[Sequence[float], Sequence[float]]) -> float:
    """Average rate difference in percent of `test` against `anchor` at equal quality
    (negative: `test` needs fewer bits). Each is (rates, PSNRs), at least 4 points for pchip.
    Only the overlapping quality range counts; with no overlap it raises TicaError."""
    import bjontegaard

    ra, da = _curve(*anchor)
    rt, dt = _curve(*test)
    if min(da.max(), dt.max()) <= max(da.min(), dt.min()):
        raise TicaError("the curves share no quality range: BD-rate is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # small overlaps warn; the range is reported
        return float(bjontegaard.bd_rate(ra, da, rt, dt, method="pchip",
                                         require_matching_points=False, min_overlap=0.0))


def bd_psnr(anchor: tuple[Sequence[float], Sequence[float]],
            test: tuple[Sequence[float], Sequence[float]]) -> float:
    """Average PSNR difference in dB of `test` against `anchor` at equal rate (positive:
    `test` is better), pchip in log-rate over the rate range both curves cover: the gap that
    stays defined where the curves share rates but no quality range. TicaError with no
    shared rate range."""
    import bjontegaard

    ra, da = _curve(*anchor)
    rt, dt = _curve(*test)
    if shared_range((ra, da), (rt, dt)) is None:
        raise TicaError("the curves share no rate range: BD-PSNR is undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(ra, da, rt, dt, method="pchip",
                                         require_matching_points=False, min_overlap=0.0))


def shared_range(*curves: tuple[Sequence[float], Sequence[float]]) -> tuple[float, float] | None:
    """The rate interval every curve covers, or None."""
    low = max(min(c[0]) for c in curves)
    high = min(max(c[0]) for c in curves)
    return (low, high) if low < high else None


def value_at(curve: tuple[Sequence[float], Sequence[float]], rate: float,
             hold_above: bool = False) -> float:
    """A curve's value at `rate`, linear in log-rate between its points; NaN below its first
    point, and above its last one too unless `hold_above` (a codec that reaches a value at
    some rate reaches it at any higher rate: use on a Pareto front)."""
    r, v = _curve(*curve, least=1)
    if rate < r[0] or (rate > r[-1] and not hold_above):
        return float("nan")
    if rate >= r[-1]:
        return float(v[-1])
    return float(np.interp(np.log(rate), np.log(r), v))


def monotone_upper(curve: tuple[Sequence[float], Sequence[float]]
                   ) -> tuple[list[float], list[float]]:
    """The points of a curve that no cheaper point beats (its Pareto front): a codec's
    quality knob is not always monotone at tiny image sizes."""
    r, v = _curve(*curve, least=1)
    keep_r, keep_v, best = [], [], -np.inf
    for rate, value in zip(r, v):
        if value > best:
            keep_r.append(float(rate))
            keep_v.append(float(value))
            best = value
    return keep_r, keep_v


def rate_at(curve: tuple[Sequence[float], Sequence[float]], value: float) -> float:
    """The rate at which a monotone rate-quality curve reaches `value` (log-rate linear
    between its points); NaN outside its range."""
    r, v = _curve(*curve, least=2)
    order = np.argsort(v)
    r, v = r[order], v[order]
    if not v[0] <= value <= v[-1]:
        return float("nan")
    return float(np.exp(np.interp(value, v, np.log(r))))


def curve_verdict(anchor: Sequence[dict], test: Sequence[dict], top1_resolution: float = 0.0
                  ) -> dict:
    """Whether codec `test`'s curve beats `anchor`'s, from evaluation rows (dicts with bpp,
    psnr and top1, None where the images have no labels; tica.evaluate's EvalResult): the
    BD-rate of PSNR (percent, negative: fewer bits at equal PSNR) and, with labels, the
    average top-1 difference at equal bpp over the shared bpp range (points, BD-PSNR's
    method on accuracy). Better means no worse on either and better on one; worse, worse on
    one. A top-1 difference smaller than `top1_resolution` points (one image of the split:
    100 / its size) is below what the split can measure and counts as none."""
    def curve(rows, key):
        return [r["bpp"] for r in rows], [r[key] for r in rows]

    out = {"bd_rate_psnr": bd_rate(curve(anchor, "psnr"), curve(test, "psnr")),
           "bd_top1_points": None}
    labelled = all(r.get("top1") is not None for r in list(anchor) + list(test))
    if labelled:
        out["bd_top1_points"] = 100 * bd_psnr(curve(anchor, "top1"), curve(test, "top1"))
    top1 = out["bd_top1_points"]
    if labelled and abs(top1) < top1_resolution:
        top1 = 0.0
    gains = [-out["bd_rate_psnr"]] + ([top1] if labelled else [])
    out["better"] = all(g >= 0 for g in gains) and any(g > 0 for g in gains)
    out["worse"] = any(g < 0 for g in gains)
    return out
