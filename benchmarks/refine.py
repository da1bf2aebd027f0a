"""Encoder-side refinement (tica.models.refine) against plain encoding, from real streams:
tica-photo on Kodak (bpp, PSNR, BD-rate against the plain curve and against JPEG's from
docs/results/kodak.json), a flat 512x512 grey image at q1, and tica-cifar on CIFAR-10's test
split (bpp, PSNR, top-1, the share of images whose class the refinement changed).

    python benchmarks/refine.py                        # --steps 20, Kodak q1,3,5,8, 500 CIFAR
    python benchmarks/refine.py --steps 10 --kodak-qualities 1,2,3,4,5,6,7,8
    python benchmarks/refine.py --sections trial       # the design trial (docs/design.md)

Every row is the evaluator's (tica.evaluate: single-image streams, decoded by the ordinary
decoder). Each (model id, quality, steps) row is saved to runs/refine/rows.json as it
completes, so a stopped run continues where it was; a section not run is read back from
docs/benchmarks/refine.json, and the page names the model and machine of each section
(docs/benchmarks/refine.md; docs/design.md, "Encoder-side refinement")."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import tica
from tica.cli import data_root
from tica.data import load_split
from tica.evaluate import LearnedPipeline, eval_data, evaluate, split_batches
from tica.image import read_image
from tica.io import atomic_write_text
from tica.losses import psnr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from tica_tools import rd  # noqa: E402
from tica_tools.timing import cpu_name, write_benchmark  # noqa: E402

SECTIONS = ("grey", "cifar", "kodak", "trial")


def score(model, batches, quality: float, steps: int) -> dict:
    """One row: real single-image streams of `batches` at `quality`, refined by `steps` (0:
    plain), scored by the evaluator; with labels, each image's class ("classes")."""
    result = evaluate(LearnedPipeline(model, quality=quality, refine=steps), batches)
    row = {"quality": quality, "steps": steps, "images": result.images, "bpp": result.bpp,
           "psnr": result.psnr, "psnr_per_image": result.psnr_per_image,
           "seconds": result.seconds}
    if result.top1 is not None:
        row["top1"], row["classes"] = result.top1, result.per_image.predicted
    return row


def curve(rows: list[dict], key: str = "psnr") -> tuple[list[float], list[float]]:
    """(bpp, PSNR) by rate; Kodak's PSNR is the mean of its images' (`psnr_per_image`), as
    docs/RESULTS.md and the codec literature measure it."""
    rows = sorted(rows, key=lambda r: r["bpp"])
    return [r["bpp"] for r in rows], [r[key] for r in rows]


def model_key(model) -> str:
    """The model's stream id (4 hex digits): rows are cached and labelled by it."""
    return f"{model.model_id:04x}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", type=Path, default=Path(data_root()))
    parser.add_argument("--kodak-qualities", default="1,3,5,8")
    parser.add_argument("--cifar-qualities", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--cifar-images", type=int, default=500)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="sections to run; the others are read back from the results file")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "refine" / "rows.json")
    parser.add_argument("--name", default="refine")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cached = json.loads(args.cache.read_text()) if args.cache.is_file() else {}

    used: list[dict] = []           # the rows of the section running, measured or cached

    def row(key: str, make) -> dict:
        if key not in cached:
            cached[key] = {**make(), "machine": cpu_name(), "threads": torch.get_num_threads()}
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.cache, json.dumps(cached))
            r = cached[key]
            print(f"{key}: {r['bpp']:.4f} bpp, {r['psnr']:.2f} dB"
                  + (f", top-1 {r['top1']:.3f}" if "top1" in r else "")
                  + f" ({r['seconds']:.0f} s)", flush=True)
        used.append(cached[key])
        return cached[key]

    docs = REPO / "docs" / "benchmarks"
    results = docs / f"{args.name}.json"
    out: dict = json.loads(results.read_text()) if results.is_file() else {}
    if out.get("steps", args.steps) != args.steps:
        out = {}                          # another step count's sections are not comparable
    out["steps"] = args.steps
    photo = tica.load("tica-photo")
    for section in args.sections.split(","):
        model = tica.load("tica-cifar") if section == "cifar" else photo
        run = {"grey": grey_section, "cifar": cifar_section, "kodak": kodak_section,
               "trial": lambda a, m, r: trial(m, a.data, r)}[section]
        used.clear()
        out[section] = run(args, model, row)
        out.setdefault("measured", {})[section] = {
            "model": f"{model.config.name} {model_key(model)}",       # the rows' keys name it
            **{k: " / ".join(sorted({str(r[k]) for r in used})) for k in ("machine", "threads")}}
    write_benchmark(docs, args.name, page(out), out)
    return 0


def grey_section(args, photo, row) -> dict:
    """A flat 512x512 grey image at q1, plain and refined."""
    grey = torch.full((1, 3, 512, 512), 0.5)
    return {s: row(f"grey|{model_key(photo)}|{s}", lambda s=s: score(photo, [(grey, None)], 1.0, s))
            for s in (0, args.steps)}


def cifar_section(args, model, row) -> dict:
    """tica-cifar on the first `--cifar-images` of the test split: both curves, the BD-rate,
    the paired verdict and the share of images whose class the refinement changed."""
    split = load_split(args.data / "cifar10-jpeg.tar.gz", "test", limit=args.cifar_images)
    key = f"cifar|{model_key(model)}"
    rows = {s: [row(f"{key}|{q}|{s}|{len(split)}",
                    lambda q=q, s=s: score(model, split_batches(split, 100), q, s))
                for q in map(float, args.cifar_qualities.split(","))]
            for s in (0, args.steps)}
    plain, refined = rows[0], rows[args.steps]
    changed = [sum(a != b for a, b in zip(p["classes"], r["classes"])) / len(p["classes"])
               for p, r in zip(plain, refined)]
    verdict = rd.curve_verdict(plain, refined, top1_resolution=100 / len(split))
    plain, refined = ([{k: v for k, v in r.items() if k != "classes"} for r in rows]
                      for rows in (plain, refined))      # each image's class stays in the cache
    return {"plain": plain, "refined": refined, "class_changed": changed,
            "bd_rate_vs_plain": rd.bd_rate(curve(plain), curve(refined)), "verdict": verdict}


def kodak_section(args, photo, row) -> dict:
    """tica-photo on the 24 Kodak images at full size: both curves, the BD-rate against plain
    and both against JPEG's curve from docs/results/kodak.json."""
    data = eval_data(args.data / "kodak")
    rows = {s: [row(f"kodak|{model_key(photo)}|{q}|{s}",
                    lambda q=q, s=s: score(photo, data.batches(), q, s))
                for q in map(float, args.kodak_qualities.split(","))]
            for s in (0, args.steps)}
    results = json.loads((REPO / "docs" / "results" / "kodak.json").read_text())
    jpeg = [r for r in results if r["pipeline"] == "JPEG"]
    plain, refined, jpeg = (curve(r, "psnr_per_image")
                            for r in (rows[0], rows[args.steps], jpeg))
    return {"plain": rows[0], "refined": rows[args.steps],
            "bd_rate_vs_plain": rd.bd_rate(plain, refined),
            "bd_rate_vs_jpeg": {"plain": rd.bd_rate(jpeg, plain),
                                "refined": rd.bd_rate(jpeg, refined)}}


TRIAL = ((0.01, 20), (0.005, 20), (0.01, 40))      # (Adam's rate, steps)


def trial(photo, data: Path, row) -> list[dict]:
    """The design trial: 256x256 crops of four Kodak images at q2 and q6; per variant, the
    change of J = bpp + beta * MSE on real streams against plain encoding (each image's,
    averaged), of the bits and of PSNR."""
    from tica.models import refine as refine_module

    files = sorted((data / "kodak").glob("kodim*.png"))
    x = torch.stack([read_image(files[i])[:, 128:384, 256:512] for i in (2, 7, 14, 22)])

    def measure(q: float, lr: float, steps: int) -> dict:
        _, beta = refine_module.rate_point(photo, q)
        default, refine_module.LEARNING_RATE = refine_module.LEARNING_RATE, lr
        start = time.perf_counter()
        try:
            data = tica.compress(photo, x, quality=q, refine=steps, budget=None)
        finally:
            refine_module.LEARNING_RATE = default
        x_hat = torch.stack(tica.reconstruct(photo, data, budget=None))
        bpp = [8 * len(p) / (256 * 256) for p in tica.api.parse(photo, data).payloads]
        mse = (x_hat * 255 - x * 255).square().flatten(1).mean(1).tolist()
        return {"bpp": sum(bpp) / len(bpp), "psnr": float(psnr(torch.tensor(mse)).mean()),
                "J": [b + beta * m for b, m in zip(bpp, mse)],
                "seconds": time.perf_counter() - start}

    rows = []
    for q in (2.0, 6.0):
        key = f"trial|{model_key(photo)}|{q}"
        base = row(f"{key}|plain", lambda q=q: measure(q, refine_module.LEARNING_RATE, 0))
        for lr, steps in TRIAL:
            r = row(f"{key}|{lr}|{steps}", lambda q=q, lr=lr, s=steps: measure(q, lr, s))
            rows.append({"quality": q, "lr": lr, "steps": steps,
                         "J": 100 * sum(a / b - 1 for a, b in zip(r["J"], base["J"])) / 4,
                         "bpp": 100 * (r["bpp"] / base["bpp"] - 1),
                         "psnr": r["psnr"] - base["psnr"]})
    return rows


def page(out: dict) -> str:
    lines = [f"# Encoder-side refinement: {out['steps']} steps against plain encoding",
             "", f"`python benchmarks/refine.py --steps {out['steps']}`. Real single-image "
             "streams, scored by the evaluator (tica.evaluate) and decoded by the ordinary "
             "decoder.", ""]

    def measured(section: str) -> str:
        m = out["measured"][section]
        threads = f"{m['threads']} thread" + ("s" if str(m["threads"]) != "1" else "")
        return f"Measured with {m['model']} on {m['machine']}, {threads}."
    if "kodak" in out:
        k = out["kodak"]
        lines += ["## tica-photo on Kodak (24 images)", "", measured("kodak") + " PSNR: the mean "
                  "of the images' PSNRs, as docs/RESULTS.md measures Kodak.", "",
                  "| quality | plain bpp / PSNR | refined bpp / PSNR "
                  "| s/image, refined (encode + decode) |",
                  "|---:|---|---|---:|"]
        for p, r in zip(k["plain"], k["refined"]):
            lines.append(f"| {p['quality']:g} | {p['bpp']:.4f} / {p['psnr_per_image']:.2f} | "
                         f"{r['bpp']:.4f} / {r['psnr_per_image']:.2f} | "
                         f"{r['seconds'] / r['images']:.1f} |")
        lines += ["", f"BD-rate of refined against plain: {k['bd_rate_vs_plain']:+.1f}%. "
                  f"Against JPEG (docs/results/kodak.json): plain "
                  f"{k['bd_rate_vs_jpeg']['plain']:+.1f}%, refined "
                  f"{k['bd_rate_vs_jpeg']['refined']:+.1f}%.", ""]
    if "trial" in out:
        lines += ["## The design trial (256x256 crops of four Kodak images)", "", measured("trial"),
                  "",
                  "| quality | Adam rate | steps | J | bits | PSNR |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {t['quality']:g} | {t['lr']} | {t['steps']} | {t['J']:+.1f}% | "
                  f"{t['bpp']:+.1f}% | {t['psnr']:+.2f} dB |" for t in out["trial"]]
        lines.append("")
    if "grey" in out:
        g = out["grey"]
        lines += ["## A flat 512x512 grey image at q1 (tica-photo)", "", measured("grey"), "",
                  "| steps | bpp | PSNR |", "|---:|---:|---:|"]
        lines += [f"| {s} | {r['bpp']:.4f} | {r['psnr']:.2f} |" for s, r in g.items()]
        lines.append("")
    if "cifar" in out:
        c = out["cifar"]
        lines += [f"## tica-cifar on CIFAR-10's test split ({c['plain'][0]['images']} images)", "",
                  measured("cifar") + " PSNR: of the mean MSE.", "",
                  "| quality | plain bpp / PSNR / top-1 | refined bpp / PSNR / top-1 | "
                  "class changed |", "|---:|---|---|---:|"]
        for p, r, ch in zip(c["plain"], c["refined"], c["class_changed"]):
            lines.append(f"| {p['quality']:g} | {p['bpp']:.3f} / {p['psnr']:.2f} / "
                         f"{100 * p['top1']:.1f}% | {r['bpp']:.3f} / {r['psnr']:.2f} / "
                         f"{100 * r['top1']:.1f}% | {100 * ch:.1f}% |")
        lines += ["", f"BD-rate (PSNR) of refined against plain: {c['bd_rate_vs_plain']:+.1f}%; "
                  f"the curve verdict: {json.dumps(c['verdict'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
