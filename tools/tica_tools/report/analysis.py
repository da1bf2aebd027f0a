"""The comparisons the claims rest on: rate curves, accuracy margins at equal bpp, what
variable rate costs, BD-rates. They take result dicts only (one per rate point, as
`tica.evaluate.EvalResult.to_dict` writes them)."""

from __future__ import annotations

from tica_tools import rd
from tica.errors import TicaError
from .names import (CLEAN, PHOTO, PHOTO_NOFAM, PUBLISHED_HYPERPRIOR, TICA,
                    TICA_FIXED, TICA_NOFAM, TICA_VR_BUDGET)

Curve = tuple[list[float], list[float]]      # (bpp, value) in measurement order

# (test, anchor) pairs of the Kodak BD-rates
BD_PAIRS = [(PHOTO, "JPEG"), (PHOTO, "WebP"), (PHOTO, "AVIF"), (PHOTO, "JPEG XL"),
            (PHOTO, PUBLISHED_HYPERPRIOR), (PHOTO, PHOTO_NOFAM)]


def curves(results: list[dict], metric: str) -> dict[str, Curve]:
    """Each pipeline's (bpp, metric) points; the clean-pixel ceiling has no rate and no curve."""
    out: dict[str, Curve] = {}
    for r in results:
        if r.get(metric) is None or r["pipeline"] == CLEAN:
            continue
        rates, values = out.setdefault(r["pipeline"], ([], []))
        rates.append(r["bpp"])
        values.append(r[metric])
    return out


def published_curves() -> dict[str, Curve]:
    """CompressAI's published Kodak rate-PSNR points of the hyperprior codec."""
    return {PUBLISHED_HYPERPRIOR: tuple(map(list, zip(*rd.COMPRESSAI_HYPERPRIOR_KODAK)))}


def accuracy_margins(results: list[dict]) -> list[dict]:
    """tica's top-1 against every baseline's over the bpp range they share: at each tica rate
    point, and at each of the baseline's Pareto points that fall inside tica's measured range.
    The baseline's value comes from its Pareto front (linear in log-bpp, its best value held
    above its last point: a codec that reaches it at some rate reaches it at any higher one);
    tica's between its own points is linear in log-bpp. Margin NaN where the baseline's curve
    does not reach down to that bpp."""
    acc = curves(results, "top1")
    if TICA not in acc:
        return []
    tica_curve = acc[TICA]
    low, high = min(tica_curve[0]), max(tica_curve[0])
    quality_at = {r["bpp"]: r["quality"] for r in results if r["pipeline"] == TICA}
    rows = []
    for label, curve in acc.items():
        if label in (TICA, TICA_NOFAM, TICA_FIXED, TICA_VR_BUDGET):
            continue
        front = rd.monotone_upper(curve)
        rates = sorted(set(tica_curve[0]) | {b for b in front[0] if low < b < high})
        for bpp in rates:
            mine = rd.value_at(tica_curve, bpp)
            base = rd.value_at(front, bpp, hold_above=True)
            rows.append({"quality": quality_at.get(bpp), "bpp": bpp, "tica_top1": mine,
                         "baseline": label, "baseline_top1": base, "margin": mine - base})
    return rows


def variable_rate_cost(results: list[dict]) -> list[dict]:
    """What one variable-rate model costs against a fixed-rate model trained alone at one of
    its standard points with the same budget: the variable-rate model's bpp at the fixed
    model's PSNR (a BD-rate at one point) and its top-1 at the fixed model's bpp, where that
    pair was measured; tica's variable-rate side is the model at the fixed-rate model's
    budget where that was measured apart (scripts/plans/cpu-ablations.json)."""
    rows = []
    budget = TICA_VR_BUDGET if any(r["pipeline"] == TICA_VR_BUDGET for r in results) else TICA
    for model, variable, fixed_label in ((TICA, budget, TICA_FIXED),):
        vr = [r for r in results if r["pipeline"] == variable]
        if len(vr) < 2:
            continue
        psnr_curve = ([r["bpp"] for r in vr], [r["psnr"] for r in vr])
        acc_curve = ([r["bpp"] for r in vr], [r["top1"] for r in vr])
        for fixed in (r for r in results if r["pipeline"] == fixed_label):
            same_psnr = rd.rate_at(psnr_curve, fixed["psnr"])
            rows.append({"model": model, "quality": fixed["quality"], "fixed_bpp": fixed["bpp"],
                         "fixed_psnr": fixed["psnr"], "fixed_top1": fixed["top1"],
                         "variable_bpp_at_psnr": same_psnr,
                         "rate_cost_percent": 100 * (same_psnr / fixed["bpp"] - 1),
                         "variable_top1_at_bpp": rd.value_at(acc_curve, fixed["bpp"])})
    return rows


def bd_rates(results: list[dict]) -> list[dict]:
    """BD-rate of tica-photo against each Kodak anchor (the codecs, CompressAI's published
    hyperprior, tica-photo without FAM), over the PSNR range both curves cover, and BD-PSNR
    (dB at equal bpp) over the bpp range both cover; NaN with the reason where one cannot be
    computed."""
    psnr = {**curves(results, "psnr_per_image"), **published_curves()}
    rows = []
    for test, anchor in BD_PAIRS:
        if test not in psnr or anchor not in psnr:
            continue
        notes = []
        try:
            value = rd.bd_rate(psnr[anchor], psnr[test])
        except TicaError as exc:
            value = float("nan")
            notes.append(str(exc))
        try:
            gap = rd.bd_psnr(psnr[anchor], psnr[test])
        except TicaError as exc:
            gap = float("nan")
            notes.append(str(exc))
        lo = max(min(psnr[anchor][1]), min(psnr[test][1]))
        hi = min(max(psnr[anchor][1]), max(psnr[test][1]))
        rates = rd.shared_range(psnr[anchor], psnr[test])
        rows.append({"test": test, "anchor": anchor, "bd_rate_percent": value,
                     "psnr_range": [lo, hi], "bd_psnr_db": gap,
                     "bpp_range": list(rates) if rates else None, "note": "; ".join(notes)})
    return rows
