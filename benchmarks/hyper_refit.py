"""Refit hyperpriors (tica_tools.refit) against the shipped codec, side by side: the curves
and verdicts of `compare_codecs.py` (real streams on held-out images), then what each h_s
costs the decoder on this CPU (the integer h_s alone and `api.decompress` of a 256-image
stream at q4, one thread, the median of interleaved rounds).

    python benchmarks/hyper_refit.py runs/refit/a.safetensors [...] \\
        --data ../shared/data/cifar10-jpeg.tar.gz --limit 2000 [--speed-only] [--rounds 5]

Prints Markdown tables (docs/design.md, "A hyperprior refit on frozen latents")."""

from __future__ import annotations

import argparse

import torch

from compare_codecs import compare, load_codec
from tica import api
from tica.data import held_out_split, load_split
from tica_tools.timing import cpu_name, interleaved_median_ms


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
    args = parser.parse_args(argv)
    refits = {spec: load_codec(spec) for spec in args.weights}
    shipped = f"shipped:{refits[args.weights[0]].config.name}"
    models = {shipped: load_codec(shipped), **refits}
    if not args.speed_only:
        print(compare(args.data, list(models), args.limit))
    split = load_split(args.data, held_out_split(args.data), limit=args.limit)
    images = split.images[:256].float() / 255
    print(f"Decoding on one thread of {cpu_name()}, 256 images at q4:\n")
    print("| codec | h_s (first kernel, transposed kernel, hs_mid, last kernel) | "
          "integer h_s images/s | "
          "decoding M latent symbols/s |")
    print("|---|---|---:|---:|")
    for spec, (hs, dec) in decode_speed(models, images, args.rounds).items():
        c = models[spec].config
        first, mid, last = c.hs_first_kernel, c.hs_mid_kernel, c.hs_kernel
        shape = f"{first}x{first}, {mid}x{mid}, {c.hs_width}, {last}x{last}"
        print(f"| {spec} | {shape} | {hs:,.0f} | {dec / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
