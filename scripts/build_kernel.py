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
# each source with the flags pyproject.toml gives it: OpenMP where the compiler has it
# (else without: the coder's threads are then Python's, the layer ends run on one)
SOURCES = {SRC / "entropy" / "_rans.c": ["-fopenmp"], SRC / "nn" / "_intops.c": ["-fopenmp"]}


def main() -> int:
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    for source, extra in SOURCES.items():
        target = source.with_name(source.stem + sysconfig.get_config_var("EXT_SUFFIX"))
        partial = target.with_name(target.name + ".partial")    # a running process may
        command = [*compiler.split()[:1], "-O3", "-ffp-contract=off", "-shared", "-fPIC",
                   f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(partial)]
        for flags in ([extra, []] if extra else [[]]):
            try:
                subprocess.run(command[:1] + flags + command[1:], check=True)
                os.replace(partial, target)             # have the old one mapped
                break
            except (OSError, subprocess.CalledProcessError) as exc:
                if flags == []:
                    print(f"build_kernel: error: {' '.join(command)} failed: {exc}",
                          file=sys.stderr)
                    return 1
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
