"""Training throughput on this machine: one process against two DDP processes (torchrun,
gloo), side by side in one run, on real CIFAR-10 batches.

    python benchmarks/train_throughput.py [--steps 30] [--step 1]

Writes docs/benchmarks/train_throughput.{md,json}. The step count excludes two warm-up
steps; images/s is read from each run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from tica.cli import data_root
from tica_tools.timing import write_benchmark

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(data_root()) / "cifar10-jpeg.tar.gz"


def _run(run_dir: Path, procs: int, threads: int, step: int, steps: int, bf16: bool) -> float:
    args = ["train", "--model", "tica-cifar", "--step", str(step), "--data", str(DATA),
            "--run-dir", str(run_dir), "--max-steps", str(steps + 2), "--epochs", "1",
            "--batch-size", "128", "--eval-images", "0", "--no-progress",
            "--checkpoint-every", "100000"]
    if not bf16:
        args.append("--no-bf16")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, "-m", "tica.cli", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "tica.cli", *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "img_s" in r and r["step"] > 2]
    return sum(r["img_s"] for r in timed) / len(timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step", type=int, default=1, choices=(1, 2))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, procs, threads, bf16 in (("1 process, 2 threads, fp32", 1, 2, False),
                                           ("1 process, 2 threads, bf16", 1, 2, True),
                                           ("2 processes (DDP), 1 thread each, bf16", 2, 1, True)):
            img_s = _run(Path(tmp) / name.replace(" ", "_").replace(",", ""), procs, threads,
                         args.step, args.steps, bf16)
            rows.append({"setting": name, "img_s": img_s})
            print(f"{name}: {img_s:.1f} images/s", flush=True)
    base = rows[0]["img_s"]
    lines = ["# Training throughput", "",
             f"`python benchmarks/train_throughput.py --steps {args.steps} --step {args.step}`: "
             f"tica-cifar step {args.step}, global batch 128, real CIFAR-10 batches, 2-core CPU.", "",
             "| setting | images/s | vs fp32 |", "|---|---:|---:|"]
    lines += [f"| {r['setting']} | {r['img_s']:.1f} | {r['img_s'] / base:.2f}x |" for r in rows]
    write_benchmark(ROOT / "docs" / "benchmarks", "train_throughput", "\n".join(lines) + "\n",
                    rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
