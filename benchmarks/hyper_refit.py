"""Refit hyperpriors (tica_tools.refit) against the shipped codec, side by side: the curves
and verdicts of `compare_codecs.py` (real streams on held-out images), then what each h_s
costs the decoder on this CPU (the integer h_s alone and `api.decompress` of a 256-image
stream at q4, one thread, the median of interleaved rounds).

    python benchmarks/hyper_refit.py runs/refit/a.safetensors [...] \\
        --data ../shared/data/cifar10-jpeg.tar.gz --limit 2000 [--speed-only] [--rounds 5]
        [--proxy 512]

--proxy N first ranks the files by the training proxy, cheaply: the bits that training
charges (y + noise, z as its hyper proxy sees it; tica_tools.refit.rate_bits) on N of the
cached training latents, at every standard quality, the same draws for every file. It
overstates the low rates, so read its ratios, not its bpp.

Prints Markdown tables (docs/design.md, "A hyperprior refit on frozen latents")."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from compare_codecs import compare, load_codec
from tica import api
from tica.data import held_out_split, load_split
from tica_tools.refit import cached_latents, rate_bits
from tica_tools.timing import cpu_name, interleaved_median_ms


@torch.no_grad()
def proxy_bpp(models: dict, y: torch.Tensor, batch: int = 64) -> dict[str, list[float]]:
    """Per model: the training proxy's bpp on latents y (un-gained, float) at each standard
    quality, with the same noise for every model (seeded per model)."""
    out = {}
    for name, model in models.items():
        was_training = model.training
        model.train()                               # the z proxy as training sees it
        torch.manual_seed(0)
        levels = model.config.rate_levels
        pixels = y.shape[-2] * y.shape[-1] * 4 ** model.config.stages
        rows = []
        for q in range(1, max(levels, 1) + 1):          # a fixed-rate model: its one rate
            bits = sum(rate_bits(model, part, torch.full((len(part),), float(q)) if levels
                                 else None).sum() for part in y.split(batch))
            rows.append(float(bits) / len(y) / pixels)
        model.train(was_training)
        out[name] = rows
    return out


def decode_speed(models: dict, images: torch.Tensor, rounds: int = 5
                 ) -> dict[str, tuple[float, float]]:
    """Per model: (integer h_s images/s, api.decompress latent symbols/s) on `images` at q4,
    one thread; the median of `rounds` interleaved rounds after a warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls, symbols = {}, {}
        for name, model in models.items():
            z = model.analyze(images, 4.0)[0]
            stream = api.compress(model, images, quality=4)
            h, w = model.latent_grid(tuple(images.shape[-2:]))
            symbols[name] = len(images) * model.config.M * h * w
            calls[name, "h_s"] = lambda m=model, z=z: m.integer_h_s(z)
            calls[name, "decode"] = lambda m=model, s=stream: list(api.decompress(m, s))
        ms = interleaved_median_ms(calls, rounds)
    finally:
        torch.set_num_threads(threads)
    return {name: (1e3 * len(images) / ms[name, "h_s"], 1e3 * symbols[name] / ms[name, "decode"])
            for name in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="refit codecs (safetensors)")
    parser.add_argument("--data", required=True, help="held-out data (a class-per-folder "
                        "archive or folder)")
    parser.add_argument("--limit", type=int, help="a class-balanced subset of it")
    parser.add_argument("--speed-only", action="store_true", help="only the decoding speed "
                        "(the curves already measured, e.g. by scripts/ship_weights.py's gate)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--proxy", type=int, metavar="N", help="first, the training proxy on "
                        "N cached training latents (computed once per g_a, tica_tools.refit)")
    args = parser.parse_args(argv)
    refits = {spec: load_codec(spec) for spec in args.weights}
    shipped = f"shipped:{refits[args.weights[0]].config.name}"
    models = {shipped: load_codec(shipped), **refits}
    if args.proxy:
        y = cached_latents(models[shipped], args.data)
        pick = np.sort(np.random.default_rng(0).choice(len(y), args.proxy, replace=False))
        table = proxy_bpp(models, y[torch.from_numpy(pick)].float())
        base = sum(table[shipped]) / len(table[shipped])
        print(f"Training proxy on {len(pick)} cached training latents, bpp per quality:\n")
        print("| codec | " + " | ".join(f"q{q + 1}" for q in range(len(table[shipped])))
              + " | mean | against the shipped file |")
        print("|---|" + "---:|" * (len(table[shipped]) + 2))
        for name, rows in table.items():
            mean = sum(rows) / len(rows)
            print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in rows)
                  + f" | {mean:.4f} | {100 * (mean / base - 1):+.1f}% |")
        print()
    if not args.speed_only:
        print(compare(args.data, list(models), args.limit))
    split = load_split(args.data, held_out_split(args.data), limit=args.limit)
    images = split.images[:256].float() / 255
    print(f"Decoding on one thread of {cpu_name()}, 256 images at q4:\n")
    print("| codec | h_s (first kernel, transposed kernel, hs_mid, last kernel) | "
          "integer h_s images/s | decoding M latent symbols/s |")
    print("|---|---|---:|---:|")
    for spec, (hs, dec) in decode_speed(models, images, args.rounds).items():
        c = models[spec].config
        first, mid, last = c.hs_first_kernel, c.hs_mid_kernel, c.hs_kernel
        shape = f"{first}x{first}, {mid}x{mid}, {c.hs_width}, {last}x{last}"
        print(f"| {spec} | {shape} | {hs:,.0f} | {dec / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
