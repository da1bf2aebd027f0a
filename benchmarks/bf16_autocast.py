"""bf16 autocast against float32 for one training step, side by side in one run, on this
machine: whether autocasting pays here, and what `tica train` decides (it autocasts only
where `tica.train.distributed.native_bf16` says the hardware computes bf16 natively).

    python benchmarks/bf16_autocast.py [--steps 6] [--batch-size 64]

Forward, backward and an AdamW step of each preset on random images, the two settings
interleaved step by step so that both see the same machine load; the median of the timed
steps (the first of each is a warm-up). Writes docs/benchmarks/bf16_autocast.{md,json}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

import tica
from tica_tools.report.run import machine as report_machine
from tica.train.distributed import native_bf16
from tica_tools.timing import write_benchmark

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
PRESETS = ("vit-pixel-cifar", "tica-cifar")


def _step(model, optimizer, x, y, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = F.cross_entropy(out["logits"].float(), y)
    if out.get("x_hat") is not None:           # tica: CE + MSE (step 1's loss; the
        # forward runs the entropy models too, entropy=True)
        loss = loss + F.mse_loss(out["x_hat"].float(), x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(name: str, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = tica.create_model(name)         # untrained: the speed does not depend on weights
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    side = model.config.img_size
    x = torch.rand(batch, 3, side, side)
    y = torch.randint(0, model.config.num_classes, (batch,))
    times = {False: [], True: []}
    for i in range(steps + 1):
        for bf16 in (False, True):
            t = _step(model, optimizer, x, y, bf16)
            if i:
                times[bf16].append(t)
    fp32, bf16 = median(times[False]), median(times[True])
    return {"model": name, "batch": batch, "fp32_img_s": batch / fp32,
            "bf16_img_s": batch / bf16, "bf16_vs_fp32": fp32 / bf16}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    native = native_bf16(torch.device("cpu"))
    rows = [measure(name, args.steps, args.batch_size) for name in PRESETS]
    machine = (f"{report_machine()}, torch {torch.__version__}, CPU capability "
               f"{torch.backends.cpu.get_cpu_capability()}")
    lines = ["# bf16 autocast on this CPU", "",
             f"`python benchmarks/bf16_autocast.py --steps {args.steps} --batch-size "
             f"{args.batch_size}` on {machine}. One training step (forward, backward, AdamW), "
             "the two settings interleaved; median of the timed steps.", "",
             f"Native bf16 here (`native_bf16`): **{native}**, so `tica train` "
             f"{'autocasts' if native else 'trains in float32'} by default.", "",
             "| model | batch | fp32 images/s | bf16 autocast images/s | bf16 vs fp32 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['fp32_img_s']:.1f} | "
                     f"{r['bf16_img_s']:.1f} | {r['bf16_vs_fp32']:.2f}x |")
        print(lines[-1], flush=True)
    write_benchmark(OUT, "bf16_autocast", "\n".join(lines) + "\n",
                    {"machine": machine, "native_bf16": native, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
