"""Codec speed on this CPU, side by side in one run.

    python benchmarks/codec_speed.py [--threads 2] [--images 4] [--repeats 3]

Prints and writes docs/benchmarks/codec_speed.{md,json}:
  1. Kodak (768x512), tica-photo: encode and decode ms per image with a breakdown, against
     a bmshj2018-hyperprior-shaped transform pair (GDN, N=128, M=192, NCHW as CompressAI runs
     it) timed in the same process, and against the reference CompressAI timings given for
     this machine (0.39 s encode, 0.49 s decode, 2 threads; transforms 95% of them).
  2. 32x32 batches (tica-cifar): images/s to encode, to classify from the bitstream, to decode.
  3. classify-from-bitstream against decode-then-classify-pixels (pixel ViT of the same size).
Weights are the untrained presets unless trained ones are shipped: speed does not depend
on the values of the weights, only on the shapes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from tica.cli import data_root
import tica
from tica_tools.timing import cpu_name, photo_timing_models, write_benchmark
from tica.image import read_image
from tica.models.codec import pad_to
from tica.nn.conv import GDN, nhwc

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(data_root())
COMPRESSAI_ENCODE_S, COMPRESSAI_DECODE_S = 0.39, 0.49


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time in ms over `repeats` runs after one warm-up run."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def bmshj2018_transforms(N: int = 128, M: int = 192) -> tuple[torch.nn.Module, torch.nn.Module]:
    """g_a and g_s of CompressAI's bmshj2018-hyperprior (quality 1-5 widths), built from
    plain torch layers and run NCHW in fp32, as CompressAI runs them."""
    nn = torch.nn
    conv = lambda i, o: nn.Conv2d(i, o, 5, stride=2, padding=2)
    deconv = lambda i, o: nn.ConvTranspose2d(i, o, 5, stride=2, padding=2, output_padding=1)
    g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
    g_s = nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                        deconv(N, N), GDN(N, inverse=True), deconv(N, 3))
    return g_a.eval(), g_s.eval()


def kodak_section(images: list[torch.Tensor], repeats: int) -> dict:
    model = tica.load("tica-photo")
    ref_g_a, ref_g_s = bmshj2018_transforms()
    rows = {k: [] for k in ("encode", "decode", "g_a", "int_h_s", "entropy_encode",
                            "entropy_decode", "vit_fam", "g_s", "ref_g_a", "ref_g_s", "bytes")}
    with torch.no_grad():
        for img in images:
            x = img[None]
            size = tuple(img.shape[-2:])
            ms, data = timed(lambda: tica.compress(model, x), repeats)
            rows["encode"].append(ms)
            rows["bytes"].append(len(data))
            rows["decode"].append(timed(lambda: tica.reconstruct(model, data), repeats)[0])
            rows["g_a"].append(timed(lambda: model.g_a(nhwc(pad_to(x, model.config.stride))),
                                     repeats)[0])
            z = torch.round(model.h_a(model.g_a(x)))
            rows["int_h_s"].append(timed(lambda: model.integer_h_s(z), repeats)[0])
            stream = tica.bitstream.unpack(data)
            rows["entropy_decode"].append(
                timed(lambda: model.decompress(list(stream.payloads), size), repeats)[0]
                - rows["int_h_s"][-1])
            rows["entropy_encode"].append(max(rows["encode"][-1] - rows["g_a"][-1]
                                              - rows["int_h_s"][-1], 0.0))
            y_hat = model.decompress(list(stream.payloads), size)
            tokens, grid = model.tokens(y_hat)
            rows["vit_fam"].append(timed(lambda: model.fam(
                [tokens] + model.vit.forward_intermediates(tokens, grid, model.config.fam_blocks,
                                                           stop_early=True)[1], grid), repeats)[0])
            feats = model.fam([tokens] + model.vit.forward_intermediates(
                tokens, grid, model.config.fam_blocks, stop_early=True)[1], grid)
            rows["g_s"].append(timed(lambda: model.g_s(nhwc(feats)), repeats)[0])
            rows["ref_g_a"].append(timed(lambda: ref_g_a(x), repeats)[0])
            rows["ref_g_s"].append(timed(lambda: ref_g_s(torch.randn(1, 192, *y_hat.shape[-2:])), repeats)[0])
    return {k: statistics.mean(v) for k, v in rows.items()}


def batch_section(batch: torch.Tensor, repeats: int) -> dict:
    model = tica.load("tica-cifar")
    pixel_vit = tica.create_model("vit-pixel-cifar").eval()
    n = batch.shape[0]
    with torch.no_grad():
        enc_ms, data = timed(lambda: tica.compress(model, batch), repeats)
        cls_ms, _ = timed(lambda: tica.classify_logits(model, data), repeats)
        dec_ms, _ = timed(lambda: tica.reconstruct(model, data), repeats)
        latent_ms, _ = timed(lambda: list(tica.decompress(model, data)), repeats)

        def decode_then_classify():
            pixels = torch.stack(tica.reconstruct(model, data))
            return pixel_vit(pixels)["logits"]

        dtc_ms, _ = timed(decode_then_classify, repeats)
        one = tica.compress(model, batch[:1])
        cls1_ms, _ = timed(lambda: tica.classify_logits(model, one), repeats * 3)
        dtc1_ms, _ = timed(lambda: pixel_vit(torch.stack(tica.reconstruct(model, one)))["logits"],
                           repeats * 3)
    return {
        "batch": n, "bytes": len(data), "bpp": 8 * len(data) / (n * 32 * 32),
        "encode_img_s": n / enc_ms * 1e3, "entropy_decode_img_s": n / latent_ms * 1e3,
        "classify_img_s": n / cls_ms * 1e3, "reconstruct_img_s": n / dec_ms * 1e3,
        "decode_then_classify_img_s": n / dtc_ms * 1e3,
        "classify_ms_batch": cls_ms, "decode_then_classify_ms_batch": dtc_ms,
        "classify_ms_single": cls1_ms, "decode_then_classify_ms_single": dtc1_ms,
    }


def kodak_classify_section(images: list[torch.Tensor], repeats: int) -> dict:
    """At Kodak size: ViT on the bitstream's latent vs g_s + a pixel ViT with 16x16 patches
    (the same token count, 48x32, and the same ViT size; see `photo_timing_models`)."""
    model, pixel_vit = photo_timing_models()
    data = tica.compress(model, images[0])
    with torch.no_grad():
        cls_ms, _ = timed(lambda: tica.classify_logits(model, data), repeats)
        dtc_ms, _ = timed(lambda: pixel_vit(torch.stack(tica.reconstruct(model, data)))["logits"], repeats)
    return {"classify_ms": cls_ms, "decode_then_classify_ms": dtc_ms}


def render(kodak: dict, batch: dict, kclass: dict, threads: int, n_kodak: int) -> str:
    ref_enc = kodak["ref_g_a"] / 0.95
    ref_dec = kodak["ref_g_s"] / 0.95
    lines = [
        "# Codec speed",
        "",
        f"Generated by `python benchmarks/codec_speed.py --threads {threads}` on "
        f"{cpu_name()}, {threads} threads, torch {torch.__version__}.",
        "",
        f"## Kodak, {n_kodak} image(s) of 768x512, tica-photo (ms per image, mean)",
        "",
        "| | tica | bmshj2018-shaped transforms, this run (/0.95) | ratio | CompressAI reference | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        f"| encode | {kodak['encode']:.0f} | {ref_enc:.0f} | {kodak['encode'] / ref_enc:.2f}x "
        f"| {COMPRESSAI_ENCODE_S * 1e3:.0f} | {kodak['encode'] / (COMPRESSAI_ENCODE_S * 1e3):.2f}x |",
        f"| decode (to pixels) | {kodak['decode']:.0f} | {ref_dec:.0f} | {kodak['decode'] / ref_dec:.2f}x "
        f"| {COMPRESSAI_DECODE_S * 1e3:.0f} | {kodak['decode'] / (COMPRESSAI_DECODE_S * 1e3):.2f}x |",
        "",
        "Breakdown (ms): "
        f"g_a {kodak['g_a']:.0f}, integer h_s {kodak['int_h_s']:.0f}, "
        f"h_a + entropy encode {kodak['entropy_encode']:.0f}, entropy decode {kodak['entropy_decode']:.0f}, "
        f"ViT blocks + FAM {kodak['vit_fam']:.0f}, g_s {kodak['g_s']:.0f}; "
        f"mean stream {kodak['bytes']:.0f} bytes.",
        "",
        f"## 32x32 images, batch of {batch['batch']}, tica-cifar (images/s)",
        "",
        "| encode | entropy decode | classify from bitstream | reconstruct | decode then classify pixels |",
        "|---:|---:|---:|---:|---:|",
        f"| {batch['encode_img_s']:.0f} | {batch['entropy_decode_img_s']:.0f} | "
        f"{batch['classify_img_s']:.0f} | {batch['reconstruct_img_s']:.0f} | "
        f"{batch['decode_then_classify_img_s']:.0f} |",
        "",
        "## Classify from the bitstream vs decode, then classify pixels",
        "",
        "| setting | from bitstream (ms) | decode + pixel ViT (ms) | ratio |",
        "|---|---:|---:|---:|",
        f"| 32x32, batch {batch['batch']} | {batch['classify_ms_batch']:.1f} | "
        f"{batch['decode_then_classify_ms_batch']:.1f} | "
        f"{batch['classify_ms_batch'] / batch['decode_then_classify_ms_batch']:.2f}x |",
        f"| 32x32, one image | {batch['classify_ms_single']:.2f} | "
        f"{batch['decode_then_classify_ms_single']:.2f} | "
        f"{batch['classify_ms_single'] / batch['decode_then_classify_ms_single']:.2f}x |",
        f"| 768x512, one image | {kclass['classify_ms']:.0f} | {kclass['decode_then_classify_ms']:.0f} | "
        f"{kclass['classify_ms'] / kclass['decode_then_classify_ms']:.2f}x |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="Kodak images to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kodak_files = sorted((DATA / "kodak").glob("kodim*.png"))
    if not kodak_files:
        print(f"Kodak images not found under {DATA}", file=sys.stderr)
        return 1
    kodak_images = [read_image(p) for p in kodak_files[: args.images]]
    kodak_images = [img if img.shape[1] < img.shape[2] else img.transpose(1, 2) for img in kodak_images]
    gen = torch.Generator().manual_seed(0)
    cifar = torch.rand(args.batch, 3, 32, 32, generator=gen)
    kodak = kodak_section(kodak_images, args.repeats)
    batch = batch_section(cifar, args.repeats)
    kclass = kodak_classify_section(kodak_images, args.repeats)
    report = render(kodak, batch, kclass, args.threads, len(kodak_images))
    write_benchmark(args.out, "codec_speed", report, {
        "threads": args.threads, "kodak": kodak, "batch32": batch, "kodak_classify": kclass})
    return 0


if __name__ == "__main__":
    sys.exit(main())
