"""The h_s's int16 and uint8 products (`tica.nn._intops.gemm_i16` and `gemm_u8`, through
`integer._digit_product`) against torch's float32 one on the same integers, on one thread:
7-bit activations by 7-bit weights in the shapes the shipped h_s multiplies (taps in whole
quads, as uint8 rows carry them), checked to agree, each timed as the median of
interleaved rounds; the uint8 product also written transposed (as the tables' end reads
it).

    python benchmarks/int16_gemm.py [--rounds 15]

Prints a Markdown table (docs/design.md, "int16 products for the h_s").
"""

from __future__ import annotations

import argparse

import torch

from tica.nn import integer
from tica_tools.timing import cpu_name, interleaved_median_ms

SHAPES = {"1024x96 by 96x192 (tica-cifar's last layer, a chunk)": (1024, 96, 192),
          "2048x172 by 172x96 (its first, 19 live channels)": (2048, 172, 96),
          "1024x72 by 72x864 (its transposed layer folded, 70 live)": (1024, 72, 864)}


def calls(shapes: dict[str, tuple[int, int, int]]) -> dict:
    """Per shape a float32, an int16 and a uint8 call (and a uint8 one written transposed)
    on the same random 7-bit operands (checked to give the same integers)."""
    g, out = torch.Generator().manual_seed(0), {}
    for name, (m, k, n) in shapes.items():
        a = torch.randint(0, 128, (m, k), generator=g, dtype=torch.int16)
        w = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int16)
        af, wf, packed = a.float(), w.float(), integer._pack_int16(w)
        out[name, "float32"] = lambda af=af, wf=wf: torch.mm(af, wf)
        out[name, "int16"] = lambda a=a, w=w, p=packed: integer._digit_product(a, w, None, p)
        a8, p8 = a.to(torch.uint8), integer._pack_u8(w)
        out[name, "uint8"] = lambda a=a8, w=w, p=p8: integer._digit_product(a, w, None, p)
        out[name, "uint8 by columns"] = lambda a=a8, w=w, p=p8: integer._digit_product(
            a, w, None, p, columns=True)
        expected = out[name, "float32"]().int()
        if not (torch.equal(expected, out[name, "int16"]())
                and torch.equal(expected, out[name, "uint8"]())
                and torch.equal(expected.t(), out[name, "uint8 by columns"]())):
            raise AssertionError(f"{name}: the products disagree")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    if integer._intops is None:
        raise SystemExit("the _intops kernel is not built: python setup.py build_ext --inplace")
    torch.set_num_threads(1)
    ms = interleaved_median_ms(calls(SHAPES), args.rounds)
    print(f"int16 and uint8 against float32 products, one thread of {cpu_name()}; ms, the "
          f"median of {args.rounds} interleaved rounds (G multiply-adds/s):\n")
    print("| product (one thread) | float32 `torch.mm` ms (G multiply-adds/s) | int16 ms | "
          "uint8 ms | uint8 by columns ms | int16 / float32 | uint8 / int16 |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name, (m, k, n) in SHAPES.items():
        f, i, u = ms[name, "float32"], ms[name, "int16"], ms[name, "uint8"]
        c = ms[name, "uint8 by columns"]
        rate = lambda t: m * k * n / t / 1e6                          # noqa: E731
        print(f"| {name} | {f:.3f} ({rate(f):.1f}) | {i:.3f} ({rate(i):.1f}) | {u:.3f} "
              f"({rate(u):.1f}) | {c:.3f} ({rate(c):.1f}) | {f / i:.2f}x | {i / u:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
