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


TOP1_RESAMPLES = 2000       # the paired bootstrap's resamples: its 2.5% tail holds 50 of them


def _per_image(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A curve's per-image record (tica.evaluate.PerImage, one a row): bits and correct as
    (qualities, images) arrays, and the images' pixels."""
    records = [r["per_image"] for r in rows]
    pixels = np.asarray(records[0].pixels, float)
    if any(list(rec.pixels) != records[0].pixels or rec.correct is None
           or len(rec.bits) != len(pixels) for rec in records):
        raise TicaError("a paired comparison needs every rate point on the same labelled images")
    return (np.array([rec.bits for rec in records], float),
            np.array([rec.correct for rec in records], float), pixels)


def paired_top1_interval(anchor: Sequence[dict], test: Sequence[dict], level: float = 0.95,
                         resamples: int = TOP1_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The `level` interval of `test`'s top-1 difference from `anchor` at equal bpp (points,
    curve_verdict's measure), from a paired bootstrap: the images are resampled with
    replacement, the same draw for both curves (every image counts with its own bits and its
    own right or wrong answer at each rate point), and the measure recomputed on each draw;
    the interval is the draws' central `level` share. Both curves' rows carry `per_image`
    records of the same images in the same order (tica.evaluate.EvalResult.per_image). A
    fixed `seed`: the same evaluation always gets the same interval."""
    bits_a, right_a, pixels = _per_image(anchor)
    bits_t, right_t, pixels_t = _per_image(test)
    if not np.array_equal(pixels, pixels_t):
        raise TicaError("a paired comparison needs both curves on the same images")
    n = len(pixels)
    draws = _draws(n, resamples, seed)
    area = draws @ pixels
    bpp_a, bpp_t = (draws @ bits_a.T) / area[:, None], (draws @ bits_t.T) / area[:, None]
    top_a, top_t = (draws @ right_a.T) / n, (draws @ right_t.T) / n
    diffs = []
    for d in range(resamples):
        try:
            diffs.append(100 * bd_psnr((bpp_a[d], top_a[d]), (bpp_t[d], top_t[d])))
        except TicaError:                  # a draw whose curves share no rate range
            continue
    if len(diffs) < resamples // 2:
        raise TicaError("the curves share no rate range on most resamples: no interval")
    return _central(diffs, level)


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n): how often each of n images is drawn, with replacement, per resample."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)


def _central(values, level: float) -> tuple[float, float]:
    """The central `level` share of `values`."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_accuracy_interval(right_a: Sequence[bool], right_t: Sequence[bool],
                             level: float = 0.95, resamples: int = TOP1_RESAMPLES,
                             seed: int = 0) -> tuple[float, float]:
    """The `level` interval of the top-1 difference (points) of classifier t over classifier
    a answering the same images (each image right or wrong for each), from a paired
    bootstrap with a fixed `seed`: the clean-pixel baselines' gate."""
    a, t = np.asarray(right_a, float), np.asarray(right_t, float)
    if a.shape != t.shape or a.size == 0:
        raise TicaError("a paired comparison needs both classifiers' answers on the same images")
    return _central(100 * (_draws(a.size, resamples, seed) @ (t - a)) / a.size, level)


POINT_TOLERANCE_DB = 0.3    # a candidate's rate point may fall this far below the old curve


def curve_verdict(anchor: Sequence[dict], test: Sequence[dict], top1_resolution: float = 0.0
                  ) -> dict:
    """Whether codec `test`'s curve beats `anchor`'s, from evaluation rows (dicts with bpp,
    psnr and top1, None where the images have no labels; tica.evaluate's EvalResult): the
    BD-rate of PSNR (percent, negative: fewer bits at equal PSNR) and, with labels, the
    average top-1 difference at equal bpp over the shared bpp range (points, BD-PSNR's
    method on accuracy). Better means no worse on either and better on one; worse, worse on
    one.

    A top-1 difference counts only where the images can tell it from chance. Rows with
    `per_image` records (the same labelled images for both curves) get a paired test: the
    difference counts when its 95% paired-bootstrap interval (paired_top1_interval,
    `bd_top1_interval` in the result) leaves out zero. Rows without them fall back to a
    resolution: a difference smaller than `top1_resolution` points (one image of the
    split: 100 / its size) counts as none. And where the curves overlap, `test`'s curve may
    lie nowhere more than POINT_TOLERANCE_DB below `anchor`'s at a rate point of either
    (`worst_point_db`): a curve better on average that gives up one end is worse."""
    def curve(rows, key):
        return [r["bpp"] for r in rows], [r[key] for r in rows]

    out = {"bd_rate_psnr": bd_rate(curve(anchor, "psnr"), curve(test, "psnr")),
           "bd_top1_points": None}
    labelled = all(r.get("top1") is not None for r in list(anchor) + list(test))
    if labelled:
        out["bd_top1_points"] = 100 * bd_psnr(curve(anchor, "top1"), curve(test, "top1"))
    top1 = out["bd_top1_points"]
    paired = labelled and all(r.get("per_image") is not None for r in list(anchor) + list(test))
    if paired:
        low, high = paired_top1_interval(anchor, test)
        out["bd_top1_interval"] = [round(low, 4), round(high, 4)]
        out["top1_test"] = (f"paired bootstrap over {len(anchor[0]['per_image'].pixels)} "
                            f"images, {TOP1_RESAMPLES} resamples, 95%")
        if low <= 0 <= high:
            top1 = 0.0
    elif labelled and abs(top1) < top1_resolution:
        top1 = 0.0
    # an average hides a rate point given up for the others: where the curves overlap, each
    # point of either is held to the other curve at its bpp, within POINT_TOLERANCE_DB
    old_curve, new_curve = curve(anchor, "psnr"), curve(test, "psnr")

    def inside(b, c):
        return min(c[0]) <= b <= max(c[0])
    gaps = ([p - value_at(old_curve, b) for b, p in zip(*new_curve) if inside(b, old_curve)]
            + [value_at(new_curve, b) - p for b, p in zip(*old_curve) if inside(b, new_curve)])
    out["worst_point_db"] = round(min(gaps), 3) if gaps else None
    point_worse = bool(gaps) and min(gaps) < -POINT_TOLERANCE_DB
    gains = [-out["bd_rate_psnr"]] + ([top1] if labelled else [])
    out["better"] = all(g >= 0 for g in gains) and any(g > 0 for g in gains) and not point_worse
    out["worse"] = any(g < 0 for g in gains) or point_worse
    for key in ("bd_rate_psnr", "bd_top1_points"):     # decided on: kept as the interval is
        if out[key] is not None:
            out[key] = round(out[key], 4)
    return out


def curve_rows(model, data) -> list[dict]:
    """bpp, PSNR and top-1 (None without labels) of codec `model` on `data`
    (tica.evaluate.EvalData) at each of its standard qualities, real streams, with each
    image's record (`per_image`: the paired test's input): what curve_verdict compares."""
    from tica.evaluate import evaluate_curve
    return [{"quality": r.quality, "bpp": r.bpp, "psnr": r.psnr, "top1": r.top1,
             "per_image": r.per_image} for r in evaluate_curve(model, data)]


def top1_gap_text(verdict: dict) -> str:
    """A verdict's top-1 difference at equal bpp as printed: points, its paired 95%
    interval where it has one (and "chance" where that holds zero); "-" without labels."""
    if verdict["bd_top1_points"] is None:
        return "-"
    text = f"{verdict['bd_top1_points']:+.3f} points"
    if "bd_top1_interval" not in verdict:
        return text
    low, high = verdict["bd_top1_interval"]
    return text + f" [{low:+.2f}, {high:+.2f}]" + (" (chance)" if low <= 0 <= high else "")


def curves_table(curves: dict[str, Sequence[dict]]) -> list[str]:
    """Codecs' curves (curve_rows, the same qualities) side by side as Markdown lines: a row
    a quality, bpp / PSNR / top-1 a column per codec (the keys name them)."""
    names = list(curves)
    lines = ["| q | " + " | ".join(f"{name} bpp / PSNR / top-1" for name in names) + " |",
             "|---:|" + "---|" * len(names)]
    for rows in zip(*curves.values()):
        cells = [f"{r['bpp']:.4f} / {r['psnr']:.2f} / "
                 + (f"{100 * r['top1']:.2f}%" if r["top1"] is not None else "-") for r in rows]
        lines.append(f"| {rows[0]['quality']:g} | " + " | ".join(cells) + " |")
    return lines
