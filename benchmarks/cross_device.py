"""Streams written on one machine decode the same on another: a CPU and a GPU, both ways.

    python benchmarks/cross_device.py prepare [--dir .check]      here, before the GPU check
    python benchmarks/cross_device.py run --dir .check --out OUT   on the GPU (scripts/gpu_check.sh)
    python benchmarks/cross_device.py compare --dir .check --gpu OUT   here, after it

prepare: the images (CIFAR-10 test images as pixels, Imagenette validation images as their
  JPEG files) into DIR/images.npz, and this machine's streams of them (tica-cifar q4,
  tica-photo q2) into DIR/cpu_*.tica.
run: on the device it is given (default auto), decodes the CPU's streams (classes and
  pixels), writes its own streams of the same images and decodes those: OUT/from_cpu.npz,
  OUT/from_gpu.npz, OUT/gpu_*.tica.
compare: decodes both machines' streams here and compares, image by image: top-1, the
  largest logit difference, and the pixels (how many differ, by how much); writes
  docs/benchmarks/cross_device.{md,json} (or --docs DIR). Exit 1 if any image's top-1
  differs between the machines.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tica
from tica import api
from tica.cli import data_root
from tica.io import atomic_write_bytes
from tica_tools.timing import write_benchmark

ROOT = Path(__file__).resolve().parents[1]
CASES = {"cifar": ("tica-cifar", 4.0), "photos": ("tica-photo", 2.0)}
# reconstructions brought back per case: the first N images (files back are at most 16 MiB)
PIXELS_BACK = {"cifar": 1000, "photos": 48}


def write_images(path: Path, cifar: int, photos: int) -> None:
    """CIFAR-10 test images (uint8 pixels) and Imagenette validation images (their JPEG
    bytes, as load_split would read them) with their labels, in one .npz."""
    from tica.data import load_split, split_files
    root = Path(data_root())
    c = load_split(root / "cifar10-jpeg.tar.gz", "test", limit=cifar)
    files, labels, _ = split_files(root / "imagenette-224.tar.gz", "val")
    step = max(1, len(files) // photos)
    files, labels = files[::step][:photos], labels[::step][:photos]
    blobs = [f.read_bytes() for f in files]
    np.savez(path, cifar=c.images.numpy(), cifar_labels=c.labels.numpy(),
             photos_jpeg=np.frombuffer(b"".join(blobs), np.uint8),
             photos_offsets=np.cumsum([0] + [len(b) for b in blobs]),
             photos_labels=np.asarray(labels))


def read_images(path: Path) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """{"cifar": (uint8 (N, 3, 32, 32), labels), "photos": (uint8 (P, 3, 224, 224), labels)}."""
    with np.load(path) as f:
        blob, offsets = f["photos_jpeg"].tobytes(), f["photos_offsets"]
        photos = np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b])).convert("RGB"))
                           for a, b in zip(offsets[:-1], offsets[1:])])
        return {"cifar": (torch.from_numpy(f["cifar"]), f["cifar_labels"]),
                "photos": (torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous(),
                           f["photos_labels"])}


def decoded(model, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, classes) float32, reconstructions (N, 3, H, W) uint8) of a stream."""
    logits = api.classify_logits(model, data, budget=None).numpy()
    pixels = torch.stack(api.reconstruct(model, data, budget=None))
    return logits, (pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def prepare(args) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    write_images(args.dir / "images.npz", args.cifar, args.photos)
    images = read_images(args.dir / "images.npz")
    for key, (preset, quality) in CASES.items():
        model = tica.load(preset)
        data = api.compress(model, images[key][0].float() / 255, quality=quality, budget=None)
        atomic_write_bytes(args.dir / f"cpu_{key}.tica", data)
        print(f"{args.dir}/cpu_{key}.tica: {len(images[key][0])} images, {len(data)} bytes")
    return 0


def run(args) -> int:
    device = api.resolve_device(args.device)
    images = read_images(args.dir / "images.npz")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"from_cpu": {}, "from_gpu": {}}
    with torch.no_grad():
        for key, (preset, quality) in CASES.items():
            model = tica.load(preset, device=device)
            logits, pixels = decoded(model, (args.dir / f"cpu_{key}.tica").read_bytes())
            out["from_cpu"].update({f"{key}_logits": logits,
                                    f"{key}_pixels": pixels[:PIXELS_BACK[key]]})
            data = api.compress(model, images[key][0].float() / 255, quality=quality, budget=None)
            atomic_write_bytes(args.out / f"gpu_{key}.tica", data)
            logits, pixels = decoded(model, data)
            out["from_gpu"].update({f"{key}_logits": logits,
                                    f"{key}_pixels": pixels[:PIXELS_BACK[key]]})
    for name, arrays in out.items():
        np.savez_compressed(args.out / f"{name}.npz", device=str(torch.cuda.get_device_name(
            device) if device.type == "cuda" else "cpu"), **arrays)
    print(f"{args.out}: from_cpu.npz, from_gpu.npz, gpu_*.tica ({device})")
    return 0


def agreement(here: tuple[np.ndarray, np.ndarray], there: tuple[np.ndarray, np.ndarray],
              labels: np.ndarray) -> dict:
    (l1, p1), (l2, p2) = here, there          # `there` holds the first images' pixels only
    diff = np.abs(p1[:len(p2)].astype(np.int16) - p2.astype(np.int16))
    return {"images": len(l1), "top1_same": int((l1.argmax(1) == l2.argmax(1)).sum()),
            "accuracy_here": float((l1.argmax(1) == labels).mean()),
            "accuracy_there": float((l2.argmax(1) == labels).mean()),
            "max_logit_diff": float(np.abs(l1 - l2).max()),
            "pixels_compared_images": len(p2),
            "pixels_differing": float((diff > 0).mean()), "max_pixel_diff": int(diff.max())}


def compare(args) -> int:
    images = read_images(args.dir / "images.npz")
    result = {}
    with np.load(args.gpu / "from_cpu.npz") as f_cpu, np.load(args.gpu / "from_gpu.npz") as f_gpu:
        there = str(f_cpu["device"])
        for key, (preset, _) in CASES.items():
            model = tica.load(preset)
            labels = images[key][1]
            cpu_stream = (args.dir / f"cpu_{key}.tica").read_bytes()
            gpu_stream = (args.gpu / f"gpu_{key}.tica").read_bytes()
            result[key] = {
                "model": preset,
                "cpu_stream_bytes": len(cpu_stream), "gpu_stream_bytes": len(gpu_stream),
                "cpu_streams_decoded_there": agreement(
                    decoded(model, cpu_stream),
                    (f_cpu[f"{key}_logits"], f_cpu[f"{key}_pixels"]), labels),
                "gpu_streams_decoded_here": agreement(
                    decoded(model, gpu_stream),
                    (f_gpu[f"{key}_logits"], f_gpu[f"{key}_pixels"]), labels)}
    lines = [f"# Streams across machines: this CPU and {there}", "",
             "Each machine decodes the other's streams; image by image against the writer's "
             "own decoding. Reproduce: `bash scripts/gpu_check.sh` (see it).", "",
             "| images | streams written on | decoded on | top-1 same | accuracy there / here | "
             "max logit diff | pixels differing | max pixel diff |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    bad = []
    for key, r in result.items():
        for name, writer, reader in (("cpu_streams_decoded_there", "CPU", there),
                                     ("gpu_streams_decoded_here", there, "CPU")):
            a = r[name]
            lines.append(f"| {key} ({r['model']}) | {writer} | {reader} | "
                         f"{a['top1_same']}/{a['images']} | {a['accuracy_there']:.3f} / "
                         f"{a['accuracy_here']:.3f} | {a['max_logit_diff']:.4f} | "
                         f"{100 * a['pixels_differing']:.2f}% | {a['max_pixel_diff']}/255 |")
            if a["top1_same"] != a["images"]:
                bad.append(f"{key}: {a['images'] - a['top1_same']} top-1 differ ({name})")
    text = "\n".join(lines) + "\n"
    out = args.docs
    write_benchmark(out, "cross_device", text, result)
    for problem in bad:
        print(f"cross_device: {problem}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--dir", type=Path, default=ROOT / ".check")
    s.add_argument("--cifar", type=int, default=1000)
    s.add_argument("--photos", type=int, default=256)
    s = sub.add_parser("run")
    s.add_argument("--dir", type=Path, default=ROOT / ".check")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--device", default="auto", choices=api.DEVICES)
    s = sub.add_parser("compare")
    s.add_argument("--dir", type=Path, default=ROOT / ".check")
    s.add_argument("--gpu", type=Path, required=True)
    s.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    args = p.parse_args(argv)
    return {"prepare": prepare, "run": run, "compare": compare}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
