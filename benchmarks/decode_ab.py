"""Decoding speed of this checkout against another, side by side: one worker process per
checkout, each timing the same calls on the same stream in turn, round after round, so a
busy machine slows both alike. On one thread (torch and the coder) unless --threads says
otherwise, so the numbers are per core: the whole of decoding (`api.decompress`: container, entropy decoding, integer h_s),
the integer h_s with the table choice (`_hyper_decode`) and entropy decoding alone; and the
worst case a stream can ask of the entropy decoder ("rare values": 100,000 symbols of
tica-photo's widest table, each its entry farthest from where its quantile's lookup starts).

    python benchmarks/decode_ab.py --against OTHER_CHECKOUT [--images 256] [--photos 64]
                                   [--rounds 7] [--threads 1]

OTHER_CHECKOUT is a checkout with its kernels built (`git worktree add /tmp/old COMMIT;
python /tmp/old/scripts/build_kernel.py`). Prints a Markdown table: median seconds per call
of each, latent symbols/s per thread given and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"32x32": ("tica-cifar", 4.0, "cifar10-jpeg.tar.gz", "test"),
         "224x224": ("tica-photo", 2.0, "imagenette-224.tar.gz", "val")}

WORKER = r"""
import json, sys, time
import torch
threads = int(sys.argv[2])
torch.set_num_threads(threads)
import tica
from tica import api
from tica.data import load_split
from tica.entropy import parallel
from tica.entropy.payload import PayloadDecoder
parallel.set_threads(threads)
cases = json.loads(sys.argv[1])
jobs = {}
for label, (preset, quality, archive, split, limit) in cases.items():
    model = tica.load(preset)
    x = load_split(archive, split, limit=limit).images.float() / 255
    data = api.compress(model, x, quality=quality, budget=None)
    stream = api.parse(model, data)
    h, w = model.latent_grid(stream.sizes[0])
    tables = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    z_shape = (model.config.N, h // 2, w // 2)
    z = torch.from_numpy(PayloadDecoder(stream.payloads).decode_z(z_shape, tables[0]))
    indexes, _ = model._hyper_decode(z, quality)

    def entropy(p=stream.payloads, zs=z_shape, t=tables, i=indexes):
        r = PayloadDecoder(p)
        r.decode_z(zs, t[0])
        r.decode_y(i, t[1])

    jobs[label] = {
        "decompress": lambda m=model, d=data: list(api.decompress(m, d, budget=None)),
        "h_s and tables": lambda m=model, z=z, q=quality: m._hyper_decode(z, q),
        "entropy decoding": entropy}
    jobs[label]["symbols"] = len(stream.payloads) * model.config.M * h * w
    if label == "224x224":      # the worst case a stream can ask for: one rare value, over
        import numpy as np      # and over, of the widest table (the longest run of entries
        from tica.entropy.coder import BatchDecoder, LOOKUP_BITS, encode_batch  # in one slice)
        g, n = tables[1], 100_000
        T, shift = len(g) - 1, 24 - LOOKUP_BITS
        worst = max(range(int(g.lengths[T])),
                    key=lambda a: a - int(g.lookup[T][int(g.cdf[T][a]) >> shift]))
        index = np.full(n, T)
        rare = encode_batch([(np.full((1, n), g.offsets[T] + worst), index, g)], 1)
        jobs["rare values"] = {"entropy decoding": lambda p=rare, i=index, g=g:
                               BatchDecoder(p).decode(i, g), "symbols": n}
print(json.dumps({k: v.pop("symbols") for k, v in jobs.items()}), flush=True)
for line in sys.stdin:
    times = {}
    for label, parts in jobs.items():
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[f"{label}|{name}"] = time.perf_counter() - start
    print(json.dumps(times), flush=True)
"""


def start(checkout: Path, cases: dict, threads: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{checkout / 'src'}{os.pathsep}{ROOT / 'tools'}",
               OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cases), str(threads)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", type=Path, required=True, help="another checkout")
    p.add_argument("--images", type=int, default=256, help="CIFAR-10 test images")
    p.add_argument("--photos", type=int, default=64, help="Imagenette validation images")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch's and the coder's threads")
    p.add_argument("--data", type=Path, default=Path(os.environ.get(
        "TICA_DATA", ROOT.parent / "shared" / "data")))
    args = p.parse_args(argv)
    limits = {"32x32": args.images, "224x224": args.photos}
    cases = {k: (preset, q, str(args.data / archive), split, limits[k])
             for k, (preset, q, archive, split) in CASES.items()}
    workers = {"this": start(ROOT, cases, args.threads),
               "other": start(args.against.resolve(), cases, args.threads)}
    symbols = {k: json.loads(w.stdout.readline()) for k, w in workers.items()}
    times: dict[str, dict[str, list[float]]] = {k: {} for k in workers}
    for _ in range(args.rounds + 1):                      # the first round warms up
        for name, w in workers.items():
            w.stdin.write("run\n")
            w.stdin.flush()
            for key, t in json.loads(w.stdout.readline()).items():
                times[name].setdefault(key, []).append(t)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    print("| images | part | other: s | this: s | other: M latent symbols/s | "
          "this: M latent symbols/s | this / other |\n|---|---|---:|---:|---:|---:|---:|")
    for key in times["this"]:
        label, part = key.split("|")
        a, b = (statistics.median(times[n][key][1:]) for n in ("other", "this"))
        n = symbols["this"][label]
        per_core = 1e6 * args.threads
        print(f"| {label} | {part} | {a:.4f} | {b:.4f} | {n / a / per_core:.1f} | "
              f"{n / b / per_core:.1f} "
              f"| {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
