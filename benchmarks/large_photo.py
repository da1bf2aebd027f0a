"""A phone-sized photograph through the CLI: wall time and peak memory of encode, decode and
classify, each in a process of its own, as a user runs them.

    python benchmarks/large_photo.py [--width 4000 --height 3000] [--source PNG]

The photograph is one of the data's lossless photographs resized to the size asked (a
12-Mpixel phone photo by default) and saved as a quality-92 JPEG. Writes
docs/benchmarks/large_photo.{md,json}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from tica.cli import data_root
from tica.entropy.parallel import available_cores
from tica_tools.timing import cpu_name, write_benchmark

ROOT = Path(__file__).resolve().parents[1]
# runs `tica ARGS` in this process and prints its peak resident memory (KiB) last
PROBE = ("import resource, sys; from tica.cli import main; code = main(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
         "sys.exit(code)")


def run(args: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"tica {' '.join(args)} failed: {done.stderr.strip()}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_gib": peak_kib / 2 ** 20, "stdout": done.stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--source", type=Path, default=Path(data_root()) / "photos" / "004.png")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        photo, stream = Path(tmp) / "photo.jpg", Path(tmp) / "photo.tica"
        with Image.open(args.source) as img:
            img.convert("RGB").resize((args.width, args.height), Image.BICUBIC).save(photo, quality=92)
        rows = {"encode": run(["encode", str(photo), "-o", str(stream)]),
                "decode": run(["decode", str(stream), "-o", str(Path(tmp) / "out.png")]),
                "classify": run(["classify", str(stream)])}
        stream_bytes = stream.stat().st_size
    result = {"size": [args.width, args.height], "stream_bytes": stream_bytes,
              "machine": f"{cpu_name()}, {available_cores()} cores", "runs": rows}
    lines = [f"# A {args.width}x{args.height} photograph through the CLI", "",
             f"Each command in a process of its own on {result['machine']}; the stream is "
             f"{stream_bytes:,} bytes ({8 * stream_bytes / (args.width * args.height):.3f} bpp). "
             f"Reproduce: `python benchmarks/large_photo.py`.", "",
             "| command | seconds | peak memory (GiB) |", "|---|---:|---:|"]
    lines += [f"| tica {name} | {r['seconds']:.1f} | {r['peak_gib']:.2f} |" for name, r in rows.items()]
    write_benchmark(args.out, "large_photo", "\n".join(lines) + "\n", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
