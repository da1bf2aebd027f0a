"""Which tica-cifar design learns the most per CPU-minute? Short step-1 runs of equal CPU
time, one thread each, side by side in one sweep; writes docs/design.md's table.

    python benchmarks/design_sweep.py [--minutes 8] [--only NAME ...] [--parallel 1]

Each candidate is a set of ModelConfig / TrainConfig overrides of tica-cifar. A probe of a
few steps measures its CPU seconds per step (process CPU time, so runs that share the cores
are charged only what they use); the trial then gets the steps that fill the budget, on a
cosine schedule sized to them, and is scored on 2,000 held-out CIFAR-10 test images: top-1
and PSNR of the step-1 network (no quantization: the paper's step 1, which sets what step 2
can reach). Results are cached in docs/results/design_sweep.json by candidate and budget;
the table is written into docs/design.md between its sweep markers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from tica.cli import data_root
from tica.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "design_sweep.json"
PAGE = REPO / "docs" / "design.md"
MARKERS = ("<!-- sweep table: benchmarks/design_sweep.py -->", "<!-- end of sweep table -->")
DATA = str(Path(data_root()) / "cifar10-jpeg.tar.gz")
RUNS = Path(os.environ.get("TICA_CACHE", Path.home() / ".cache" / "tica")) / "sweep"
TRAIN_IMAGES = 45000

BASE = {"step": 1, "alpha": 1.0, "beta": 1e-3, "batch_size": 128, "lr": 1e-3,
        "weight_decay": 0.05, "optimizer": "adamw"}
# name: (model overrides, train overrides, what it tests)
CANDIDATES: dict[str, tuple[dict, dict, str]] = {
    "baseline": ({}, {}, "shipped design: two 5x5 convs each side, LeakyReLU, 8x8 tokens, ViT 192/6"),
    "res1": ({"res_blocks": 1}, {}, "one residual 3x3 block after the inner resampling layer"),
    "res1-gdn": ({"res_blocks": 1, "act": "gdn"}, {}, "res1 with GDN / IGDN at the resampling layers"),
    "res1-grid4": ({"res_blocks": 1, "stages": 3}, {}, "res1 with a 4x4 token grid (3 stages)"),
    "res1-vit128x4": ({"res_blocks": 1, "embed_dim": 128, "depth": 4, "num_heads": 2},
                      {}, "res1 with a narrower, shallower ViT (D 128, depth 4)"),
    "res1-lr2e-3": ({"res_blocks": 1}, {"lr": 2e-3}, "res1 at twice the learning rate"),
    "res1-gdn-vit128x4": ({"res_blocks": 1, "act": "gdn", "embed_dim": 128, "depth": 4,
                           "num_heads": 2}, {}, "the two best changes together: GDN and the "
                          "narrower, shallower ViT"),
}


def _train_cmd(name: str, model: dict, train: dict, steps: int, run_dir: Path) -> list[str]:
    cfg = {**BASE, **train}
    epochs = steps * cfg["batch_size"] / TRAIN_IMAGES
    cmd = [sys.executable, "-m", "tica.cli", "train", "--model", "tica-cifar", "--data", DATA,
           "--run-dir", str(run_dir), "--epochs", f"{epochs:.6f}", "--max-steps", str(steps),
           "--warmup-steps", str(max(5, steps // 20)), "--eval-images", "0", "--no-progress",
           "--checkpoint-every", "100000"]
    for key, value in cfg.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    for key, value in model.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def _env() -> dict:
    """One thread; $SWEEP_PYTHONPATH (a frozen copy of src/) if set, so that edits to the
    working tree during a long sweep cannot change a running trial."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if os.environ.get("SWEEP_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["SWEEP_PYTHONPATH"]
    return env


def _run(cmd: list[str]) -> float:
    """Run a command on one thread; its CPU seconds (user + system)."""
    env = _env()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _score(weights: Path) -> dict:
    """Top-1 and PSNR of a step-1 network on 2,000 held-out test images (one thread)."""
    code = ("import json,sys,torch; torch.set_num_threads(1); import tica;"
            "from tica.data import load_split; from tica.config import TrainConfig;"
            "from tica.train import evaluate_estimate;"
            f"m=tica.load(weights={str(weights)!r}); s=load_split({DATA!r}, 'test', limit=2000);"
            "print(json.dumps(evaluate_estimate(m, s, TrainConfig(step=1))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def trial(name: str, minutes: float) -> dict:
    model, train, what = CANDIDATES[name]
    probe_steps = 12
    probe = _run(_train_cmd(name, model, train, probe_steps, RUNS / f"{name}-probe"))
    per_step = probe / probe_steps
    steps = max(probe_steps, int(minutes * 60 / per_step))
    start = time.perf_counter()
    cpu = _run(_train_cmd(name, model, train, steps, RUNS / name))
    score = _score(RUNS / name / "model.safetensors")
    return {"name": name, "what": what, "model": model, "train": train, "budget_min": minutes,
            "cpu_min": cpu / 60, "wall_min": (time.perf_counter() - start) / 60, "steps": steps,
            "images": steps * {**BASE, **train}["batch_size"], "top1": score["acc"],
            "psnr": score["psnr_of_mean_mse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="CPU minutes per candidate")
    parser.add_argument("--only", nargs="*", help="candidates to run (default: all)")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else []
    for name in args.only or list(CANDIDATES):
        if any(r["name"] == name and r["budget_min"] == args.minutes for r in results):
            print(f"{name}: cached")
            continue
        r = trial(name, args.minutes)
        results = [x for x in results if not (x["name"] == name and x["budget_min"] == args.minutes)]
        results.append(r)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OUT, json.dumps(results, indent=1))
        print(f"{name}: {r['steps']} steps, {r['images']} images in {r['cpu_min']:.1f} CPU-min: "
              f"top-1 {100 * r['top1']:.1f}%, PSNR {r['psnr']:.2f} dB", flush=True)
    print(table(results, args.minutes))
    write_page(table(results, args.minutes))


def write_page(text: str) -> None:
    """Replace the table between docs/design.md's markers (the page's prose is kept)."""
    if not PAGE.exists():
        return
    page = PAGE.read_text()
    start, end = page.find(MARKERS[0]), page.find(MARKERS[1])
    if start < 0 or end < start:
        return
    atomic_write_text(PAGE, page[:start + len(MARKERS[0])] + "\n" + text + "\n" + page[end:])


def table(results: list[dict], minutes: float) -> str:
    rows = sorted((r for r in results if r["budget_min"] == minutes), key=lambda r: -r["top1"])
    lines = ["| design | what | steps | images | CPU-min | top-1 | PSNR (step 1) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['what']} | {r['steps']} | {r['images']:,} | "
                     f"{r['cpu_min']:.1f} | {100 * r['top1']:.1f}% | {r['psnr']:.2f} dB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
