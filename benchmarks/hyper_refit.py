"""Refit hyperpriors (tica_tools.refit) against the shipped codec, side by side: real-stream
curves on held-out images (bpp, PSNR, top-1 at every standard quality; BD-rate and top-1 at
equal bpp with its paired test), and what each h_s costs the decoder on this CPU (the integer
h_s alone and `api.decompress` of a 256-image stream at q4, one thread, interleaved rounds).

    python benchmarks/hyper_refit.py runs/refit/a.safetensors [...] \\
        --data ../shared/data/cifar10-jpeg.tar.gz --limit 2000

Prints Markdown tables (docs/design.md, "A hyperprior refit on frozen latents")."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tica
from tica import api
from tica.evaluate import eval_data
from tica.registry import load_checkpoint
from tica_tools.rd import curve_rows, curve_verdict, curves_table, top1_gap_text
from tica_tools.timing import cpu_name


def decode_speed(models: dict, data, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """Per model: (integer h_s images/s, api.decompress latent symbols/s), one thread, on
    the first 256 images at q4; the median of `rounds` interleaved rounds."""
    images = data.split.images[:256].float() / 255
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work = {}
        for name, model in models.items():
            z = model.analyze(images, 4.0)[0]
            z = torch.from_numpy(z) if not torch.is_tensor(z) else z
            stream = api.compress(model, images, quality=4)
            symbols = model.config.M * (images.shape[-1] // 2 ** model.config.stages) ** 2
            work[name] = (model, z, stream, symbols)
        times = {name: ([], []) for name in work}
        for _ in range(rounds):
            for name, (model, z, stream, _) in work.items():
                for spent, call in zip(times[name], (lambda: model.integer_h_s(z),
                                                     lambda: list(api.decompress(model, stream)))):
                    start = time.perf_counter()
                    call()
                    spent.append(time.perf_counter() - start)
        n = len(images)
        return {name: (n / statistics.median(times[name][0]),
                       n * work[name][3] / statistics.median(times[name][1])) for name in work}
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="refit codecs (safetensors)")
    parser.add_argument("--data", required=True, help="held-out data (archive or folder)")
    parser.add_argument("--limit", type=int, help="a class-balanced subset of it")
    args = parser.parse_args(argv)
    data = eval_data(args.data, limit=args.limit)
    shipped = tica.load(load_checkpoint(args.weights[0]).config.name)
    models = {"shipped": shipped, **{w.rsplit("/", 1)[-1].removesuffix(".safetensors"):
                                     load_checkpoint(w) for w in args.weights}}
    curves = {name: curve_rows(model, data) for name, model in models.items()}
    speed = decode_speed(models, data)
    print(f"{data.name}, {cpu_name()}\n")
    print("\n".join(curves_table(curves)) + "\n")
    print("| codec | h_s (hs_mid, hs_kernel) | BD-rate (PSNR) | top-1 at equal bpp | "
          "integer h_s images/s | decoding M symbols/s |")
    print("|---|---|---:|---|---:|---:|")
    for name, model in models.items():
        verdict = curve_verdict(curves["shipped"], curves[name])
        c = model.config
        hs, dec = speed[name]
        print(f"| {name} | {c.hs_width}, {c.hs_kernel} | {verdict['bd_rate_psnr']:+.2f}% | "
              f"{top1_gap_text(verdict)} | {hs:,.0f} | {dec / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
