"""The coder's design choices, side by side in one run on the real symbols of CIFAR-10 test
images (tica-cifar, q4): the table for docs/design.md, "The entropy coder".

    python benchmarks/coder_design.py [--images 256] [--repeats 3]

1. The ANS coder: constriction's AnsCoder called per table per image from Python (what tica
   did before; tests/constriction_reference.py, the same bytes) against tica's rANS kernel,
   a batch per call, on one thread and on all cores.
2. The integer h_s, which picks every symbol's table: float64 convolutions, the same
   integers as products of int8 digits (what a CPU with fast int8 products runs) and of
   float32 digits (what one without them runs), the layers as unfold/fold around float64
   GEMMs (what a GPU runs, exact by construction), and a float32 convolution of the same
   shapes (not exact: a bound).
3. One GEMM of h_s's size in float64, float32 and int8: what the digit products start
   from.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import tica
from tica.cli import data_root
from tica.data import load_split
from tica.entropy import parallel
from tica.entropy.payload import PayloadDecoder, encode_payloads, z_index
from tica.nn import integer
from tica_tools.timing import median_seconds as timed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import constriction_reference as reference  # noqa: E402


def coder_rows(model, x: torch.Tensor, repeats: int) -> list[tuple[str, float, float]]:
    z, indexes, _, symbols = model.analyze(x, 4.0)
    z, symbols = z.int().numpy(), symbols.int().numpy()
    zt, yt = model.entropy_bottleneck.tables, model.gaussian_conditional.tables
    zi = z_index(z.shape[1:])
    count = len(x) * (z[0].size + symbols[0].size)
    payloads = encode_payloads(z, symbols, indexes, zt, yt)

    def ref_encode():
        return [reference.encode([(z[b], zi, zt), (symbols[b], indexes[b], yt)])
                for b in range(len(x))]

    def ref_decode():
        return [reference.decode(p, [(zi, zt), (indexes[b], yt)]) for b, p in enumerate(payloads)]

    def kernel_decode():
        reader = PayloadDecoder(payloads)
        reader.decode_z(z.shape[1:], zt)
        reader.decode_y(indexes, yt)

    assert ref_encode() == payloads
    rows = [("constriction, per table per image (before)", count / timed(ref_encode, repeats),
             count / timed(ref_decode, repeats))]
    for threads in sorted({1, parallel.available_cores()}):
        parallel.set_threads(threads)
        rows.append((f"rANS kernel, batch per call, {threads} thread(s)",
                     count / timed(lambda: encode_payloads(z, symbols, indexes, zt, yt), repeats),
                     count / timed(kernel_decode, repeats)))
    parallel.set_threads(None)
    return rows


def h_s_rows(model, x: torch.Tensor, repeats: int) -> list[tuple[str, float]]:
    z = model.analyze(x, 4.0)[0].double()
    int_hs = model.integer_h_s
    exact = int_hs(z)

    def gemm(layer, inp):
        return integer._gemm_linear(layer, inp) + layer.bias.view(1, -1, 1, 1)

    rows = []
    for path, name in (("float64", "float64 convolutions"), ("int8", "int8 digit products"),
                       ("float32", "float32 digit products")):
        os.environ[integer.GEMM_ENV] = path
        assert torch.equal(int_hs(z), exact)
        rows.append((name, len(x) / timed(lambda: int_hs(z), repeats)))
    os.environ.pop(integer.GEMM_ENV)
    cls = integer.IntegerHyperSynthesis
    original = cls.__dict__["_linear"], cls.__dict__["_digits"]
    cls._linear, cls._digits = staticmethod(gemm), staticmethod(lambda layer, inp, bits=None: None)
    try:
        assert torch.equal(int_hs(z), exact)
        rows.append(("float64 unfold/fold + GEMM (a GPU's)", len(x) / timed(lambda: int_hs(z), repeats)))
    finally:
        cls._linear, cls._digits = original
    h_s = model.h_s.float()
    rows.append(("float32 convolutions, not exact (bound)",
                 len(x) / timed(lambda: h_s(z.float()), repeats)))
    return rows


def gemm_rows(repeats: int) -> list[tuple[str, float]]:
    """Operations per second of one GEMM the size of h_s's last layer on 256 CIFAR images
    (192 x 1296 by 1296 x 16384), in the number formats an exact integer h_s could use."""
    m, k, n = 192, 1296, 64 * 256
    a8 = torch.randint(-64, 64, (m, k), dtype=torch.int8)
    b8 = torch.randint(-64, 64, (k, n), dtype=torch.int8)
    operands = {"float64 (exact)": (a8.double(), b8.double(), torch.matmul),
                "float32 (exact in slices of 1,024 one-digit taps)": (a8.float(), b8.float(),
                                                                       torch.matmul),
                "int8 -> int32 (torch._int_mm)": (a8, b8, torch._int_mm)}
    rows = []
    for name, (a, b, mm) in operands.items():
        try:
            rows.append((name, 2 * m * k * n / timed(lambda: mm(a, b), repeats) / 1e9))
        except RuntimeError as exc:                   # _int_mm is missing on some builds
            print(f"{name}: {exc}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    x = load_split(Path(data_root()) / "cifar10-jpeg.tar.gz", "test",
                   limit=args.images).images.float() / 255
    model = tica.load("tica-cifar")
    with torch.no_grad():
        coder = coder_rows(model, x, args.repeats)
        h_s = h_s_rows(model, x, args.repeats)
    base = coder[0]
    print(f"| coder ({args.images} CIFAR-10 images, q4) | encode M symbols/s | decode M symbols/s "
          f"| vs before (encode / decode) |\n|---|---:|---:|---:|")
    for name, enc, dec in coder:
        print(f"| {name} | {enc / 1e6:.1f} | {dec / 1e6:.1f} | {enc / base[1]:.0f}x / "
              f"{dec / base[2]:.0f}x |")
    print(f"\n| integer h_s ({args.images} images, z 128x4x4) | images/s |\n|---|---:|")
    for name, rate in h_s:
        print(f"| {name} | {rate:,.0f} |")
    print("\n| GEMM 192x1296 by 1296x16384 | G operations/s |\n|---|---:|")
    for name, rate in gemm_rows(args.repeats):
        print(f"| {name} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
