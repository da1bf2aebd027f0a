"""The results page of `benchmarks/run_all.py`: the claims stated from the measured numbers,
the plots and docs/RESULTS.md. They take result dicts only, so they can be tested without
running an evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

# Display names of the pipelines, in plotting order.
TICA, TICA_NOFAM = "tica", "tica, no FAM"
TICA_FIXED = "tica, fixed rate (same budget)"
HYPER_FIXED = "hyperprior, fixed rate (same budget)"
CLEAN = "ViT on clean pixels"
HYPER = "hyperprior -> decode -> ViT"
CODEC_LABELS = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF", "jxl": "JPEG XL"}


def curves(results: list[dict], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in results:
        if r.get(metric) is None or r["pipeline"] == CLEAN:
            continue
        rates, values = out.setdefault(r["pipeline"], ([], []))
        rates.append(r["bpp"])
        values.append(r[metric])
    return out


# ---- the claims, each with its numbers ----------------------------------------------------------

def _pct(v) -> str:
    return fmt(v, ".1f", 100) + "%"


def _images(budgets: dict, preset: str) -> str:
    seen = (budgets.get(preset) or {}).get("images_seen")
    return f"{seen:,} training images" if seen else "an unrecorded budget"


def _rate_accuracy_claim(tag: str, dataset: str, results: list[dict], margins: list[dict],
                         tica_preset: str, clean_preset: str, budgets: dict) -> str:
    """A claim that tica's accuracy beats every codec -> decode -> ViT pipeline at equal
    bpp, judged over the bpp range each pair shares, with the clean-pixel ceiling."""
    verdicts: dict[str, list[dict]] = {}
    for m in margins:
        verdicts.setdefault(m["baseline"], []).append(m)
    held, failed, apart = [], [], []
    for label, rows in verdicts.items():
        defined = [m for m in rows if m["margin"] == m["margin"]]
        if not defined:
            apart.append(label)
        elif all(m["margin"] > 0 for m in defined):
            held.append(f"{label} (by {min(m['margin'] for m in defined) * 100:+.1f} to "
                        f"{max(m['margin'] for m in defined) * 100:+.1f} points)")
        else:
            worst = min(defined, key=lambda m: m["margin"])
            failed.append(f"{label} (at {worst['bpp']:.2f} bpp: tica {_pct(worst['tica_top1'])}, "
                          f"it {_pct(worst['baseline_top1'])})")
    ceiling = next((r["top1"] for r in results if r["pipeline"] == CLEAN), None)
    best = max((r for r in results if r["pipeline"] == TICA and r.get("top1") is not None),
               key=lambda r: r["top1"], default=None)
    points = [r["bpp"] for r in results if r["pipeline"] == TICA]
    verdict = "**holds**" if held and not failed else "**does not hold**" if failed else "**untested**"
    return (f"**{tag} {dataset}: at equal bpp, tica's accuracy beats every codec -> decode -> ViT "
            f"pipeline: {verdict}.** Compared over the bpp range each pair shares: at tica's rate "
            "points and at the baseline's Pareto points between them. "
            + (f"Above: {'; '.join(held)}. " if held else "")
            + (f"Below: {'; '.join(failed)}. " if failed else "")
            + (f"No shared bpp range with: {', '.join(apart)}. " if apart else "")
            + (f"The accuracy ceiling (the same-size ViT on clean pixels, {clean_preset}, "
               f"{_images(budgets, clean_preset)}) is {_pct(ceiling)}; tica ({tica_preset}, "
               f"{_images(budgets, tica_preset)}) reaches {_pct(best['top1'])} at its best point, "
               f"{best['bpp']:.2f} bpp. " if ceiling is not None and best else "")
            + (f"tica's {len(points)} rate points span {min(points):.2f}-{max(points):.2f} bpp. "
               if points else ""))


def state_claims(cifar: list[dict], kodak: list[dict], margins: list[dict], bds: list[dict],
                 compute: list[dict], meta: dict | None = None) -> str:
    meta = meta or {}
    budgets = meta.get("budgets") or {}
    out = [_rate_accuracy_claim("(a)", "CIFAR-10", cifar, margins, "tica-cifar", "vit-pixel-cifar",
                                budgets)
           + "Both classifiers are budget-bound: CPU runs of a few epochs, where a ViT of this "
           "size needs 100+ on CIFAR-10 (the device plan, `scripts/plans/gpu.json`, is the "
           "remedy)."]
    # (b) FAM
    fam = [b for b in bds if b["anchor"] == "tica-photo, no FAM"]
    parts = []
    if fam and fam[0]["bd_rate_percent"] == fam[0]["bd_rate_percent"]:
        v = fam[0]["bd_rate_percent"]
        parts.append(f"on Kodak, tica-photo with FAM needs {v:+.1f}% bits for the same PSNR as "
                     f"without (BD-rate over {fam[0]['psnr_range'][0]:.1f}-{fam[0]['psnr_range'][1]:.1f} dB)")
    with_fam = {r["quality"]: r for r in cifar if r["pipeline"] == TICA}
    for r in (r for r in cifar if r["pipeline"] == TICA_NOFAM):
        f = with_fam.get(r["quality"])
        if f:
            parts.append(f"on CIFAR-10 at q{r['quality']}'s recipe, FAM {f['bpp']:.2f} bpp / "
                         f"{f['psnr']:.2f} dB, no FAM {r['bpp']:.2f} bpp / {r['psnr']:.2f} dB "
                         f"(PSNR of the mean MSE over the test split)")
    fam_ok = fam and fam[0]["bd_rate_percent"] < 0
    out.append(f"**(b) FAM improves PSNR at equal bpp: "
               f"{'**holds**' if fam_ok else '**does not hold**' if fam else '**untested**'}.** "
               + ("; ".join(parts) + "." if parts else "No ablation weights were evaluated.")
               + " Not an equal-budget comparison: the no-FAM models are the earlier fixed-rate "
               "recipes (`scripts/train_baselines.sh nofam`, `scripts/train_photo.sh nofam`), "
               "while the shipped FAM models trained longer, on more images (tica-photo on "
               "Imagenette); the equal-budget ablation is a run of the device plan "
               "(`tica-cifar-nofam`).")
    # (c) compute
    rows, cheaper_everywhere = [], []
    ok = True
    for setting in dict.fromkeys(c["setting"] for c in compute):
        mine = [c for c in compute if c["setting"] == setting]
        base = next(c for c in mine if c["path"] == "classify from bitstream")
        for c in mine:
            if c is base:
                continue
            ratio = base["ms_per_image"] / c["ms_per_image"]
            ok &= ratio <= 0.5
            cheaper_everywhere.append(ratio < 1 and base["gmacs_per_image"] < c["gmacs_per_image"])
            rows.append(f"{setting}, against {c['path']}: {base['gmacs_per_image']:.3f} vs "
                        f"{c['gmacs_per_image']:.3f} GMACs, {ratio:.2f}x the time")
    cheaper = all(r_ok for r_ok in cheaper_everywhere)
    if not rows:
        out.append("**(c) Classify-from-bitstream costs less compute and time than "
                   "decode-then-classify: **untested**.** The compute section was not run.")
    else:
        out.append(f"**(c) Classify-from-bitstream costs less compute and time than decode-then-classify: "
                   f"{'**holds**' if cheaper else '**does not hold everywhere**'}; the target of at most "
                   f"half the latency {'is met everywhere' if ok else 'is not met everywhere'}.** "
                   + "; ".join(rows) + ". "
                   "At 32x32 the decoder is a small part of the work: entropy decoding and the exact "
                   "integer h_s are shared by both paths and the pixel ViT costs as much as tica's, so "
                   "the saving is bounded by g_s (+ FAM); at photo sizes g_s dominates and the ratio "
                   "falls.")
    photo = meta.get("imagenette") or []
    if photo:
        out.append(_rate_accuracy_claim("(d)", "Imagenette", photo, meta.get("imagenette_margins")
                                        or [], "tica-photo", "vit-pixel-photo", budgets)
                   + "The paper's use case: tica-photo classifies 224x224 photographs from their "
                   "streams, with no pixels decoded.")
    return "\n\n".join(out)


# ---- plots and page ---------------------------------------------------------------------------

def plot(results: list[dict], metric: str, path: Path, title: str, ylabel: str,
         extra: dict | None = None, ceiling: float | None = None, logx: bool = True) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, (r, v) in {**curves(results, metric), **(extra or {})}.items():
        order = sorted(range(len(r)), key=r.__getitem__)
        style = "-o" if label.startswith("tica") else "--."
        ax.plot([r[i] for i in order], [v[i] for i in order], style, label=label,
                linewidth=2.2 if label.startswith("tica") else 1.2)
    if ceiling is not None:
        ax.axhline(ceiling, color="gray", linestyle=":", label=CLEAN)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (whole file / stream)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    if value is None or value != value:
        return "–"
    return format(value * scale, spec)


def render(cifar: list[dict], kodak: list[dict], margins: list[dict], bds: list[dict],
           compute: list[dict], notes: list[str], meta: dict) -> str:
    L: list[str] = []
    L += ["# Results", "",
          f"Generated by `python benchmarks/run_all.py` on {meta['date']} in {meta['minutes']:.1f} min "
          f"({meta['measured']} rate points measured, {meta['cached']} reused from cache), on "
          f"{meta['machine']}, torch {torch.__version__}. Measuring every rate point shown took "
          f"{meta['evaluation_minutes']:.0f} min in all (the sum of their own timings, each taken "
          "when it was measured, some beside other jobs). Every bpp is measured from real files "
          "or bitstreams; accuracy is on the CIFAR-10 test split "
          f"({meta['cifar_images']:,} images) and on Imagenette's validation split. The CIFAR-10 images were stored as quality-75 "
          "JPEGs by their distributor: every codec here recompresses already-compressed "
          "pixels.", ""]
    L += ["## Claims", "", meta["claims"], ""]
    L += ["## CIFAR-10: rate and accuracy", "",
          "![rate-accuracy](results/cifar10_accuracy.png)", "",
          "| pipeline | setting | bpp (file) | bpp (payload) | top-1 | top-5 | PSNR | MS-SSIM |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in cifar:
        L.append(f"| {r['pipeline']} | {fmt(r['quality'], 'g')} | {fmt(r['bpp'], '.3f')} | "
                 f"{fmt(r['bpp_payload'], '.3f')} | {fmt(r['top1'], '.1f', 100)}% | "
                 f"{fmt(r['top5'], '.1f', 100)}% | {fmt(r['psnr'])} | {fmt(r['ms_ssim'], '.4f')} |")
    L += ["", "*bpp (file)* counts whole files (tica: the single-image stream with its container). "
          "*bpp (payload)* drops what a deployment can share out of band: tica's container; "
          "JPEG's tables, APPn and frame header (SOI + SOS + scan + EOI kept); WebP's RIFF and "
          "chunk headers and the VP8 start code and size; AVIF's boxes other than mdat; JPEG XL is "
          "its bare codestream (see `src/tica/codecs.py`). Setting: tica's rate point, a codec's "
          "quality (JPEG XL: Butteraugli distance). PSNR is that of the mean MSE over the split "
          "(re-encoding a quality-75 JPEG at quality 75 can return it exactly).", "",
          "![rate-PSNR](results/cifar10_psnr.png)", "",
          "### tica against each pipeline over the bpp range they share", "",
          "| baseline | bpp | at | tica top-1 | baseline top-1 | margin |",
          "|---|---:|---|---:|---:|---:|"]
    for m in margins:
        at = f"tica q{m['quality']}" if m["quality"] is not None else "a baseline point"
        L.append(f"| {m['baseline']} | {m['bpp']:.3f} | {at} | {fmt(m['tica_top1'], '.1f', 100)}% | "
                 f"{fmt(m['baseline_top1'], '.1f', 100)}% | {fmt(m['margin'], '+.1f', 100)} |")
    L += ["", "Checked at every tica rate point and at every point of a baseline's Pareto front "
          "inside tica's measured bpp range. Each curve is linear in log-bpp between its measured "
          "points; a baseline's best value is held above its last point; – where a curve does "
          "not reach that bpp.", ""]
    cost = meta.get("variable_rate_cost") or []
    if cost:
        L += ["### What variable rate costs", "",
              "| fixed-rate model | its bpp | its PSNR | variable-rate bpp at that PSNR | rate cost "
              "| its top-1 | variable-rate top-1 at its bpp |", "|---|---:|---:|---:|---:|---:|---:|"]
        for c in cost:
            L.append(f"| {c.get('model', TICA)} at q{fmt(c['quality'], 'g')}'s weights, trained alone | {c['fixed_bpp']:.3f} | "
                     f"{fmt(c['fixed_psnr'])} dB | {fmt(c['variable_bpp_at_psnr'], '.3f')} | "
                     f"{fmt(c['rate_cost_percent'], '+.1f')}% | {fmt(c['fixed_top1'], '.1f', 100)}% | "
                     f"{fmt(c['variable_top1_at_bpp'], '.1f', 100)}% |")
        L += ["", "The fixed-rate model has the variable-rate model's recipe, initialisation and "
              "steps, at one standard point's (alpha, beta); the variable-rate model spends the "
              "same steps on all eight points. Rate cost: the variable-rate curve's bpp at the "
              "fixed model's PSNR (linear in log-bpp between its points), relative to the fixed "
              "model's; positive means variable rate needs more bits.", ""]
    photo = meta.get("imagenette") or []
    if photo:
        L += ["## Imagenette: classifying photographs from their streams", "",
              "![rate-accuracy](results/imagenette_accuracy.png)", "",
              "| pipeline | setting | bpp (file) | top-1 | top-5 | PSNR |", "|---|---:|---:|---:|---:|---:|"]
        for r in photo:
            L.append(f"| {r['pipeline']} | {fmt(r['quality'], 'g')} | {fmt(r['bpp'], '.3f')} | "
                     f"{fmt(r['top1'], '.1f', 100)}% | {fmt(r['top5'], '.1f', 100)}% | {fmt(r['psnr'])} |")
        L += ["", f"The validation split, a class-balanced {meta.get('imagenette_images') or '?'}"
              "-image subset, 224x224. tica is tica-photo (classify from the stream, no pixels "
              "decoded); the ViT is vit-pixel-photo, tica-photo's ViT on 16x16 pixel patches.", "",
              "| baseline | bpp | at | tica top-1 | baseline top-1 | margin |",
              "|---|---:|---|---:|---:|---:|"]
        for m in meta.get("imagenette_margins") or []:
            at = f"tica q{m['quality']}" if m["quality"] is not None else "a baseline point"
            L.append(f"| {m['baseline']} | {m['bpp']:.3f} | {at} | {fmt(m['tica_top1'], '.1f', 100)}% | "
                     f"{fmt(m['baseline_top1'], '.1f', 100)}% | {fmt(m['margin'], '+.1f', 100)} |")
        L += [""]
    L += ["## Kodak: rate and distortion", "", "![Kodak RD](results/kodak_psnr.png)", "",
          "| codec | setting | bpp | PSNR | MS-SSIM | s |", "|---|---:|---:|---:|---:|---:|"]
    for r in kodak:
        L.append(f"| {r['pipeline']} | {fmt(r['quality'], 'g')} | {r['bpp']:.3f} | {fmt(r['psnr_per_image'])} | "
                 f"{fmt(r['ms_ssim'], '.4f')} | {r['seconds']:.0f} |")
    L += ["", "All 24 images at full resolution; bpp of whole files / streams; PSNR the mean over "
          "images (CompressAI's convention).", "",
          "| test | anchor | BD-rate | PSNR range compared |", "|---|---|---:|---|"]
    for b in bds:
        L.append(f"| {b['test']} | {b['anchor']} | {fmt(b['bd_rate_percent'], '+.1f')}% | "
                 f"{b['psnr_range'][0]:.2f}-{b['psnr_range'][1]:.2f} dB {b['note']} |")
    L += ["", "BD-rate: the `bjontegaard` package, pchip interpolation over the PSNR range both "
          "curves cover; negative means fewer bits for the same PSNR.", ""]
    L += ["## Compute: classify from the bitstream vs decode, then classify", "",
          "| setting | path | GMACs / image | ms / image | time vs classify-from-bitstream |",
          "|---|---|---:|---:|---:|"]
    base = {}
    for c in compute:
        if c["path"] == "classify from bitstream":
            base[c["setting"]] = c["ms_per_image"]
    for c in compute:
        L.append(f"| {c['setting']} | {c['path']} | {c['gmacs_per_image']:.3f} | "
                 f"{c['ms_per_image']:.2f} | {c['ms_per_image'] / base[c['setting']]:.2f}x |")
    L += ["", "MACs from `torch.utils.flop_counter` (FLOPs / 2; the exact integer h_s counted as "
          "convolutions, entropy decoding not counted); latency is the median of interleaved runs "
          "in one process, so both paths see the same machine load. Every path starts from real "
          "bytes and ends in class logits.", ""]
    if notes:
        L += ["## Reused or missing results", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(L)
