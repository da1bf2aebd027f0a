"""Build tica's C kernels in place (src/tica/entropy/_rans*.so, the entropy coder, and
src/tica/nn/_intops*.so, the integer h_s's epilogue) for the Python that runs this, with the
C compiler alone: for a machine that runs tica from a checkout (PYTHONPATH=src) without pip
installing it. `pip install` builds the same files itself.

    python3 scripts/build_kernel.py        prints the files it wrote
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tica"
SOURCES = [SRC / "entropy" / "_rans.c", SRC / "nn" / "_intops.c"]


def main() -> int:
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    for source in SOURCES:
        target = source.with_name(source.stem + sysconfig.get_config_var("EXT_SUFFIX"))
        command = [*compiler.split()[:1], "-O3", "-ffp-contract=off", "-shared", "-fPIC",
                   f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target)]
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"build_kernel: error: {' '.join(command)} failed: {exc}", file=sys.stderr)
            return 1
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
