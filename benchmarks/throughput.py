"""A server's throughput, side by side in one run: the entropy coder against the networks it
feeds, on real CIFAR-10 test images (tica-cifar, 32x32, q4) and Imagenette validation images
(tica-photo, 224x224, q2).

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--images N] [--photos N]
                                    [--repeats 3] [--images-from FILE.npz] [--out DIR]
                                    [--name STEM]

Writes DIR/NAME.{md,json} (default docs/benchmarks/throughput.*; a GPU run: throughput_cuda.*):
  1. the coder alone: symbols/s per core, encode and decode, on one thread and on all of
     them, coding the real symbols of those images (z and y, escapes included);
  2. images/s to classify from the stream, to decode (reconstruct) and to encode, for a
     stream of one image (batch 1) and of 256 (batch 256);
  3. where classify-from-stream's time goes on a stream of all the images (by default 1,000
     CIFAR-10 ones, as the coder's issue measured, and 256 photographs): entropy decoding,
     the integer h_s and the ViT, each timed alone, as shares of the whole (decoding
     overlaps the ViT on a CPU: the parts may add up past the whole); and the whole of
     decoding (`api.decompress`: the container, entropy decoding and the h_s) in latent
     symbols/s per core, and its time against the ViT's.
--images-from reads the images from the .npz that `benchmarks/cross_device.py prepare` writes
(for a machine without the data sets); otherwise they come from $TICA_DATA (default
../shared/data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import tica
from tica import api
from tica.cli import data_root
from tica.entropy import parallel
from tica.entropy.payload import PayloadDecoder, encode_payloads
from tica_tools.timing import cpu_name, median_seconds as timed, write_benchmark

ROOT = Path(__file__).resolve().parents[1]
CASES = {"32x32": ("tica-cifar", 4.0, "cifar"), "224x224": ("tica-photo", 2.0, "photos")}
BIG_BATCH = 256


def load_images(args) -> dict[str, torch.Tensor]:
    """{"cifar": (N, 3, 32, 32), "photos": (P, 3, 224, 224)} uint8."""
    if args.images_from:
        from cross_device import read_images
        images = read_images(Path(args.images_from))
        return {"cifar": images["cifar"][0][:args.images],
                "photos": images["photos"][0][:args.photos]}
    from tica.data import load_split
    root = Path(data_root())
    return {"cifar": load_split(root / "cifar10-jpeg.tar.gz", "test", limit=args.images).images,
            "photos": load_split(root / "imagenette-224.tar.gz", "val", limit=args.photos).images}


def machine(device: torch.device) -> dict:
    out = {"cpu": cpu_name(), "cores": parallel.available_cores(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def coder_section(model, x: torch.Tensor, quality: float, repeats: int) -> dict:
    """The coder alone on the images' real symbols: symbols/s per core, one thread and all."""
    z, indexes, _, symbols = model.analyze(x, quality)
    z, symbols = z.int().numpy(), symbols.int().numpy()
    tables = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    payloads = encode_payloads(z, symbols, indexes, *tables)
    count = z[0].size + symbols[0].size

    def decode():
        reader = PayloadDecoder(payloads)
        reader.decode_z(z.shape[1:], tables[0])
        reader.decode_y(indexes, tables[1])

    out = {"symbols_per_image": count}
    cpu = torch.device("cpu")
    for threads in sorted({1, parallel.available_cores()}):
        parallel.set_threads(threads)
        enc = timed(lambda: encode_payloads(z, symbols, indexes, *tables), repeats, cpu)
        dec = timed(decode, repeats, cpu)
        out[f"threads_{threads}"] = {
            "encode_msym_s_per_core": len(x) * count / enc / threads / 1e6,
            "decode_msym_s_per_core": len(x) * count / dec / threads / 1e6}
    parallel.set_threads(None)
    return out


def speed_section(model, x: torch.Tensor, quality: float, repeats: int,
                  device: torch.device) -> dict:
    """Images/s for one-image streams and a 256-image stream: classify, reconstruct, encode."""
    out = {}
    for batch in (1, BIG_BATCH):
        images = x[:batch]
        data = api.compress(model, images, quality=quality, budget=None)
        n, repeats_here = len(images), repeats if batch > 1 else 5 * repeats
        out[f"batch_{batch}"] = {
            "images": n, "bpp": 8 * len(data) / (n * images.shape[-1] * images.shape[-2]),
            "classify_img_s": n / timed(lambda: api.classify_logits(model, data, budget=None),
                                        repeats_here, device),
            "reconstruct_img_s": n / timed(lambda: api.reconstruct(model, data, budget=None),
                                           repeats_here, device),
            "encode_img_s": n / timed(lambda: api.compress(model, images, quality=quality,
                                                           budget=None), repeats_here, device)}
    return out


def breakdown_section(model, x: torch.Tensor, quality: float, repeats: int,
                      device: torch.device) -> dict:
    """Classify-from-stream of one stream and its parts, each timed alone in this run over
    the same batches the library cuts the stream into."""
    data = api.compress(model, x, quality=quality, budget=None)
    stream = api.parse(model, data)
    h, w = model.latent_grid(stream.sizes[0])
    z_shape = (model.config.N, h // 2, w // 2)
    tables = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    size = api._batch_size(model, None, stream.sizes[0])
    batches = []                                    # (payloads, z, indexes, y_hat) per batch
    for start in range(0, len(stream.payloads), size):
        payloads = list(stream.payloads[start:start + size])
        z = torch.from_numpy(PayloadDecoder(payloads).decode_z(z_shape, tables[0]))
        indexes, _ = model._hyper_decode(z, quality)
        y_hat = model.decompress(payloads, stream.sizes[0], quality)
        batches.append((payloads, z, indexes, y_hat))

    def entropy():
        for payloads, _, indexes, _ in batches:
            r = PayloadDecoder(payloads)
            r.decode_z(z_shape, tables[0])
            r.decode_y(indexes, tables[1])

    parts = {
        "entropy_decode": timed(entropy, repeats, device),
        "integer_h_s": timed(lambda: [model._hyper_decode(b[1], quality) for b in batches],
                             repeats, device),
        "vit": timed(lambda: [model.classify_latent(b[3]) for b in batches], repeats, device),
        "decompress": timed(lambda: list(api.decompress(model, data, budget=None)), repeats,
                            device),
        "classify_from_stream": timed(lambda: api.classify_logits(model, data, budget=None),
                                      repeats, device)}
    total, n = parts["classify_from_stream"], len(stream.payloads)
    latent = model.config.M * h * w
    return {"images": n, "batch": size, "seconds": parts, "latent_symbols": latent,
            "decompress_msym_s_per_core": n * latent / parts["decompress"]
            / parallel.available_cores() / 1e6,
            "share": {k: v / total for k, v in parts.items() if k != "classify_from_stream"},
            "img_s": {k: n / v for k, v in parts.items()}}


def render(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu", "CPU") + f" (networks), {m['cpu']}, {m['cores']} cores (coder)"
    lines = [f"# Throughput: the coder against the networks ({m['device']})", "",
             f"Machine: {where}; torch {m['torch']} ({m['torch_threads']} threads). "
             f"Reproduce: `{result['command']}`.", "",
             "## 1. The entropy coder alone (real symbols of the images below)", "",
             "| images | symbols/image | threads | encode M symbols/s per core | "
             "decode M symbols/s per core |", "|---|---:|---:|---:|---:|"]
    for label, r in result["cases"].items():
        coder = r["coder"]
        for key in (k for k in coder if k.startswith("threads_")):
            lines.append(f"| {label} | {coder['symbols_per_image']:,} | {key.split('_')[1]} | "
                         f"{coder[key]['encode_msym_s_per_core']:.1f} | "
                         f"{coder[key]['decode_msym_s_per_core']:.1f} |")
    lines += ["", "## 2. Images per second, whole calls (container, coder, networks)", "",
              "| images | model | stream | bpp | classify from the stream | decode to pixels | "
              "encode |", "|---|---|---|---:|---:|---:|---:|"]
    for label, r in result["cases"].items():
        for key, s in r["speed"].items():
            lines.append(f"| {label} | {r['model']} q{r['quality']:g} | {s['images']} image(s) | "
                         f"{s['bpp']:.3f} | {s['classify_img_s']:,.0f} | "
                         f"{s['reconstruct_img_s']:,.0f} | {s['encode_img_s']:,.0f} |")
    sizes = sorted({r["breakdown"]["images"] for r in result["cases"].values()})
    batch = sorted({r["breakdown"]["batch"] for r in result["cases"].values()})
    lines += ["", f"## 3. Where classify-from-stream's time goes "
              f"({'/'.join(map(str, sizes))}-image stream)", "",
              "Each part timed alone in this run, over the batches the library cuts the "
              f"stream into ({'/'.join(map(str, batch))} images); shares of the whole call "
              "(the rest: container, batching, copies; on a CPU the next batches decode "
              "while the ViT runs, so the parts may add up past the whole).", "",
              "| images | whole call, images/s | entropy decoding | integer h_s | ViT | "
              "decoding (`api.decompress`) | its M latent symbols/s per core | "
              "decoding vs ViT |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in result["cases"].items():
        b = r["breakdown"]
        ratio = b["seconds"]["decompress"] / b["seconds"]["vit"]
        lines.append(f"| {label} | {b['img_s']['classify_from_stream']:,.0f} | "
                     f"{100 * b['share']['entropy_decode']:.0f}% "
                     f"({b['img_s']['entropy_decode']:,.0f}/s) | "
                     f"{100 * b['share']['integer_h_s']:.0f}% "
                     f"({b['img_s']['integer_h_s']:,.0f}/s) | "
                     f"{100 * b['share']['vit']:.0f}% ({b['img_s']['vit']:,.0f}/s) | "
                     f"{100 * b['share']['decompress']:.0f}% "
                     f"({b['img_s']['decompress']:,.0f}/s) | "
                     f"{b['decompress_msym_s_per_core']:.1f} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=api.DEVICES)
    p.add_argument("--images", type=int, default=1000, help="CIFAR-10 test images")
    p.add_argument("--photos", type=int, default=BIG_BATCH, help="Imagenette validation images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images-from", dest="images_from", metavar="FILE.npz")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--name", help="the files' stem (default throughput, on a GPU "
                   "throughput_cuda): e.g. throughput_avx2 for a CPU without AVX-512")
    args = p.parse_args(argv)
    device = api.resolve_device(args.device)
    images = load_images(args)
    result = {"machine": machine(device), "cases": {},
              "command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:])}
    with torch.no_grad():
        for label, (preset, quality, key) in CASES.items():
            x = images[key].float() / 255
            model = tica.load(preset, device=device)
            print(f"{label}: {preset} on {device}, {len(x)} images", file=sys.stderr)
            result["cases"][label] = {
                "model": preset, "quality": quality,
                "coder": coder_section(model, x[:BIG_BATCH], quality, args.repeats),
                "speed": speed_section(model, x, quality, args.repeats, device),
                "breakdown": breakdown_section(model, x, quality, args.repeats,
                                               device)}
    name = args.name or "throughput" + ("" if device.type == "cpu" else f"_{device.type}")
    write_benchmark(args.out, name, render(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
